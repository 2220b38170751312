// End to end from the pretrained stories260K model (../shared/data): SFT on TinyStories
// continuations, a reward model on pairs labelled by a rule (a continuation with a positive word
// is preferred; the rule is the ground truth), then PPO, all through `tiller run`. PPO must raise
// the ground-truth rate of sampled responses by 30 points with the KL under the recipe's bound.
// Then the PPO stage resumed from a mid-run checkpoint ends byte-identical to an uninterrupted run.
//
// And from the state a user starts in: the base model itself as the policy (no SFT: its responses
// never end within the rollout's tokens), a reward model on pairs that differ only in one feeling
// word in the middle of the response, PPO with the defaults for everything the setting leaves
// out, with and without reward whitening.
#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <sstream>

#include "common/data/batching.h"  // splitmix64
#include "common/util/files.h"
#include "tests/test_util.h"
#include "tiller_build_paths.h"

using namespace tiller;

namespace {

const char* const kPositive = "\\b(happy|happily|smiled|smile|fun|laughed|love|loved|glad|joy)\\b";

std::vector<std::string> sentences(const std::string& line) {
  static const std::regex boundary("([.!?])\\s+");
  std::vector<std::string> out;
  std::sregex_token_iterator it(line.begin(), line.end(), boundary, {-1, 1}), end;
  std::string current;
  for (int i = 0; it != end; ++it, ++i) {
    if (i % 2 == 0) {
      current = *it;
    } else {
      out.push_back(current + it->str());
      current.clear();
    }
  }
  if (!current.empty()) out.push_back(current);
  return out;
}

size_t words(const std::string& s) {
  std::istringstream in(s);
  std::string w;
  size_t n = 0;
  while (in >> w) ++n;
  return n;
}

// From each TinyStories paragraph: its first sentence is a prompt, the next two its completion.
// Preference pairs put a positive completion (chosen) against a non-positive one (rejected), both
// drawn from other paragraphs, so the rule is all the reward model can learn.
void write_data(const std::string& text_path, const std::string& dir) {
  std::ifstream in(text_path);
  std::string line;
  std::vector<std::pair<std::string, std::string>> items;
  while (std::getline(in, line)) {
    const auto s = sentences(line);
    if (s.size() < 3) continue;
    const std::string prompt = s[0], completion = s[1] + " " + s[2];
    if (words(prompt) > 25 || words(completion) > 40) continue;
    items.emplace_back(prompt, completion);
  }
  const std::regex positive(kPositive, std::regex::icase);
  std::vector<std::string> good, bad;
  for (const auto& [p, c] : items) (std::regex_search(c, positive) ? good : bad).push_back(c);
  ASSERT_GT(good.size(), 100u);
  std::ofstream sft(dir + "/sft.jsonl"), prefs(dir + "/prefs.jsonl"),
      prompts(dir + "/prompts.jsonl");
  uint64_t state = 7;
  for (size_t i = 0; i < items.size(); ++i) {
    const auto& [p, c] = items[i];
    sft << nlohmann::json{{"prompt", p}, {"completion", c}}.dump() << "\n";
    prompts << nlohmann::json{{"prompt", p}}.dump() << "\n";
    if (i < 2000)
      prefs << nlohmann::json{{"prompt", p},
                              {"chosen", good[splitmix64(state) % good.size()]},
                              {"rejected", bad[splitmix64(state) % bad.size()]}}
                   .dump()
            << "\n";
  }
}

std::string recipe(const std::string& dir, const std::string& model, const std::string& tok) {
  nlohmann::json r = {
      {"run", {{"name", "e2e"}, {"dir", dir + "/run"}, {"seed", 7}}},
      {"base", {{"llama2c", model}, {"tokenizer", tok}}},
      {"stages",
       {{{"name", "sft"},
         {"type", "sft"},
         {"init", "@base"},
         {"data",
          {{"train", dir + "/sft.jsonl"},
           {"format", "prompt_completion"},
           {"template", "plain"},
           {"val_fraction", 0.05}}},
         {"train",
          {{"steps", 150},
           {"batch_size", 16},
           {"lr", 2e-3},
           {"warmup_steps", 10},
           {"max_seq_len", 128},
           {"log_every", 50}}}},
        {{"name", "reward"},
         {"type", "reward"},
         {"init", "@sft"},
         {"data", {{"train", dir + "/prefs.jsonl"}, {"template", "plain"}, {"val_fraction", 0.1}}},
         {"train",
          {{"steps", 150},
           {"batch_size", 16},
           {"lr", 2e-3},
           {"warmup_steps", 10},
           {"max_seq_len", 128},
           {"log_every", 50}}}},
        {{"name", "ppo"},
         {"type", "rlhf"},
         {"policy", "@sft"},
         {"reward_model", "@reward"},
         {"data",
          {{"prompts", dir + "/prompts.jsonl"}, {"template", "plain"}, {"max_prompt_len", 64}}},
         {"rollout", {{"batch_size", 32}, {"max_new_tokens", 48}, {"missing_eos_penalty", -20.0}}},
         {"reward", {{"whiten", true}}},
         {"kl", {{"beta", 0.05}, {"max", 10.0}}},
         {"ppo", {{"epochs", 4}, {"mini_batch_size", 8}}},
         // Linear decay, as this setting was tuned with (the default before PPO's became
         // constant): its 12 iterations at a constant 1e-4 end at a KL of 11, past kl.max.
         {"train",
          {{"iterations", 12}, {"actor_lr", 1e-4}, {"critic_lr", 1e-3}, {"schedule", "linear"}}},
         {"ground_truth", {{"rule", "regex"}, {"pattern", kPositive}, {"ignore_case", true}}},
         {"eval", {{"prompts", 64}, {"every", 6}}}}}}};
  const std::string path = dir + "/recipe.json";
  write_file_atomic(path, r.dump(2));
  return path;
}

// Pairs that differ in one word mid-response: a story's next sentence, then "She was very happy."
// (chosen) or "... sad." (rejected), then the sentence after. The prompts are the stories' first
// sentences. Nothing else separates chosen from rejected, so the word is what the RM learns.
void write_feeling_data(const std::string& text_path, const std::string& dir) {
  static const char* const kFeelings[] = {"She was very %s.", "He felt %s.", "They were all %s.",
                                          "Tim was so %s.", "Lily felt %s."};
  std::ifstream in(text_path);
  std::ofstream prefs(dir + "/feeling_prefs.jsonl"), prompts(dir + "/feeling_prompts.jsonl");
  std::string line;
  int pairs = 0;
  while (std::getline(in, line)) {
    const auto s = sentences(line);
    if (s.size() < 3 || words(s[0]) > 25 || words(s[1]) + words(s[2]) > 30) continue;
    prompts << nlohmann::json{{"prompt", s[0]}}.dump() << "\n";
    const std::string feeling = kFeelings[pairs % 5];
    const auto with = [&](const char* word) {
      const size_t at = feeling.find("%s");
      return s[1] + " " + feeling.substr(0, at) + word + feeling.substr(at + 2) + " " + s[2];
    };
    prefs << nlohmann::json{{"prompt", s[0]}, {"chosen", with("happy")}, {"rejected", with("sad")}}
                 .dump()
          << "\n";
    ++pairs;
  }
  ASSERT_GT(pairs, 500);
}

std::string feeling_recipe(const std::string& dir, const std::string& model,
                           const std::string& tok) {
  const nlohmann::json ppo = {{"name", "ppo"},
                              {"type", "rlhf"},
                              {"policy", "@base"},
                              {"reward_model", "@reward"},
                              {"data",
                               {{"prompts", dir + "/feeling_prompts.jsonl"},
                                {"template", "plain"},
                                {"max_prompt_len", 64}}},
                              {"rollout", {{"batch_size", 32}, {"max_new_tokens", 24}}},
                              {"kl", {{"estimator", "k1"}, {"beta", 0.05}}},
                              {"ppo", {{"epochs", 4}, {"mini_batch_size", 16}}},
                              {"train", {{"iterations", 30}, {"actor_lr", 3e-4}}},
                              {"ground_truth", {{"rule", "regex"}, {"pattern", "\\bhappy\\b"}}},
                              {"eval", {{"prompts", 64}, {"every", 10}}},
                              {"samples", {{"count", 0}}}};
  nlohmann::json whitened = ppo;
  whitened["name"] = "ppo_whitened";
  whitened["reward"] = {{"whiten", true}};
  nlohmann::json r = {
      {"run", {{"name", "feeling"}, {"dir", dir + "/feeling"}, {"seed", 7}}},
      {"base", {{"llama2c", model}, {"tokenizer", tok}}},
      {"stages",
       {{{"name", "reward"},
         {"type", "reward"},
         {"init", "@base"},
         {"data",
          {{"train", dir + "/feeling_prefs.jsonl"}, {"template", "plain"}, {"val_fraction", 0.1}}},
         {"train",
          {{"steps", 120},
           {"batch_size", 16},
           {"lr", 2e-3},
           {"warmup_steps", 10},
           {"max_seq_len", 128},
           {"log_every", 40}}}},
        ppo,
        whitened}}};
  const std::string path = dir + "/feeling.json";
  write_file_atomic(path, r.dump(2));
  return path;
}

int run(const std::string& args, std::string* out) {
  return test::run_command(
      "cd '" + std::string(TILLER_SOURCE_DIR) + "' && '" + test::tiller_binary() + "' " + args,
      out);
}

}  // namespace

TEST(PpoEndToEnd, Stories260KRaisesTheGroundTruthRateWithBoundedKlAndResumesExactly) {
  TILLER_REQUIRE_SHARED(model, "models/stories260K/stories260K.bin");
  TILLER_REQUIRE_SHARED(tok, "models/stories260K/tok512.model");
  TILLER_REQUIRE_SHARED(text, "corpus/tinystories_head.txt");
  const std::string dir = test::temp_dir("ppo_e2e");
  write_data(text, dir);
  const std::string path = recipe(dir, model, tok);

  std::string out;
  ASSERT_EQ(run("run '" + path + "'", &out), 0) << out;
  const auto ppo = read_json_file(dir + "/run/ppo/complete.json");
  const double before = ppo.at("ground_truth_initial").get<double>();
  const double after = ppo.at("ground_truth_final").get<double>();
  const double kl = ppo.at("kl_final").get<double>();
  std::printf("ground truth %.3f -> %.3f, KL %.3f, RM score %.3f -> %.3f\n", before, after, kl,
              ppo.at("rm_score_initial").get<double>(), ppo.at("rm_score_final").get<double>());
  EXPECT_GE(after - before, 0.30) << out;
  EXPECT_LE(kl, 10.0);
  EXPECT_TRUE(ppo.at("kl_within_bound").get<bool>());
  // GAE's gamma and lambda are stated in the resolved recipe even though the recipe left gamma out.
  const auto resolved = read_json_file(dir + "/run/recipe.json");
  EXPECT_EQ(resolved["stages"][2]["ppo"]["gamma"].get<double>(), 1.0);
  EXPECT_EQ(resolved["stages"][2]["ppo"]["lambda"].get<double>(), 0.95);
  // Every logged iteration's first minibatch saw ratios of 1 (rollout and training agree).
  std::ifstream metrics(dir + "/run/ppo/metrics.jsonl");
  std::string line;
  int iterations = 0;
  while (std::getline(metrics, line)) {
    const auto m = nlohmann::json::parse(line);
    if (!m.contains("first_ratio_max_deviation")) continue;
    EXPECT_LT(m["first_ratio_max_deviation"].get<double>(), 1e-4) << line;
    ++iterations;
  }
  EXPECT_EQ(iterations, 12);

  // Exact resume: PPO from the trained SFT and reward model, 6 iterations straight versus 3, then
  // resumed to 6 (constant learning rate, so the two schedules agree; adaptive KL on, so beta is
  // part of the state).
  const std::string common = " ppo.policy='" + dir + "/run/sft/final' ppo.reward_model='" + dir +
                             "/run/reward/final' ppo.train.schedule=constant ppo.kl.target=1 "
                             "ppo.eval.prompts=8 ppo.rollout.batch_size=16 --only ppo";
  ASSERT_EQ(run("run '" + path + "' run.dir='" + dir + "/straight' ppo.train.iterations=6" + common,
                &out),
            0)
      << out;
  ASSERT_EQ(
      run("run '" + path + "' run.dir='" + dir + "/resumed' ppo.train.iterations=3" + common, &out),
      0)
      << out;
  remove_all(dir + "/resumed/ppo/complete.json");
  remove_all(dir + "/resumed/ppo/final");
  ASSERT_EQ(
      run("run '" + path + "' run.dir='" + dir + "/resumed' ppo.train.iterations=6" + common, &out),
      0)
      << out;
  EXPECT_NE(out.find("resumed from"), std::string::npos) << out;
  EXPECT_EQ(read_file(dir + "/straight/ppo/final/model.safetensors"),
            read_file(dir + "/resumed/ppo/final/model.safetensors"));

  // The same with LoRA on the actor (its reference: itself, adapters off) and on the critic (on
  // the reward model's own frozen weights): checkpoints of adapters and heads, resumed exactly.
  const std::string lora = common + " ppo.lora.rank=4 ppo.critic_lora.rank=4";
  ASSERT_EQ(
      run("run '" + path + "' run.dir='" + dir + "/lora_straight' ppo.train.iterations=4" + lora,
          &out),
      0)
      << out;
  EXPECT_NE(out.find("the LoRA critic computes with the reward model's frozen weights"),
            std::string::npos)
      << out;
  ASSERT_EQ(
      run("run '" + path + "' run.dir='" + dir + "/lora_resumed' ppo.train.iterations=2" + lora,
          &out),
      0)
      << out;
  remove_all(dir + "/lora_resumed/ppo/complete.json");
  remove_all(dir + "/lora_resumed/ppo/final");
  ASSERT_EQ(
      run("run '" + path + "' run.dir='" + dir + "/lora_resumed' ppo.train.iterations=4" + lora,
          &out),
      0)
      << out;
  EXPECT_NE(out.find("resumed from"), std::string::npos) << out;
  for (const char* file : {"model.safetensors", "adapter/adapter_model.safetensors"})
    EXPECT_EQ(read_file(dir + "/lora_straight/ppo/final/" + file),
              read_file(dir + "/lora_resumed/ppo/final/" + file))
        << file;
  for (const auto& stage : read_json_file(dir + "/lora_straight/recipe.json")["stages"]) {
    if (stage["name"] != "ppo") continue;
    EXPECT_EQ(stage["critic_lora"]["modules_to_save"], nlohmann::json::array({"score"}));
  }
}

// The setting of issue 18: before it, `missing_eos_penalty` replaced every score (no response of a
// base model ends in 24 tokens) and the critic started on another scale than the returns; PPO did
// not climb. Now the held-out rate of the rewarded word rises by 50 points in 30 iterations, the
// reward model's score rises with and without whitened rewards, and the KL is reported.
//
// Whitened rewards raise the score but the word only at some seeds: while no sample of a batch has
// it, whitening spreads the RM's other preferences to unit variance, and the policy follows them.
// Measured, 'happy' rate after 30 iterations at run seeds 7, 8 and 9: unwhitened 0.98-1.00,
// 0.64-0.73 and 0.94-1.00; whitened 0.02-0.97 at seed 7 (the same seed, moved by rounding in the
// reward model: LibTorch 1.13 or 2.14, its pairs' prompts shared or not), 0.27-0.38 and 0.00-0.39.
// The whitened RM score rose in every run, by 0.13 to 2.5.
TEST(PpoEndToEnd,
     FromTheBaseModelARewardedWordMidResponseIsLearnedAndWhitenedRewardsRaiseTheScore) {
  TILLER_REQUIRE_SHARED(model, "models/stories260K/stories260K.bin");
  TILLER_REQUIRE_SHARED(tok, "models/stories260K/tok512.model");
  TILLER_REQUIRE_SHARED(text, "corpus/tinystories_head.txt");
  const std::string dir = test::temp_dir("ppo_feeling");
  write_feeling_data(text, dir);
  std::string out;
  ASSERT_EQ(run("run '" + feeling_recipe(dir, model, tok) + "'", &out), 0) << out;
  const auto reward = read_json_file(dir + "/feeling/reward/complete.json");
  EXPECT_GE(reward.at("val_accuracy").get<double>(), 0.95) << reward.dump();
  for (const char* stage : {"ppo", "ppo_whitened"}) {
    const auto ppo = read_json_file(dir + "/feeling/" + stage + "/complete.json");
    const double before = ppo.at("ground_truth_initial").get<double>();
    const double after = ppo.at("ground_truth_final").get<double>();
    std::printf("%s: 'happy' rate %.3f -> %.3f, RM score %.3f -> %.3f, KL %.3f, EOS rate %.2f\n",
                stage, before, after, ppo.at("rm_score_initial").get<double>(),
                ppo.at("rm_score_final").get<double>(), ppo.at("kl_final").get<double>(),
                ppo.at("eos_rate_final").get<double>());
    if (std::string(stage) == "ppo") {
      EXPECT_GE(after - before, 0.50) << stage << "\n" << out;
    }
    EXPECT_GT(ppo.at("rm_score_final").get<double>(), ppo.at("rm_score_initial").get<double>())
        << stage;
    EXPECT_GT(ppo.at("kl_final").get<double>(), 0.0);
    // No rollout was left without a signal.
    EXPECT_FALSE(ppo.contains("no_signal_iterations")) << ppo.dump();
  }
  EXPECT_EQ(out.find("WARNING"), std::string::npos) << out;
}
