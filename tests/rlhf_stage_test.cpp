// The rlhf stage's config (every mistake reported with its path; defaults stated for the
// resolved recipe), prompt records in each layout, ground-truth rules, and stage fingerprints.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/data/prompt_data.h"
#include "common/recipe/stage_io.h"
#include "common/util/error.h"
#include "rlhf/ground_truth.h"
#include "rlhf/rlhf_stage.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

std::string write_recipe(const std::string& dir, const std::string& stage_body) {
  std::ofstream(dir + "/prompts.jsonl") << R"({"prompt": "hi"})"
                                        << "\n";
  const std::string path = dir + "/r.json";
  std::ofstream(path) << R"({"run": {"name": "t", "dir": ")" << dir << R"(/run"},
    "stages": [{"name": "ppo", "type": "rlhf", "policy": ")"
                      << dir << R"(", "reward_model": ")" << dir << R"(",
                "data": {"prompts": ")"
                      << dir << R"(/prompts.jsonl"}, )" << stage_body << "}]}";
  return path;
}

}  // namespace

TEST(RlhfStage, EveryMistakeIsReportedWithItsPath) {
  const std::string dir = test::temp_dir("rlhf_config");
  const std::string path = write_recipe(dir, R"(
      "rollout": {"batch_size": 12, "temprature": 0.7},
      "ppo": {"mini_batch_size": 8, "lambda": 1.5},
      "ground_truth": {"rule": "regex", "pattern": "(unclosed"})");
  ConfigErrors errors;
  auto recipe = load_recipe(path, {}, errors);
  parse_rlhf_stage(recipe.stages[0], errors);
  std::string all;
  for (const auto& e : errors.list()) all += e + "\n";
  EXPECT_NE(all.find("stages[0].rollout.temprature: unknown key"), std::string::npos) << all;
  EXPECT_NE(all.find("stages[0].ppo.mini_batch_size: must be at least 1 and divide "
                     "rollout.batch_size 12"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("stages[0].ppo.lambda: must be in [0, 1]"), std::string::npos) << all;
  EXPECT_NE(all.find("stages[0].ground_truth.pattern: invalid regular expression"),
            std::string::npos)
      << all;
  EXPECT_EQ(errors.list().size(), 4u) << all;
}

TEST(RlhfStage, DefaultsAreStatedForTheResolvedRecipe) {
  const std::string dir = test::temp_dir("rlhf_defaults");
  ConfigErrors errors;
  auto recipe = load_recipe(write_recipe(dir, R"("ppo": {"lambda": 0.9})"), {}, errors);
  const auto config = parse_rlhf_stage(recipe.stages[0], errors);
  ASSERT_TRUE(errors.empty()) << errors.list()[0];
  const auto stated = rlhf_stated_defaults(config);
  EXPECT_EQ(stated["ppo"]["gamma"].get<double>(), 1.0);
  EXPECT_EQ(stated["ppo"]["lambda"].get<double>(), 0.9);
  EXPECT_EQ(stated["kl"]["estimator"].get<std::string>(), "k1");
  EXPECT_EQ(config.reference, config.policy);     // the reference defaults to the policy
  EXPECT_EQ(config.critic, config.reward_model);  // and the critic to the reward model
}

namespace {

// Every error of parsing the recipe's rlhf stage, one per line.
std::string parse_errors(const std::string& path, const std::vector<std::string>& overrides,
                         RlhfStageConfig* config = nullptr) {
  ConfigErrors errors;
  auto recipe = load_recipe(path, overrides, errors);
  auto parsed = parse_rlhf_stage(recipe.stages[0], errors);
  if (config) *config = parsed;
  std::string all;
  for (const auto& e : errors.list()) all += e + "\n";
  return all;
}

}  // namespace

// `null` means "no penalty" for the missing-EOS penalty (its documented meaning, and the default);
// everywhere else it is refused, never silently replaced by the default.
TEST(RlhfStage, NullIsTheMissingEosPenaltysNoPenaltyAndRefusedElsewhere) {
  const std::string dir = test::temp_dir("rlhf_null");
  RlhfStageConfig config;
  EXPECT_EQ(
      parse_errors(write_recipe(dir, R"("rollout": {"missing_eos_penalty": null})"), {}, &config),
      "");
  EXPECT_FALSE(config.ppo.missing_eos_penalty.has_value());
  EXPECT_TRUE(rlhf_stated_defaults(config)["rollout"]["missing_eos_penalty"].is_null());
  // The default is no penalty too; a number is honoured and stated.
  EXPECT_EQ(parse_errors(write_recipe(dir, R"("rollout": {})"), {}, &config), "");
  EXPECT_FALSE(config.ppo.missing_eos_penalty.has_value());
  EXPECT_EQ(parse_errors(write_recipe(dir, R"("rollout": {})"),
                         {"ppo.rollout.missing_eos_penalty=-3"}, &config),
            "");
  ASSERT_TRUE(config.ppo.missing_eos_penalty.has_value());
  EXPECT_EQ(*config.ppo.missing_eos_penalty, -3.0);
  EXPECT_EQ(rlhf_stated_defaults(config)["rollout"]["missing_eos_penalty"].get<double>(), -3.0);
  // From the command line, null is null.
  EXPECT_EQ(parse_errors(write_recipe(dir, R"("rollout": {"missing_eos_penalty": -1})"),
                         {"ppo.rollout.missing_eos_penalty=null"}, &config),
            "");
  EXPECT_FALSE(config.ppo.missing_eos_penalty.has_value());

  const auto errors =
      parse_errors(write_recipe(dir, R"("train": {"actor_lr": null, "grad_clip": null},
                           "kl": {"beta": null}, "rollout": {"missing_eos_penalty": "none"})"),
                   {});
  for (const char* key : {"train.actor_lr", "train.grad_clip", "kl.beta"})
    EXPECT_NE(errors.find(std::string("stages[0].") + key +
                          ": null is not a value here; remove the key to use its default"),
              std::string::npos)
        << key << "\n"
        << errors;
  EXPECT_NE(errors.find("stages[0].rollout.missing_eos_penalty: expected a number or null"),
            std::string::npos)
      << errors;
}

// Settings that would make PPO learn from no signal or off-policy are refused before the run.
TEST(RlhfStage, SettingsThatBreakPpoAreRefusedWithTheirReason) {
  const std::string dir = test::temp_dir("rlhf_refused");
  const auto errors =
      parse_errors(write_recipe(dir, R"("rollout": {"batch_size": 1, "top_k": 40, "top_p": 0.9},
                           "ppo": {"mini_batch_size": 1}, "reward": {"whiten": true},
                           "kl": {"estimator": "k3"})"),
                   {});
  EXPECT_NE(errors.find("stages[0].rollout.top_k: must be 0 in PPO"), std::string::npos) << errors;
  EXPECT_NE(errors.find("stages[0].rollout.top_p: must be 1 in PPO"), std::string::npos) << errors;
  EXPECT_NE(errors.find("stages[0].reward.whiten: needs rollout.batch_size >= 2"),
            std::string::npos)
      << errors;
  EXPECT_NE(errors.find("stages[0].kl.estimator: k3 is refused in PPO's reward"), std::string::npos)
      << errors;
}

// Only the reward model's head is mapped onto whitened scores: a zero head starts at their mean,
// and unwhitened scores are the head's own scale.
TEST(RlhfStage, OnlyARewardModelHeadUnderWhitenedScoresIsCalibrated) {
  const std::string dir = test::temp_dir("rlhf_calibrate");
  RlhfStageConfig config;
  ASSERT_EQ(parse_errors(write_recipe(dir, R"("reward": {"whiten": true},
                                              "ppo": {"critic_head": "zeros"})"),
                         {}, &config),
            "");
  EXPECT_FALSE(config.ppo.calibrate_value_scale);
  ASSERT_EQ(parse_errors(write_recipe(dir, R"("reward": {"whiten": false})"), {}, &config), "");
  EXPECT_EQ(config.critic_head, "reward_model");
  EXPECT_FALSE(config.ppo.calibrate_value_scale);
}

// The resolved recipe states every value the stage ran with, and parses back to the same values.
TEST(RlhfStage, TheStatedValuesParseBackToThemselves) {
  const std::string dir = test::temp_dir("rlhf_stated");
  RlhfStageConfig config;
  ASSERT_EQ(parse_errors(write_recipe(dir, R"("reward": {"whiten": true}, "ppo": {"epochs": 2},
                                              "train": {"schedule": "constant"},
                                              "critic_lora": {"rank": 4})"),
                         {}, &config),
            "");
  // auto: the reward model's head, calibrated at the first rollout to the whitened scores.
  EXPECT_EQ(config.critic_head, "reward_model");
  EXPECT_TRUE(config.ppo.calibrate_value_scale);
  const auto stated = rlhf_stated_defaults(config);
  std::vector<std::string> overrides;
  for (const auto& section : stated.items()) {
    if (!section.value().is_object()) {  // policy, reference, reward_model, critic
      overrides.push_back("ppo." + section.key() + "=" + section.value().dump());
      continue;
    }
    for (const auto& value : section.value().items())
      overrides.push_back("ppo." + section.key() + "." + value.key() + "=" + value.value().dump());
  }
  RlhfStageConfig again;
  ASSERT_EQ(parse_errors(write_recipe(dir, R"("samples": {})"), overrides, &again), "");
  EXPECT_EQ(rlhf_stated_defaults(again), stated);
  EXPECT_EQ(stated["train"]["schedule"], "constant");
  EXPECT_EQ(stated["ppo"]["epochs"], 2);
  EXPECT_EQ(stated["reward"]["whiten"], true);
  // The critic's value head trains whole beside its adapters, stated as such; the actor has none.
  EXPECT_EQ(stated["critic_lora"]["rank"], 4);
  EXPECT_EQ(stated["critic_lora"]["modules_to_save"], nlohmann::json::array({"score"}));
  EXPECT_FALSE(stated.contains("lora"));
}

TEST(RlhfStage, PromptRecordsInEachLayout) {
  auto prompt = prompt_from_record(nlohmann::json::parse(R"({"prompt": "Tell a story."})"), "auto",
                                   "chatml", "f:1");
  ASSERT_EQ(prompt.size(), 1u);
  EXPECT_EQ(prompt[0].content, "Tell a story.");
  auto messages =
      prompt_from_record(nlohmann::json::parse(R"({"messages": [{"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"}]})"),
                         "auto", "chatml", "f:2");
  ASSERT_EQ(messages.size(), 3u);  // the trailing assistant turn is dropped
  EXPECT_EQ(messages.back().content, "c");
  auto hh = prompt_from_record(
      nlohmann::json::parse(
          R"({"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant: Fine."})"),
      "auto", "chatml", "f:3");
  ASSERT_EQ(hh.size(), 3u);
  EXPECT_EQ(hh.back().role, "user");
  EXPECT_EQ(hh.back().content, "How are you?");
  auto alpaca = prompt_from_record(
      nlohmann::json::parse(R"({"instruction": "Add", "input": "1 and 2", "output": "3"})"), "auto",
      "alpaca", "f:4");
  EXPECT_EQ(alpaca[0].content, "Add\n\n### Input:\n1 and 2");
  EXPECT_NE(test::error_of([] {
              prompt_from_record(nlohmann::json::parse(R"({"text": "x"})"), "auto", "chatml",
                                 "file.jsonl:9");
            }).find("file.jsonl:9"),
            std::string::npos);
  EXPECT_NE(test::error_of([] {
              prompt_from_record(
                  nlohmann::json::parse(R"({"messages": [{"role": "assistant", "content": "x"}]})"),
                  "messages", "chatml", "file.jsonl:3");
            }).find("must end with a user turn"),
            std::string::npos);
}

TEST(RlhfStage, GroundTruthRules) {
  ConfigErrors errors;
  auto regex = parse_ground_truth(
      nlohmann::json::parse(R"({"rule": "regex", "pattern": "\\bhappy\\b", "ignore_case": true})"),
      "gt", errors);
  auto contains = parse_ground_truth(
      nlohmann::json::parse(R"({"rule": "contains", "text": "dog"})"), "gt", errors);
  auto length = parse_ground_truth(
      nlohmann::json::parse(R"({"rule": "length", "min_words": 2, "max_words": 3})"), "gt", errors);
  ASSERT_TRUE(errors.empty()) << errors.list()[0];
  EXPECT_EQ(regex.score("She was HAPPY."), 1.0);
  EXPECT_EQ(regex.score("unhappy"), 0.0);
  EXPECT_EQ(contains.score("a dog ran"), 1.0);
  EXPECT_EQ(contains.score("a Dog ran"), 0.0);
  EXPECT_EQ(length.score("one"), 0.0);
  EXPECT_EQ(length.score("one two three"), 1.0);
  EXPECT_EQ(length.score("one two three four"), 0.0);
  EXPECT_FALSE(parse_ground_truth(nlohmann::json(), "gt", errors).enabled());
  parse_ground_truth(nlohmann::json::parse(R"({"rule": "sentiment"})"), "gt", errors);
  ASSERT_EQ(errors.list().size(), 1u);
  EXPECT_NE(errors.list()[0].find("gt.rule"), std::string::npos) << errors.list()[0];
}

TEST(RlhfStage, FingerprintsFollowConfigInputsAndUpstreamStages) {
  const std::string dir = test::temp_dir("fingerprint");
  std::ofstream(dir + "/data.jsonl") << R"({"prompt": "a", "completion": "b"})"
                                     << "\n";
  std::ofstream(dir + "/r.json") << R"({"run": {"name": "t", "dir": ")" << dir << R"(/run"},
    "base": {"hf": ")" << dir << R"("},
    "stages": [{"name": "sft", "type": "sft", "data": {"train": ")"
                                 << dir << R"(/data.jsonl"}},
               {"name": "ppo", "type": "rlhf", "policy": "@sft", "data": {"prompts": ")"
                                 << dir << R"(/data.jsonl"}}]})";
  auto fingerprints = [&](const std::vector<std::string>& overrides) {
    ConfigErrors errors;
    auto recipe = load_recipe(dir + "/r.json", overrides, errors);
    return std::make_pair(stage_fingerprint(recipe, "sft"), stage_fingerprint(recipe, "ppo"));
  };
  const auto first = fingerprints({});
  EXPECT_EQ(first, fingerprints({}));  // deterministic
  EXPECT_NE(first.first, first.second);
  // The SFT config changes both SFT's and PPO's (which builds on it); PPO's own only PPO's.
  const auto sft_changed = fingerprints({"sft.train.lr=0.01"});
  EXPECT_NE(sft_changed.first, first.first);
  EXPECT_NE(sft_changed.second, first.second);
  const auto ppo_changed = fingerprints({"ppo.kl.beta=0.2"});
  EXPECT_EQ(ppo_changed.first, first.first);
  EXPECT_NE(ppo_changed.second, first.second);
  // So does the content of a data file they name, and the seed.
  std::ofstream(dir + "/data.jsonl", std::ios::app) << R"({"prompt": "c", "completion": "d"})"
                                                    << "\n";
  EXPECT_NE(fingerprints({}).first, first.first);
  EXPECT_NE(fingerprints({"run.seed=9"}).first, fingerprints({}).first);

  // A bare word is a name, not a path: a directory called "sft" where the command runs (the
  // source tree has one) changing under it leaves the stage's fingerprint alone.
  const auto before = fingerprints({});
  std::pair<std::string, std::string> with_dir, after_edit;
  {
    test::InDirectory in(dir);
    std::filesystem::create_directories("sft");
    with_dir = fingerprints({});
    std::ofstream("sft/edited.cpp") << "changed";
    after_edit = fingerprints({});
  }
  EXPECT_EQ(with_dir, before);
  EXPECT_EQ(after_edit, before);
}
