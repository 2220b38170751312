// PPO checked by an independent implementation: the stage dumps its first rollout
// (`ppo.dump_rollouts`), and tests/oracle/ppo_oracle.py recomputes every tensor of it in eager
// PyTorch (bench/reference/llama.py) from the same weights and tokens, then one PPO update, and
// compares: log-probs, reference log-probs, values, scores, KL, rewards, advantages and returns,
// the losses and gradient norms, and the weights after the AdamW step, within 1e-4. A batch of
// 32 episodes with left-padded prompts of different lengths and responses with and without EOS.
// Runs where a Python with torch is installed (Debian's python3-torch); skips otherwise.
#include <gtest/gtest.h>

#include <fstream>

#include "common/io/hf_dir.h"
#include "common/model/reward_model.h"
#include "common/util/files.h"
#include "tests/test_util.h"
#include "tiller_build_paths.h"

using namespace tiller;

namespace {

constexpr int64_t kEos = 2;

// A random policy over the 512-piece vocabulary that ends about one response in two within 16
// tokens: every embedding shares a large component along hidden dimension 0, so the final
// normalised state always points that way, and the EOS row of the (untied) LM head reads it.
Transformer policy_that_sometimes_ends() {
  ModelConfig config = test::llama_config(512, 32, 64, 2, 4, 2, 128);
  config.tie_word_embeddings = false;
  Transformer model = test::sharp_random_model(config, 11);
  torch::NoGradGuard no_grad;
  model->model->embed_tokens->weight.select(1, 0).add_(8.0);
  model->lm_head->weight[kEos].zero_();
  model->lm_head->weight[kEos][0].fill_(0.9);
  return model;
}

Transformer random_reward_model() {
  ModelConfig config = test::llama_config(512, 32, 64, 2, 4, 2, 128);
  config.num_labels = 1;
  return test::sharp_random_model(config, 12);
}

void write_prompts(const std::string& path) {
  const char* const words[] = {"Once", "upon",  "a",    "time", "there", "was", "a",    "little",
                               "girl", "named", "Lily", "who",  "liked", "to",  "play", "outside"};
  std::ofstream out(path);
  for (int i = 0; i < 48; ++i) {
    std::string prompt;
    for (int w = 0; w <= i % 11; ++w) prompt += std::string(w ? " " : "") + words[(i + w) % 16];
    out << nlohmann::json{{"prompt", prompt}}.dump() << "\n";
  }
}

// One PPO iteration of one update (one epoch, one minibatch of the whole rollout in micro-batches
// of 8) with the rollout dumped; `extra` are the stage's other settings.
std::string write_recipe(const std::string& dir, const nlohmann::json& extra) {
  nlohmann::json stage = {
      {"name", "ppo"},
      {"type", "rlhf"},
      {"policy", dir + "/policy"},
      {"reward_model", dir + "/rm"},
      {"data",
       {{"prompts", dir + "/prompts.jsonl"}, {"template", "plain"}, {"max_prompt_len", 64}}},
      {"rollout", {{"batch_size", 32}, {"max_new_tokens", 16}}},
      {"kl", {{"beta", 0.1}}},
      {"ppo",
       {{"epochs", 1}, {"mini_batch_size", 32}, {"micro_batch_size", 8}, {"dump_rollouts", 1}}},
      // AdamW's first step is lr * g / (|g| + eps): with the usual eps 1e-8 it is sign(g), and a
      // weight whose gradient is ~1e-8 flips on rounding. With eps 1e-3 the step is a smooth
      // function of the gradient, so the weights after it check the gradient itself.
      {"train",
       {{"iterations", 1},
        {"actor_lr", 1e-3},
        {"critic_lr", 1e-3},
        {"eps", 1e-3},
        {"checkpoint_every", 1}}},
      {"eval", {{"prompts", 0}}},
      {"samples", {{"count", 0}}}};
  stage.merge_patch(extra);
  nlohmann::json recipe = {{"run", {{"name", "oracle"}, {"dir", dir + "/run"}, {"threads", 2}}},
                           {"stages", {stage}}};
  write_file_atomic(dir + "/recipe.json", recipe.dump(2));
  return dir + "/recipe.json";
}

}  // namespace

class PpoOracle : public ::testing::TestWithParam<std::string> {};

TEST_P(PpoOracle, EveryRolloutTensorAndOneUpdateAgreeWithAnEagerImplementation) {
  const std::string python = test::python_importing("torch");
  if (python.empty())
    GTEST_SKIP() << "skipped: no Python with torch (Debian's python3-torch) to run the oracle";
  TILLER_REQUIRE_SHARED(tokenizer, "models/stories260K/tok512.model");
  const std::string dir = test::temp_dir("ppo_oracle_" + GetParam());
  SaveOptions save;
  save.tokenizer_path = tokenizer;
  save_hf_model(*policy_that_sometimes_ends(), dir + "/policy", save);
  save_hf_model(*random_reward_model(), dir + "/rm", save);
  RewardMetadata metadata;
  metadata.offset = 0.37;  // the critic must subtract it to sit on the rewards' scale
  write_reward_metadata(dir + "/rm", metadata);
  write_prompts(dir + "/prompts.jsonl");
  // Unwhitened scores with a penalty for unfinished responses (the critic keeps the reward
  // model's head, less its offset), and whitened scores without one (the reward model's head
  // calibrated to the first rollout's mean and deviation, derived again by the oracle).
  const nlohmann::json extra =
      GetParam() == "penalty"
          ? nlohmann::json{{"rollout", {{"missing_eos_penalty", -2.5}}}}
          : nlohmann::json{{"reward", {{"whiten", true}}}, {"kl", {{"beta", 0.05}}}};
  std::string out;
  ASSERT_EQ(
      test::run_command(
          test::shell_command({test::tiller_binary(), "run", write_recipe(dir, extra)}) + " 2>&1",
          &out),
      0)
      << out;

  const std::string run = dir + "/run/ppo";
  const std::string command = test::shell_command(
      {python, std::string(TILLER_SOURCE_DIR) + "/tests/oracle/ppo_oracle.py", "--dump",
       run + "/rollouts/iteration-000001.safetensors", "--policy", dir + "/policy", "--reference",
       dir + "/policy", "--reward", dir + "/rm", "--critic", dir + "/rm", "--metrics",
       run + "/metrics.jsonl", "--updated-actor", run + "/final", "--updated-critic",
       run + "/checkpoints/step-1/critic.safetensors"});
  const int status = test::run_command(command + " 2>&1", &out);
  ASSERT_TRUE(status == 0 || status == 1) << out;
  const auto report = nlohmann::json::parse(out.substr(out.find('{')));
  std::printf(
      "oracle (%s): %d of 32 responses ended with EOS, %d prompts left-padded; largest "
      "scaled difference %.2e\n",
      GetParam().c_str(), report["ended_with_eos"].get<int>(),
      report["left_padded_rows"].get<int>(), report["worst"].get<double>());
  EXPECT_TRUE(report["ok"].get<bool>()) << out;
  EXPECT_TRUE(report["one_update_checked"].get<bool>()) << out;
  // The batch is the one the check is about: 32 episodes, prompts of different lengths (so some
  // are left-padded), some responses ended with EOS and some did not.
  EXPECT_EQ(report["episodes"], 32);
  EXPECT_GT(report["left_padded_rows"].get<int>(), 0) << out;
  EXPECT_GT(report["ended_with_eos"].get<int>(), 0) << out;
  EXPECT_LT(report["ended_with_eos"].get<int>(), 32) << out;
  for (const char* tensor :
       {"logprobs", "ref_logprobs", "values", "scorer_scores", "scores", "rewards", "advantages",
        "returns", "policy_loss", "value_loss", "value_offset", "value_scale"})
    EXPECT_TRUE(report["differences"].contains(tensor)) << tensor;
}

INSTANTIATE_TEST_SUITE_P(Settings, PpoOracle, ::testing::Values("penalty", "whitened"));
