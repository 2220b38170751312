// `tiller sweep`: a grid of overrides run point by point (each up to the measured stage),
// runs.jsonl rows with N, D, C and the validation loss that `tiller scaling fit` reads, finished
// points skipped on a rerun, and a bad grid refused before anything runs.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/util/error.h"
#include "common/util/files.h"
#include "scaling/runs_table.h"
#include "scaling/sweep.h"
#include "tests/test_util.h"

using namespace tiller;

TEST(Sweep, GridAxesExpandInOrderWithSafeNames) {
  const auto axis = scaling::parse_grid_axis("pretrain.model.hidden_size=32,64");
  EXPECT_EQ(axis.key, "pretrain.model.hidden_size");
  EXPECT_EQ(axis.values, (std::vector<std::string>{"32", "64"}));
  const auto points =
      scaling::expand_grid({axis, scaling::parse_grid_axis("pretrain.train.lr=1e-3,3e-3,1e-2")});
  ASSERT_EQ(points.size(), 6u);
  EXPECT_EQ(points[0].overrides,
            (std::vector<std::string>{"pretrain.model.hidden_size=32", "pretrain.train.lr=1e-3"}));
  EXPECT_EQ(points[1].overrides[1], "pretrain.train.lr=3e-3");  // the last axis varies fastest
  EXPECT_EQ(points[3].overrides[0], "pretrain.model.hidden_size=64");
  EXPECT_EQ(points[5].name, "p05_hidden_size=64_lr=1e-2");
  EXPECT_NE(test::error_of([] { scaling::parse_grid_axis("lr"); }).find("key=value1"),
            std::string::npos);
  EXPECT_NE(test::error_of([] { scaling::parse_grid_axis("lr=1,,2"); }).find("empty value"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] {
              scaling::expand_grid({axis, axis});
            }).find("given twice"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { scaling::expand_grid({axis}, 1); }).find("more than 1"),
            std::string::npos);
}

TEST(Sweep, LinkedAxisSetsSeveralKeysTogether) {
  // A family of model shapes is one axis: width, MLP width and depth move together.
  const auto shapes = scaling::parse_grid_axis(
      "pretrain.model.hidden_size:pretrain.model.num_hidden_layers=32:2,64:4");
  EXPECT_EQ(shapes.keys, (std::vector<std::string>{"pretrain.model.hidden_size",
                                                   "pretrain.model.num_hidden_layers"}));
  const auto points =
      scaling::expand_grid({shapes, scaling::parse_grid_axis("pretrain.train.steps=4,8")});
  ASSERT_EQ(points.size(), 4u);
  EXPECT_EQ(points[2].overrides, (std::vector<std::string>{"pretrain.model.hidden_size=64",
                                                           "pretrain.model.num_hidden_layers=4",
                                                           "pretrain.train.steps=4"}));
  EXPECT_EQ(points[2].name, "p02_hidden_size=64-4_steps=4");
  EXPECT_NE(test::error_of([] { scaling::parse_grid_axis("a:b=1:2,3"); }).find("1 parts for 2"),
            std::string::npos);
  EXPECT_NE(test::error_of([] { scaling::parse_grid_axis("a:b=1:"); }).find("empty part"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] {
              scaling::expand_grid({shapes, scaling::parse_grid_axis("pretrain.model."
                                                                     "num_hidden_layers=2")});
            }).find("num_hidden_layers given twice"),
            std::string::npos);
}

TEST(Sweep, RunsEachPointRecordsNDCAndSkipsFinishedPoints) {
  const std::string dir = test::temp_dir("sweep");
  const std::string recipe = test::quickstart_recipe_in(dir + "/run");
  const std::string out = dir + "/sweep";
  const std::vector<std::string> command = {test::tiller_binary(),
                                            "sweep",
                                            recipe,
                                            "synthetic_data.corpus_stories=300",
                                            "run.threads=1",
                                            "pretrain.train.log_every=1",
                                            "pretrain.train.eval_every=0",
                                            "--grid",
                                            "pretrain.model.hidden_size=32,64",
                                            "--grid",
                                            "pretrain.train.steps=4,8",
                                            "--out",
                                            out};
  std::string log;
  ASSERT_EQ(test::run_command(test::shell_command(command), &log), 0) << log;
  EXPECT_NE(log.find("[sweep] 4 points"), std::string::npos) << log;

  std::vector<nlohmann::json> rows;
  std::ifstream in(out + "/runs.jsonl");
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(rows.size(), 4u);
  // Points: (32, 4), (32, 8), (64, 4), (64, 8).
  EXPECT_EQ(rows[0]["N"], rows[1]["N"]);
  // Twice the width (the MLP's width fixed): attention 4x, MLP 2x.
  EXPECT_GT(rows[2]["N"].get<double>(), 2 * rows[0]["N"].get<double>());
  for (const auto& r : rows) {
    const double n = r["N"], d = r["D"], c = r["C"];
    const double attention = 6.0 * r["num_hidden_layers"].get<double>() *
                             r["context_length"].get<double>() * r["hidden_size"].get<double>() * d;
    EXPECT_NEAR(c, 6 * n * d + attention, 1e-9 * c);
    EXPECT_TRUE(std::isfinite(r["loss"].get<double>()));
    EXPECT_LT(r["N"].get<double>(), r["N_total"].get<double>());  // embeddings excluded
    // What `scaling hparams` reads: the stage's lr and global batch, and tokens per step.
    EXPECT_DOUBLE_EQ(r["lr"].get<double>(), 3e-3);
    EXPECT_EQ(r["batch_size"], 16);
    EXPECT_EQ(r["batch_tokens"], 16 * r["context_length"].get<int64_t>());
  }
  // Twice the steps, about twice the tokens (packed rows; padding excluded).
  EXPECT_NEAR(rows[1]["D"].get<double>() / rows[0]["D"].get<double>(), 2.0, 0.1);
  // Longer training of the same model lowers the validation loss.
  EXPECT_LT(rows[3]["loss"].get<double>(), rows[2]["loss"].get<double>());
  // The table reads as a scaling-fit input.
  const auto table = scaling::read_runs(out + "/runs.jsonl");
  EXPECT_EQ(table.runs.size(), 4u);
  EXPECT_TRUE(table.has_n && table.has_d && table.has_c);

  // A rerun runs nothing and writes the same table.
  const std::string before = test::read_bytes(out + "/runs.jsonl");
  ASSERT_EQ(test::run_command(test::shell_command(command), &log), 0) << log;
  EXPECT_EQ(log.find("running"), std::string::npos) << log;
  EXPECT_NE(log.find("p03_hidden_size=64_steps=8: done already"), std::string::npos) << log;
  EXPECT_EQ(test::read_bytes(out + "/runs.jsonl"), before);

  // A typo in the grid is refused before any point runs.
  const std::string bad_out = dir + "/bad";
  ASSERT_NE(test::run_command(test::shell_command({test::tiller_binary(), "sweep", recipe, "--grid",
                                                   "pretrain.train.stepz=4,8", "--out", bad_out}),
                              &log),
            0);
  EXPECT_NE(log.find("stepz"), std::string::npos) << log;
  EXPECT_FALSE(path_exists(bad_out + "/points"));
}

TEST(Sweep, RecordsLearningRateAndBatchFromTheSummaryOrTheResolvedRecipe) {
  const std::string run = test::temp_dir("sweep_record");
  const std::string stage = run + "/pretrain";
  make_directories(stage + "/final");
  std::ofstream(stage + "/final/config.json")
      << R"({"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4})";
  const scaling::GridPoint point{0, {"pretrain.train.lr=1e-3"}, "p00_lr=1e-3"};
  std::ofstream(stage + "/complete.json") << R"({"final_val_loss": 3.5, "tokens_trained": 4096,
      "max_seq_len": 128, "lr": 0.002, "batch_size": 4})";
  nlohmann::json row = scaling::sweep_record(point, stage);
  EXPECT_DOUBLE_EQ(row["lr"].get<double>(), 0.002);
  EXPECT_EQ(row["batch_size"], 4);
  EXPECT_EQ(row["batch_tokens"], 4 * 128);

  // A summary from before they were recorded: the point's resolved recipe, when it sets them.
  std::ofstream(stage + "/complete.json")
      << R"({"final_val_loss": 3.5, "tokens_trained": 4096, "max_seq_len": 128})";
  std::ofstream(run + "/recipe.json") << "// resolved\n"
                                      << R"({"stages": [{"name": "sft", "train": {"lr": 9}},
                        {"name": "pretrain", "train": {"lr": 0.001, "batch_size": 8}}]})";
  row = scaling::sweep_record(point, stage);
  EXPECT_DOUBLE_EQ(row["lr"].get<double>(), 0.001);
  EXPECT_EQ(row["batch_tokens"], 8 * 128);
  std::ofstream(run + "/recipe.json") << R"({"stages": [{"name": "pretrain"}]})";
  row = scaling::sweep_record(point, stage);
  EXPECT_FALSE(row.contains("lr"));  // neither says: left out, the row still serves `scaling fit`
  EXPECT_FALSE(row.contains("batch_tokens"));
}
