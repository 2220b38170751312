// End to end from the pretrained stories260K model (../shared/data): SFT on TinyStories
// continuations, a reward model on pairs labelled by a rule (a continuation with a positive word
// is preferred; the rule is the ground truth), then PPO, all through `tiller run`. PPO must raise
// the ground-truth rate of sampled responses by 30 points with the KL under the recipe's bound.
// Then the PPO stage resumed from a mid-run checkpoint ends byte-identical to an uninterrupted run.
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
         {"train", {{"iterations", 12}, {"actor_lr", 1e-4}, {"critic_lr", 1e-3}}},
         {"ground_truth", {{"rule", "regex"}, {"pattern", kPositive}, {"ignore_case", true}}},
         {"eval", {{"prompts", 64}, {"every", 6}}}}}}};
  const std::string path = dir + "/recipe.json";
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
}
