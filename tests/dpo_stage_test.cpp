// The dpo stage: its recipe checks (a value the loss does not use is refused with its path), the
// reference log-prob cache (resumed chunk by chunk, refused when made for other inputs), a run on
// stories260K whose implicit-reward accuracy rises (`tiller eval preference` agreeing), the live
// reference agreeing with the cache, and exact resume.
#include <gtest/gtest.h>

#include <fstream>
#include <random>

#include "common/data/preference_data.h"
#include "common/io/hf_dir.h"
#include "common/io/llama2c.h"
#include "common/recipe/recipe.h"
#include "common/recipe/stage_io.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "dpo/dpo_stage.h"
#include "dpo/preference_eval.h"
#include "dpo/reference_cache.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

// stories260K as an HF directory (once per test binary run).
std::string stories_hf_dir(const std::string& bin, const std::string& tok) {
  static std::string dir;
  if (dir.empty()) {
    dir = test::temp_dir("dpo_stories260k") + "/hf";
    SaveOptions options;
    options.tokenizer_path = tok;
    save_hf_model(*import_llama2c(bin), dir, options);
  }
  return dir;
}

// Pairs with a rule: the chosen story says its hero was happy, the rejected one another feeling.
void write_story_pairs(const std::string& path, int count, uint32_t seed) {
  const char* names[] = {"Tom", "Lily", "Ben", "Mia", "Sam", "Anna"};
  const char* things[] = {"ball", "cat", "tree", "boat", "cake", "kite"};
  const char* bad[] = {"sad", "angry", "tired", "scared", "bored"};
  std::mt19937 rng(seed);
  std::ofstream out(path);
  for (int i = 0; i < count; ++i) {
    const std::string name = names[rng() % 6], thing = things[rng() % 6];
    const std::string story = name + " had a " + thing + ". " + name + " was ";
    out << nlohmann::json{{"prompt", "A story about " + name + "."},
                          {"chosen", story + "happy."},
                          {"rejected", story + bad[rng() % 5] + "."}}
               .dump()
        << "\n";
  }
}

// A one-stage recipe in DIR whose base is the HF directory `base`; parse errors are thrown.
Recipe dpo_recipe(const std::string& dir, const std::string& base, const std::string& stage_json,
                  DpoStageConfig* config) {
  const std::string path = dir + "/recipe.json";
  std::ofstream(path) << R"({"run": {"name": "dpo", "dir": ")" + dir +
                             R"(/run", "seed": 5, "threads": 2}, "base": {"hf": ")" + base +
                             R"("}, "stages": [)" + stage_json + "]}";
  ConfigErrors errors;
  Recipe recipe = load_recipe(path, {}, errors);
  *config = parse_dpo_stage(recipe.stages.at(0), errors);
  errors.throw_if_any(path);
  return recipe;
}

// The parse errors of a stage body, one per line ("" when none).
std::string parse_errors(const std::string& body) {
  const nlohmann::json json = nlohmann::json::parse(body);
  StageEntry entry;
  entry.body = &json;
  entry.path = "stages[0]";
  entry.type = "dpo";
  ConfigErrors errors;
  parse_dpo_stage(entry, errors);
  std::string out;
  for (const auto& e : errors.list()) out += e + "\n";
  return out;
}

std::string stage_body(const std::string& data, const std::string& extra, int steps = 6) {
  return R"({"name": "dpo", "type": "dpo", "init": "@base",
    "data": {"train": ")" +
         data + R"(", "template": "plain", "val_fraction": 0.2},
    "train": {"steps": )" +
         std::to_string(steps) + R"(, "batch_size": 4, "micro_batch_size": 2, "lr": 0.002,
              "schedule": "constant", "max_seq_len": 48, "checkpoint_every": 2})" +
         extra + "}";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Recipe checks

TEST(DpoStageConfig, ValuesTheLossDoesNotUseAreRefusedWithTheirPath) {
  const std::string data = test::temp_dir("dpo_cfg") + "/pairs.jsonl";
  write_story_pairs(data, 4, 1);
  auto body = [&](const std::string& extra) { return stage_body(data, extra); };
  EXPECT_EQ(parse_errors(body("")), "");
  EXPECT_EQ(parse_errors(body(R"(, "loss": {"type": "ipo", "label_smoothing": 0.1})")),
            "stages[0].loss.label_smoothing: is not used by loss 'ipo' (only sigmoid, robust and "
            "simpo)\n");
  EXPECT_EQ(parse_errors(body(R"(, "loss": {"type": "sigmoid", "gamma": 1})")),
            "stages[0].loss.gamma: is SimPO's target margin; loss 'sigmoid' does not use it\n");
  EXPECT_EQ(parse_errors(body(R"(, "loss": {"type": "orpo", "sft_weight": 1})")),
            "stages[0].loss.sft_weight: orpo has its own NLL term on the chosen response\n");
  EXPECT_EQ(parse_errors(body(R"(, "loss": {"type": "simpo"}, "reference": {"mode": "live"})")),
            "stages[0].reference: loss 'simpo' is reference-free; remove the reference section\n");
  EXPECT_EQ(parse_errors(body(R"(, "reference": {"mode": "live", "chunk_pairs": 8})")),
            "stages[0].reference.chunk_pairs: is the cache's; mode 'live' keeps no cache\n");
  EXPECT_NE(parse_errors(body(R"(, "loss": {"type": "kto"})")).find("stages[0].loss.type"),
            std::string::npos);
  EXPECT_NE(parse_errors(body(R"(, "loss": {"betta": 0.1})")).find("stages[0].loss.betta"),
            std::string::npos);
  EXPECT_NE(parse_errors(body(R"(, "ground_truth": {"rule": "contains", "text": "happy"})"))
                .find("give eval.prompts"),
            std::string::npos);
}

TEST(DpoStageConfig, TheResolvedRecipeStatesTrlsDefaults) {
  const std::string data = test::temp_dir("dpo_stated") + "/pairs.jsonl";
  write_story_pairs(data, 4, 1);
  const nlohmann::json json =
      nlohmann::json::parse(stage_body(data, R"(, "loss": {"type": "simpo"})"));
  StageEntry entry{"dpo", "dpo", "stages[0]", &json};
  ConfigErrors errors;
  const auto stated = dpo_stated_defaults(parse_dpo_stage(entry, errors));
  EXPECT_TRUE(errors.empty());
  EXPECT_EQ(stated["loss"]["beta"], 2.0);  // CPOTrainer's SimPO defaults
  EXPECT_EQ(stated["loss"]["gamma"], 0.5);
  EXPECT_EQ(stated["loss"]["label_smoothing"], 0.0);
  EXPECT_FALSE(stated.contains("reference"));  // reference-free
  const nlohmann::json sigmoid = nlohmann::json::parse(stage_body(data, ""));
  StageEntry plain{"dpo", "dpo", "stages[0]", &sigmoid};
  const auto defaults = dpo_stated_defaults(parse_dpo_stage(plain, errors));
  EXPECT_EQ(defaults["loss"]["beta"], 0.1);
  EXPECT_EQ(defaults["reference"]["model"], "@base");  // the policy's initial weights
  EXPECT_EQ(defaults["reference"]["mode"], "cache");
}

// ---------------------------------------------------------------------------------------------
// Reference cache

namespace {

// Pairs of random tokens with a 2- or 3-token prompt (tokens 3..39 of a 40-token vocabulary).
std::vector<PreferencePair> random_pairs(int count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<PreferencePair> pairs;
  for (int i = 0; i < count; ++i) {
    PreferencePair p;
    const int64_t prompt = 2 + i % 2;
    for (auto* seq : {&p.chosen, &p.rejected}) {
      seq->push_back(1);
      for (int j = 1; j < prompt + 2 + static_cast<int>(rng() % 4); ++j)
        seq->push_back(3 + static_cast<int64_t>(rng() % 37));
      seq->push_back(2);
    }
    std::copy(p.chosen.begin(), p.chosen.begin() + prompt, p.rejected.begin());
    p.chosen_prompt_tokens = p.rejected_prompt_tokens = prompt;
    pairs.push_back(std::move(p));
  }
  return pairs;
}

}  // namespace

TEST(DpoReferenceCache, AnInterruptedBuildComputesOnlyTheMissingChunks) {
  Transformer model = test::sharp_random_model(test::llama_config(40, 16, 32, 2, 2, 2, 64), 7);
  const auto pairs = random_pairs(10, 3);
  ReferenceCacheOptions o;
  o.dir = test::temp_dir("dpo_cache") + "/reference_logps";
  o.fingerprint = reference_fingerprint(*model, {&pairs}, "plain", 64);
  o.stage = "dpo";
  o.chunk_pairs = 4;  // chunks of 4, 4 and 2 pairs
  o.micro_batch = 3;
  const ReferenceCacheBuild first = build_reference_cache(*model, pairs, o);
  EXPECT_EQ(first.chunks, 3);
  EXPECT_EQ(first.chunks_computed, 3);
  ASSERT_EQ(first.logps.chosen.size(), 10u);
  // A log-prob is a sum of negative terms: below zero, and finite.
  for (double v : first.logps.rejected) EXPECT_TRUE(v < 0 && std::isfinite(v)) << v;

  // A run killed after its first chunk: the rebuild computes the two others, to the same values.
  remove_all(o.dir + "/chunk-000001.json");
  remove_all(o.dir + "/chunk-000002.json");
  const ReferenceCacheBuild resumed = build_reference_cache(*model, pairs, o);
  EXPECT_EQ(resumed.chunks_computed, 2);
  EXPECT_EQ(resumed.logps.chosen, first.logps.chosen);
  EXPECT_EQ(resumed.logps.rejected, first.logps.rejected);
  const ReferenceCacheBuild complete = build_reference_cache(*model, pairs, o);
  EXPECT_EQ(complete.chunks_computed, 0);
  EXPECT_EQ(complete.logps.chosen, first.logps.chosen);
}

TEST(DpoReferenceCache, ACacheMadeForOtherInputsIsRefusedWithTheRemedy) {
  Transformer model = test::sharp_random_model(test::llama_config(40, 16, 32, 2, 2, 2, 64), 7);
  Transformer other = test::sharp_random_model(test::llama_config(40, 16, 32, 2, 2, 2, 64), 8);
  const auto pairs = random_pairs(6, 3), other_pairs = random_pairs(6, 4);
  ReferenceCacheOptions o;
  o.dir = test::temp_dir("dpo_cache_fp") + "/reference_logps";
  o.stage = "dpo";
  o.fingerprint = reference_fingerprint(*model, {&pairs}, "plain", 64);
  build_reference_cache(*model, pairs, o);
  // Another model, other data, another template or length: another fingerprint.
  for (const std::string& fingerprint : {reference_fingerprint(*other, {&pairs}, "plain", 64),
                                         reference_fingerprint(*model, {&other_pairs}, "plain", 64),
                                         reference_fingerprint(*model, {&pairs}, "chatml", 64),
                                         reference_fingerprint(*model, {&pairs}, "plain", 32)}) {
    ASSERT_NE(fingerprint, o.fingerprint);
    ReferenceCacheOptions changed = o;
    changed.fingerprint = fingerprint;
    const std::string message =
        test::error_of([&] { build_reference_cache(*model, pairs, changed); });
    EXPECT_NE(message.find("stage dpo: the reference log-prob cache " + o.dir +
                           " was made for another reference model, data or template"),
              std::string::npos)
        << message;
    EXPECT_NE(message.find("delete " + o.dir + " to rebuild it"), std::string::npos) << message;
  }
}

// ---------------------------------------------------------------------------------------------
// Runs on stories260K

TEST(DpoStage, RaisesTheImplicitRewardAccuracyAndLogsTrlsMetrics) {
  TILLER_REQUIRE_SHARED(bin, test::kStoriesBin);
  TILLER_REQUIRE_SHARED(tok, test::kStoriesTok);
  const std::string init = stories_hf_dir(bin, tok);
  const std::string dir = test::temp_dir("dpo_run");
  write_story_pairs(dir + "/pairs.jsonl", 40, 11);
  DpoStageConfig config;
  const Recipe recipe = dpo_recipe(
      dir, init,
      stage_body(dir + "/pairs.jsonl", R"(, "loss": {"beta": 0.5, "sft_weight": 0.1})", 12),
      &config);
  const nlohmann::json summary = run_dpo_stage(recipe, config);
  EXPECT_EQ(summary["steps"], 12);
  EXPECT_EQ(summary["train_pairs"], 32);
  EXPECT_EQ(summary["val_pairs"], 8);
  // At the start the policy is its reference: every implicit reward is 0, no pair is "right".
  EXPECT_EQ(summary["initial_eval_rewards/accuracies"], 0.0);
  EXPECT_GE(summary["eval_rewards/accuracies"].get<double>(), 0.75);
  EXPECT_GT(summary["eval_rewards/margins"].get<double>(), 0.0);
  EXPECT_TRUE(summary.contains("eval_nll"));  // the SFT term is on
  EXPECT_TRUE(path_exists(recipe.stage_dir("dpo") + "/reference_logps/train/chunk-000000.json"));
  EXPECT_TRUE(path_exists(stage_output_dir(recipe, "dpo") + "/model.safetensors"));

  // `tiller eval preference` on held-out pairs: the trained policy against its initial weights.
  write_story_pairs(dir + "/held_out.jsonl", 16, 99);
  PreferenceEvalOptions eval;
  eval.model = stage_output_dir(recipe, "dpo");
  eval.reference = init;
  eval.data = dir + "/held_out.jsonl";
  eval.template_name = "plain";
  eval.max_seq_len = 48;
  const PreferenceEvalResult held_out = evaluate_preference_policy(eval);
  EXPECT_EQ(held_out.pairs, 16);
  EXPECT_GE(held_out.accuracy, 0.75);
  eval.reference = eval.model;  // against itself: every reward 0, no pair ranked right
  EXPECT_EQ(evaluate_preference_policy(eval).accuracy, 0.0);
  std::string out;
  ASSERT_EQ(test::run_command(test::tiller_binary() + " eval preference --model " + eval.model +
                                  " --reference " + init + " --data " + eval.data +
                                  " --template plain --max-seq-len 48 --json",
                              &out),
            0)
      << out;
  const auto printed = nlohmann::json::parse(out.substr(out.find('{')));
  EXPECT_EQ(printed["pairs"], 16);
  EXPECT_NEAR(printed["accuracy"].get<double>(), held_out.accuracy, 1e-12);

  const auto metrics = test::metrics_by_step(recipe.stage_dir("dpo") + "/metrics.jsonl");
  ASSERT_EQ(metrics.size(), 13u);  // step 0 (validation alone) and 12 steps
  for (const char* key : {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
                          "rewards/margins", "logps/chosen", "logps/rejected", "nll", "lr"})
    EXPECT_TRUE(metrics.at(1).contains(key)) << key;
  // At step 1 the policy is the reference: the loss is -log s(0) = log 2 plus the SFT term.
  const auto& first = metrics.at(1);
  EXPECT_NEAR(first["rewards/margins"].get<double>(), 0.0, 1e-5);
  EXPECT_NEAR(first["loss"].get<double>(), std::log(2.0) + 0.1 * first["nll"].get<double>(), 1e-5);
}

TEST(DpoStage, ALiveReferenceGivesTheCachedFigures) {
  TILLER_REQUIRE_SHARED(bin, test::kStoriesBin);
  TILLER_REQUIRE_SHARED(tok, test::kStoriesTok);
  const std::string init = stories_hf_dir(bin, tok);
  const std::string data = test::temp_dir("dpo_live_data") + "/pairs.jsonl";
  write_story_pairs(data, 20, 12);
  std::map<std::string, std::map<int64_t, nlohmann::json>> runs;
  for (const std::string mode : {"cache", "live"}) {
    const std::string dir = test::temp_dir("dpo_live_" + mode);
    DpoStageConfig config;
    const Recipe recipe = dpo_recipe(
        dir, init, stage_body(data, R"(, "reference": {"mode": ")" + mode + R"("})", 3), &config);
    run_dpo_stage(recipe, config);
    runs[mode] = test::metrics_by_step(recipe.stage_dir("dpo") + "/metrics.jsonl");
  }
  for (int64_t step = 1; step <= 3; ++step) {
    for (const char* key : {"loss", "rewards/margins", "eval_loss"}) {
      if (!runs["cache"].at(step).contains(key)) continue;
      EXPECT_NEAR(runs["cache"].at(step)[key].get<double>(),
                  runs["live"].at(step)[key].get<double>(), 1e-5)
          << key << " at step " << step;
    }
  }
}

// Pairs whose prompt is most of each sequence: a long story, then a one-sentence ending.
void write_long_prompt_pairs(const std::string& path, int count, uint32_t seed) {
  const char* names[] = {"Tom", "Lily", "Ben", "Mia"};
  const char* things[] = {"ball", "cat", "tree", "boat"};
  std::mt19937 rng(seed);
  std::ofstream out(path);
  for (int i = 0; i < count; ++i) {
    const std::string name = names[rng() % 4], thing = things[rng() % 4];
    const std::string prompt = "Once upon a time, " + name + " had a big " + thing + ". " + name +
                               " played with the " + thing + " in the park every day, and " + name +
                               " loved the " + thing + " very much. One day";
    out << nlohmann::json{{"prompt", prompt},
                          {"chosen", " " + name + " was happy."},
                          {"rejected", " " + name + " was sad."}}
               .dump()
        << "\n";
  }
}

TEST(DpoStage, SharingPrefixesGivesTheUnsharedFiguresAndSaysWhatItPacked) {
  TILLER_REQUIRE_SHARED(bin, test::kStoriesBin);
  TILLER_REQUIRE_SHARED(tok, test::kStoriesTok);
  const std::string init = stories_hf_dir(bin, tok);
  const std::string root = test::temp_dir("dpo_share");
  write_long_prompt_pairs(root + "/long.jsonl", 20, 14);
  {
    // A short prompt before endings as long as each other that differ from their first word,
    // long enough that the prompt is under a twentieth of each pair's tokens.
    std::ofstream out(root + "/short.jsonl");
    std::string cats, dogs;
    for (int i = 0; i < 36; ++i) cats += " cat", dogs += " dog";
    for (int i = 0; i < 20; ++i)
      out << nlohmann::json{{"prompt", "A story."}, {"chosen", cats}, {"rejected", dogs}}.dump()
          << "\n";
  }
  auto run = [&](const std::string& name, const std::string& data, bool share,
                 std::string* printed) {
    const std::string dir = test::temp_dir("dpo_share_" + name);
    DpoStageConfig config;
    const std::string extra = std::string(R"(, "share_prefixes": )") + (share ? "true" : "false");
    const Recipe recipe = dpo_recipe(dir, init, stage_body(data, extra, 3), &config);
    testing::internal::CaptureStdout();
    run_dpo_stage(recipe, config);
    *printed = testing::internal::GetCapturedStdout();
    return test::metrics_by_step(recipe.stage_dir("dpo") + "/metrics.jsonl");
  };
  std::string shared_out, unshared_out, short_out;
  const auto shared = run("shared", root + "/long.jsonl", true, &shared_out);
  const auto unshared = run("unshared", root + "/long.jsonl", false, &unshared_out);
  for (int64_t step = 1; step <= 3; ++step) {
    for (const char* key : {"loss", "logps/chosen", "logps/rejected", "eval_loss"}) {
      if (!unshared.at(step).contains(key)) continue;
      EXPECT_NEAR(shared.at(step)[key].get<double>(), unshared.at(step)[key].get<double>(), 1e-4)
          << key << " at step " << step;
    }
    // The long prompts pay for packing in every micro-batch; off, the figure is not logged.
    EXPECT_EQ(shared.at(step).value("shared_prefix_batches", -1.0), 1.0) << step;
    EXPECT_FALSE(unshared.at(step).contains("shared_prefix_batches")) << step;
  }
  EXPECT_NE(shared_out.find("[dpo] share_prefixes: the first step packed 2 of its 2 micro-batches"),
            std::string::npos)
      << shared_out;
  EXPECT_EQ(unshared_out.find("share_prefixes:"), std::string::npos) << unshared_out;
  // There sharing does not pay, and the stage says so once.
  const auto short_run = run("short", root + "/short.jsonl", true, &short_out);
  EXPECT_EQ(short_run.at(1).value("shared_prefix_batches", -1.0), 0.0);
  const std::string none =
      "[dpo] share_prefixes: the first step packed none of its 2 micro-batches";
  ASSERT_NE(short_out.find(none), std::string::npos) << short_out;
  EXPECT_EQ(short_out.find(none, short_out.find(none) + 1), std::string::npos) << short_out;
}

TEST(DpoStage, ResumeEndsBitIdenticalToAnUninterruptedRun) {
  TILLER_REQUIRE_SHARED(bin, test::kStoriesBin);
  TILLER_REQUIRE_SHARED(tok, test::kStoriesTok);
  const std::string init = stories_hf_dir(bin, tok);
  const std::string data = test::temp_dir("dpo_resume_data") + "/pairs.jsonl";
  write_story_pairs(data, 17, 13);  // 13 train pairs: batches of 4 cross epochs mid-step
  DpoStageConfig config;
  const std::string straight = test::temp_dir("dpo_resume_a"),
                    resumed = test::temp_dir("dpo_resume_b");
  Recipe a = dpo_recipe(straight, init, stage_body(data, "", 7), &config);
  run_dpo_stage(a, config);
  Recipe b = dpo_recipe(resumed, init, stage_body(data, "", 4), &config);
  run_dpo_stage(b, config);  // stops after step 4 (a checkpoint), as a killed run would have
  remove_all(stage_output_dir(b, "dpo"));
  b = dpo_recipe(resumed, init, stage_body(data, "", 7), &config);
  const auto summary = run_dpo_stage(b, config);  // resumes at step 4, the cache complete
  EXPECT_EQ(summary["steps"], 7);
  EXPECT_EQ(read_file(stage_output_dir(a, "dpo") + "/model.safetensors"),
            read_file(stage_output_dir(b, "dpo") + "/model.safetensors"));
}

TEST(DpoStage, EveryLossTypeTrainsAndOnlyReferenceLossesBuildACache) {
  TILLER_REQUIRE_SHARED(bin, test::kStoriesBin);
  TILLER_REQUIRE_SHARED(tok, test::kStoriesTok);
  const std::string init = stories_hf_dir(bin, tok);
  const std::string data = test::temp_dir("dpo_types_data") + "/pairs.jsonl";
  write_story_pairs(data, 10, 14);
  for (const std::string& type : preference_loss_types()) {
    const std::string dir = test::temp_dir("dpo_type_" + type);
    DpoStageConfig config;
    const Recipe recipe = dpo_recipe(
        dir, init, stage_body(data, R"(, "loss": {"type": ")" + type + R"("})", 2), &config);
    const nlohmann::json summary = run_dpo_stage(recipe, config);
    EXPECT_TRUE(std::isfinite(summary["final_loss"].get<double>())) << type;
    EXPECT_EQ(path_exists(recipe.stage_dir("dpo") + "/reference_logps"), loss_uses_reference(type))
        << type;
    EXPECT_EQ(summary.contains("reference_mode"), loss_uses_reference(type)) << type;
    EXPECT_EQ(summary.contains("eval_nll"), type == "orpo") << type;
  }
}
