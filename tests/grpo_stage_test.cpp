// The grpo stage through `tiller run`, from the state a user starts in: the pretrained stories260K
// base (../shared/data) as the policy, whose responses never end within the rollout's tokens.
// Config mistakes with their paths and the algorithms' defaults; a short run's metrics and
// summary; a run killed mid-way resumes to the same final weights as an uninterrupted one;
// dynamic sampling drops and counts groups whose rewards are all equal; a crashing or slow
// command verifier stops the stage with one clear line or gives its timeout score.
#include <gtest/gtest.h>

#include <csignal>
#include <fstream>

#include "common/recipe/recipe.h"
#include "common/util/files.h"
#include "rlhf/grpo_stage.h"
#include "tests/test_util.h"

using namespace tiller;
using json = nlohmann::json;

namespace {

void write_prompts(const std::string& path, int count) {
  std::ofstream out(path);
  const char* names[] = {"Lily", "Tom", "Sam", "Mia", "Ben", "Sue", "Max", "Ann"};
  for (int i = 0; i < count; ++i)
    out << json{{"prompt", std::string("Once upon a time, ") + names[i % 8] + " saw a"},
                {"answer", std::to_string(i)}}
               .dump()
        << "\n";
}

// A recipe with one grpo stage on the stories260K base; `stage` is merged over the defaults.
std::string write_recipe(const std::string& dir, const std::string& bin, const std::string& tok,
                         const json& stage) {
  write_prompts(dir + "/prompts.jsonl", 40);
  json body = {
      {"name", "grpo"},
      {"type", "grpo"},
      {"policy", "@base"},
      {"data", {{"prompts", dir + "/prompts.jsonl"}, {"template", "plain"}}},
      {"rollout", {{"prompts_per_iteration", 4}, {"group_size", 4}, {"max_new_tokens", 12}}},
      {"rewards", json::array({{{"type", "regex"}, {"pattern", "\\b(the|and)\\b"}}})},
      {"train", {{"iterations", 4}, {"lr", 1e-3}, {"checkpoint_every", 2}}},
      {"eval", {{"prompts", 8}, {"samples", 2}}},
      {"samples", {{"every", 2}, {"count", 1}}}};
  body.merge_patch(stage);
  const json recipe = {{"run", {{"name", "g"}, {"dir", dir + "/run"}, {"seed", 7}}},
                       {"base", {{"llama2c", bin}, {"tokenizer", tok}}},
                       {"stages", json::array({body})}};
  const std::string path = dir + "/r.json";
  std::ofstream(path) << recipe.dump(2);
  return path;
}

// A grpo stage body with a prompt file and a math_answer reward, `stage_patch` merged over it,
// parsed: the config and every error, one per line.
std::pair<GrpoStageConfig, std::string> parse_body(const json& stage_patch) {
  const std::string dir = test::temp_dir("grpo_config");
  write_prompts(dir + "/p.jsonl", 4);
  json body = {{"name", "g"},
               {"type", "grpo"},
               {"data", {{"prompts", dir + "/p.jsonl"}}},
               {"rewards", json::array({{{"type", "math_answer"}}})}};
  body.merge_patch(stage_patch);
  ConfigErrors errors;
  StageEntry entry{"g", "grpo", "stages[0]", &body};
  auto config = parse_grpo_stage(entry, errors);
  std::string all;
  for (const auto& e : errors.list()) all += e + "\n";
  return {config, all};
}

std::string parse_errors(const json& stage_patch) {
  return parse_body(stage_patch).second;
}

GrpoStageConfig parsed(const json& stage_patch) {
  auto [config, errors] = parse_body(stage_patch);
  EXPECT_EQ(errors, "");
  return config;
}

}  // namespace

TEST(GrpoStage, EveryMistakeIsReportedWithItsPath) {
  const std::string all =
      parse_errors({{"algorithm", "ppo"},
                    {"rollout", {{"group_size", 1}, {"top_k", 5}, {"temprature", 1.0}}},
                    {"grpo", {{"mini_batch_size", 7}, {"loss_aggregation", "mean"}}},
                    {"kl", {{"beta", -1}}}});
  for (const char* expected :
       {"stages[0].algorithm: 'ppo' is not one of", "stages[0].rollout.temprature: unknown key",
        "stages[0].rollout.top_k: must be 0",
        "stages[0].grpo.mini_batch_size: must be at least 1 and divide",
        "stages[0].grpo.loss_aggregation: 'mean' is not one of", "stages[0].kl.beta: must be >= 0"})
    EXPECT_NE(all.find(expected), std::string::npos) << expected << "\n" << all;
  EXPECT_NE(parse_errors({{"rollout", {{"group_size", 1}}}})
                .find("stages[0].rollout.group_size: must be at least 2 for algorithm grpo"),
            std::string::npos);
  EXPECT_NE(parse_errors({{"rewards", json::array()}}).find("stages[0].rewards"),
            std::string::npos);
}

TEST(GrpoStage, EachAlgorithmHasItsPapersDefaults) {
  const auto dapo = parsed({{"algorithm", "dapo"}, {"rollout", {{"max_new_tokens", 40}}}});
  EXPECT_EQ(dapo.grpo.clip_high, 0.28);
  EXPECT_EQ(dapo.grpo.loss_aggregation, "token_mean");
  EXPECT_TRUE(dapo.dynamic_sampling);
  EXPECT_EQ(dapo.overlong_buffer, 10);
  const auto dr = parsed({{"algorithm", "dr_grpo"}});
  EXPECT_EQ(dr.grpo.loss_aggregation, "sequence_sum_constant");
  EXPECT_FALSE(dr.dynamic_sampling);
  const auto grpo = parsed(json::object());
  EXPECT_EQ(grpo.grpo.clip_high, grpo.grpo.clip_low);
  EXPECT_EQ(grpo.grpo.loss_aggregation, "sequence_mean");
  EXPECT_EQ(grpo.eval_samples, grpo.grpo.group_size);
  EXPECT_EQ(grpo.reference, grpo.policy);
  // What the resolved recipe states parses back to the same values.
  json body = grpo_stated_defaults(dapo);
  body["name"] = "g";
  body["type"] = "grpo";
  ConfigErrors errors;
  StageEntry entry{"g", "grpo", "stages[0]", &body};
  EXPECT_EQ(grpo_stated_defaults(parse_grpo_stage(entry, errors)), grpo_stated_defaults(dapo));
  EXPECT_TRUE(errors.empty());
}

TEST(GrpoStage, RunsFromTheBaseAndResumesToTheSameWeights) {
  TILLER_REQUIRE_SHARED(bin, "models/stories260K/stories260K.bin");
  TILLER_REQUIRE_SHARED(tok, "models/stories260K/tok512.model");
  const std::string straight = test::temp_dir("grpo_straight"),
                    killed = test::temp_dir("grpo_killed");
  std::string out;
  const std::string recipe = write_recipe(straight, bin, tok, json::object());
  ASSERT_EQ(test::run_command(test::tiller_binary() + " run " + recipe, &out), 0) << out;
  const auto metrics = test::metrics_by_step(straight + "/run/grpo/metrics.jsonl");
  ASSERT_EQ(metrics.count(4), 1u) << out;
  for (const char* key : {"reward_regex", "reward_total", "all_equal_group_fraction", "kl_k3",
                          "clipfrac_low", "clipfrac_high", "entropy", "response_length"})
    EXPECT_TRUE(metrics.at(4).contains(key)) << key << " " << metrics.at(4).dump();
  // The base never ends within 12 tokens; the evaluation's KL starts at 0 and moves.
  const json summary = json::parse(test::read_bytes(straight + "/run/grpo/complete.json"));
  EXPECT_NE(out.find("grpo: final KL to the reference"), std::string::npos) << out;
  EXPECT_EQ(summary.value("kl_initial", -1.0), 0.0) << summary.dump();
  EXPECT_GT(summary.value("kl_final", 0.0), 0.0) << summary.dump();
  EXPECT_TRUE(path_exists(straight + "/run/grpo/final/model.safetensors"));

  const std::string again = write_recipe(killed, bin, tok, json::object());
  const int pid = test::spawn_logged({test::tiller_binary(), "run", again}, killed + "/log",
                                     {"TILLER_CRASH_AFTER_STEP=grpo:3"});
  ASSERT_EQ(test::wait_exit(pid, 300), 128 + SIGKILL) << test::read_bytes(killed + "/log");
  ASSERT_EQ(test::run_command(test::tiller_binary() + " run " + again, &out), 0) << out;
  EXPECT_NE(out.find("/grpo/checkpoints/step-2"), std::string::npos) << out;
  EXPECT_EQ(test::read_bytes(straight + "/run/grpo/final/model.safetensors"),
            test::read_bytes(killed + "/run/grpo/final/model.safetensors"));
}

TEST(GrpoStage, DynamicSamplingDropsAllEqualGroupsAndCountsThem) {
  TILLER_REQUIRE_SHARED(bin, "models/stories260K/stories260K.bin");
  TILLER_REQUIRE_SHARED(tok, "models/stories260K/tok512.model");
  const std::string dir = test::temp_dir("grpo_dynamic");
  std::string out;
  // A rule no response meets: every group is all-equal, so every round drops all of them and
  // the stage says it learned from no signal.
  const std::string never =
      write_recipe(dir, bin, tok,
                   {{"algorithm", "dapo"},
                    {"rewards", json::array({{{"type", "contains"}, {"text", "zzzqqq"}}})},
                    {"grpo", {{"max_sampling_rounds", 3}}},
                    {"train", {{"iterations", 2}}}});
  ASSERT_EQ(test::run_command(test::tiller_binary() + " run " + never, &out), 0) << out;
  auto metrics = test::metrics_by_step(dir + "/run/grpo/metrics.jsonl");
  EXPECT_EQ(metrics.at(1)["sampling_rounds"], 3);
  EXPECT_EQ(metrics.at(1)["dropped_groups"], 12);
  EXPECT_EQ(metrics.at(1)["groups_trained"], 0);
  EXPECT_EQ(metrics.at(1)["all_equal_group_fraction"], 1.0);
  EXPECT_NE(out.find("WARNING: at iteration 1 every group's responses scored the same"),
            std::string::npos)
      << out;

  // A rule some responses meet: the groups kept fill the batch; dropped ones are counted.
  const std::string some_dir = test::temp_dir("grpo_dynamic_some");
  const std::string some =
      write_recipe(some_dir, bin, tok, {{"algorithm", "dapo"}, {"train", {{"iterations", 3}}}});
  ASSERT_EQ(test::run_command(test::tiller_binary() + " run " + some, &out), 0) << out;
  metrics = test::metrics_by_step(some_dir + "/run/grpo/metrics.jsonl");
  int64_t dropped = 0;
  for (int64_t step = 1; step <= 3; ++step) {
    const json& m = metrics.at(step);
    dropped += m["dropped_groups"].get<int64_t>();
    // Kept groups all have signal: none of them is all-equal.
    EXPECT_LE(m["groups_trained"].get<int64_t>(), 4);
    if (m["sampling_rounds"].get<int64_t>() < 4) {
      EXPECT_EQ(m["groups_trained"], 4) << m.dump();
    }
  }
  EXPECT_GT(dropped, 0) << "the rule should leave some groups all-equal";
}

TEST(GrpoStage, ACrashingVerifierStopsTheStageWithOneLineAndASlowOneGetsItsTimeoutScore) {
  TILLER_REQUIRE_SHARED(bin, "models/stories260K/stories260K.bin");
  TILLER_REQUIRE_SHARED(tok, "models/stories260K/tok512.model");
  const std::string dir = test::temp_dir("grpo_command");
  std::ofstream(dir + "/crash.sh")
      << "#!/bin/sh\ncat > /dev/null\necho 'verifier broke' >&2\nexit 3\n";
  std::ofstream(dir + "/slow.sh") << "#!/bin/sh\nsleep 30\n";
  std::string out;
  const std::string crashing = write_recipe(
      dir, bin, tok,
      {{"rewards",
        json::array({{{"type", "command"}, {"command", {"/bin/sh", dir + "/crash.sh"}}}})}});
  EXPECT_EQ(test::run_command(test::tiller_binary() + " run " + crashing, &out), 1) << out;
  EXPECT_NE(out.find("exit"), std::string::npos) << out;
  EXPECT_NE(out.find("verifier broke"), std::string::npos) << out;
  EXPECT_FALSE(path_exists(dir + "/run/grpo/final"));

  const std::string slow_dir = test::temp_dir("grpo_command_slow");
  const std::string slow =
      write_recipe(slow_dir, bin, tok,
                   {{"rewards", json::array({{{"type", "command"},
                                              {"command", {"/bin/sh", dir + "/slow.sh"}},
                                              {"timeout_seconds", 0.5},
                                              {"on_timeout", -1.0}}})},
                    {"train", {{"iterations", 1}}},
                    {"eval", {{"prompts", 0}}}});
  ASSERT_EQ(test::run_command(test::tiller_binary() + " run " + slow, &out), 0) << out;
  const auto metrics = test::metrics_by_step(slow_dir + "/run/grpo/metrics.jsonl");
  EXPECT_EQ(metrics.at(1)["reward_command"], -1.0) << metrics.at(1).dump();
}

// Prompts alone ({"prompt"}) serve rewards that need no answer; math_answer refuses them before
// any training, naming the reward and the file.
TEST(GrpoStage, MathAnswerOnPromptsWithoutAnswersIsRefusedBeforeTraining) {
  TILLER_REQUIRE_SHARED(bin, "models/stories260K/stories260K.bin");
  TILLER_REQUIRE_SHARED(tok, "models/stories260K/tok512.model");
  const std::string dir = test::temp_dir("grpo_no_answers");
  const std::string recipe = write_recipe(dir, bin, tok,
                                          {{"data", {{"prompts", dir + "/bare.jsonl"}}},
                                           {"rewards", json::array({{{"type", "math_answer"}}})}});
  {
    std::ofstream bare(dir + "/bare.jsonl");
    for (int i = 0; i < 20; ++i) bare << json{{"prompt", "Once upon a time"}}.dump() << "\n";
  }
  std::string out;
  EXPECT_EQ(test::run_command(test::tiller_binary() + " run " + recipe, &out), 1) << out;
  EXPECT_NE(out.find("reward math_answer (math_answer) compares with reference answers, and 20 of "
                     "the prompts in " +
                     dir + "/bare.jsonl have none"),
            std::string::npos)
      << out;
  EXPECT_FALSE(path_exists(dir + "/run/grpo/metrics.jsonl"));
}
