// The recipe pipeline through the `tiller` binary: the resolved recipe states the values that ran
// (and they are the ones that ran: metrics, checkpoints), `tiller --threads` wins over
// run.threads, and a recipe asking for tensor parallelism beside a stage that cannot run under it
// is refused before anything runs, naming the stage.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "common/util/files.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

// The resolved recipe of a run directory (comment lines skipped by read_json_file).
nlohmann::json resolved_recipe(const std::string& run_dir) {
  return read_json_file(run_dir + "/recipe.json");
}

const nlohmann::json& stage_body(const nlohmann::json& recipe, const std::string& name) {
  for (const auto& body : recipe["stages"])
    if (body["name"] == name) return body;
  throw std::runtime_error("no stage " + name);
}

}  // namespace

// Non-default train keys of a short pretraining run: stated in RUN_DIR/recipe.json beside the
// defaults, and seen in what ran (metrics lines at log_every, the constant learning rate, the
// checkpoints kept); --threads wins over the recipe's run.threads and says so.
TEST(Pipeline, ResolvedRecipeStatesWhatRanAndTheThreadsFlagWins) {
  const std::string dir = test::temp_dir("pipeline_resolved");
  std::vector<std::string> args = test::quickstart_pretrain_args(
      dir, {"pretrain.train.steps=6", "pretrain.train.log_every=3",
            "pretrain.train.checkpoint_every=2", "pretrain.train.keep_checkpoints=2",
            "pretrain.train.schedule=constant", "pretrain.train.warmup_steps=0",
            "pretrain.train.lr=0.005", "synthetic_data.arithmetic.max_operand=20"});
  args.insert(args.begin() + 1, {"--threads", "2"});  // the recipe says run.threads=1
  std::string out;
  ASSERT_EQ(test::run_command(test::shell_command(args), &out), 0) << out;
  EXPECT_NE(out.find("threads: 2 from --threads (the recipe's run.threads 1 is overridden)"),
            std::string::npos)
      << out;

  const nlohmann::json recipe = resolved_recipe(dir);
  EXPECT_EQ(recipe["run"]["threads"], 2);
  EXPECT_EQ(recipe["run"]["seed"], 1234);
  EXPECT_EQ(recipe["run"]["device"], "cpu");
  EXPECT_EQ(recipe["run"]["tensor_parallel"], 1);
  EXPECT_EQ(recipe["synthetic_data"]["corpus_stories"], 400);
  EXPECT_EQ(recipe["synthetic_data"]["prompts"], 1000);  // a default, stated
  EXPECT_EQ(recipe["synthetic_data"]["arithmetic"]["max_operand"], 20);
  EXPECT_EQ(recipe["synthetic_data"]["arithmetic"]["operations"], "+-");  // a default, stated
  EXPECT_TRUE(path_exists(recipe["synthetic_data"]["dir"].get<std::string>() +
                          "/arithmetic_prompts.jsonl"));
  const nlohmann::json& train = stage_body(recipe, "pretrain")["train"];
  EXPECT_EQ(train["lr"], 0.005);
  EXPECT_EQ(train["log_every"], 3);
  EXPECT_EQ(train["keep_checkpoints"], 2);
  EXPECT_EQ(train["beta2"], 0.95);  // defaults, stated
  EXPECT_EQ(train["grad_clip"], 1.0);
  EXPECT_EQ(train["zero_stage"], 0);
  EXPECT_EQ(stage_body(recipe, "pretrain")["data"]["packing"], true);

  // What ran: a line every 3 steps (and step 0's evaluation), at the constant 0.005; the newest
  // two of the checkpoints every 2 steps.
  const auto metrics = test::metrics_by_step(dir + "/pretrain/metrics.jsonl");
  std::vector<int64_t> logged;
  for (const auto& [step, record] : metrics) {
    logged.push_back(step);
    if (step > 0) {
      EXPECT_EQ(record["lr"].get<double>(), 0.005) << step;
    }
  }
  EXPECT_EQ(logged, (std::vector<int64_t>{0, 3, 6}));
  std::vector<std::string> checkpoints;
  for (const auto& entry : std::filesystem::directory_iterator(dir + "/pretrain/checkpoints"))
    if (entry.path().filename().string().rfind("step-", 0) == 0)
      checkpoints.push_back(entry.path().filename().string());
  std::sort(checkpoints.begin(), checkpoints.end());
  EXPECT_EQ(checkpoints, (std::vector<std::string>{"step-4", "step-6"}));

  // Without the flag the recipe's run.threads runs, and is stated.
  const std::string again = test::temp_dir("pipeline_threads");
  ASSERT_EQ(test::run_command(test::shell_command(test::quickstart_pretrain_args(
                                  again, {"pretrain.train.steps=1"})),
                              &out),
            0)
      << out;
  EXPECT_EQ(out.find("from --threads"), std::string::npos) << out;
  EXPECT_EQ(resolved_recipe(again)["run"]["threads"], 1);
}

// The resolved recipe is a recipe: it passes --check as it is.
TEST(Pipeline, TheResolvedRecipeRunsAgainAsItIs) {
  const std::string dir = test::temp_dir("pipeline_again");
  std::string out;
  ASSERT_EQ(test::run_command(test::shell_command(
                                  test::quickstart_pretrain_args(dir, {"pretrain.train.steps=1"})),
                              &out),
            0)
      << out;
  ASSERT_EQ(test::run_command(test::tiller_binary() + " run --check " + dir + "/recipe.json", &out),
            0)
      << out;
  EXPECT_NE(out.find(": OK (6 stages)"), std::string::npos) << out;
}

// run.tensor_parallel 2 with reward and rlhf stages: --check refuses it, naming each, before any
// stage runs; a recipe of pretraining alone passes.
TEST(Pipeline, TensorParallelBesideAStageThatCannotRunUnderItIsRefusedUpFront) {
  const std::string dir = test::temp_dir("pipeline_tp");
  const std::string recipe = test::quickstart_recipe_in(dir);
  std::string out;
  for (const std::string check : {" --check", ""}) {
    EXPECT_EQ(
        test::run_command(
            test::tiller_binary() + " run" + check + " " + recipe + " run.tensor_parallel=2", &out),
        1)
        << out;
    for (const std::string stage : {"'reward' (reward)", "'ppo' (rlhf)"})
      EXPECT_NE(out.find("run.tensor_parallel: 2 ranks, but stage " + stage +
                         " does not support tensor parallelism yet (pretrain, sft stages do)"),
                std::string::npos)
          << out;
    EXPECT_EQ(out.find("stage 'pretrain' (pretrain) does not"), std::string::npos) << out;
    EXPECT_FALSE(path_exists(dir + "/pretrain")) << out;
  }
  nlohmann::json pretrain_only = read_json_file(recipe);
  pretrain_only["stages"] = nlohmann::json::array({pretrain_only["stages"][0]});
  write_file_atomic(dir + "/pretrain-only.json", pretrain_only.dump());
  EXPECT_EQ(test::run_command(test::tiller_binary() + " run --check " + dir +
                                  "/pretrain-only.json run.tensor_parallel=2",
                              &out),
            0)
      << out;
}
