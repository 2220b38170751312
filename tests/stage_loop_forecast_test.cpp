// The stage loop's side of train.forecast: it asks the forecaster at the steps its schedule
// names, writes what comes back into metrics.jsonl and the progress line, and when a fit fails
// it trains on and says so there and in the summary, instead of leaving the forecast out.
#include <gtest/gtest.h>

#include <fstream>

#include "common/recipe/recipe.h"
#include "common/train/stage_loop.h"
#include "tests/test_util.h"

namespace tiller {
namespace {

TEST(StageLoopForecast, AFailedFitIsLoggedAndTrainingGoesOn) {
  const std::string dir = test::temp_dir("stage_loop_forecast");
  const std::string path =
      test::write_file(dir + "/recipe.json",
                       R"({"run": {"name": "loop", "dir": ")" + dir +
                           R"(/run", "seed": 3}, "stages": [{"name": "x", "type": "pretrain"}]})");
  ConfigErrors errors;
  const Recipe recipe = load_recipe(path, {}, errors);
  errors.throw_if_any(path);

  LoopSchedule schedule;
  schedule.steps = 8;
  schedule.forecast_from = 4;
  schedule.forecast_every = 2;
  std::vector<int64_t> asked;
  const LossForecaster forecaster = [&asked](const std::string&, const nlohmann::json& record) {
    const int64_t step = record.at("step").get<int64_t>();
    asked.push_back(step);
    LossForecast f;
    if (step == 4)
      f.error = "metrics.jsonl: step 3 logs lr 0.1 but the recipe's schedule gives 0.2";
    else
      f.loss = 2.5;
    return std::optional<LossForecast>(f);
  };
  StageLoop loop(recipe, "x", schedule, forecaster);
  loop.resume({});
  StageSteps steps;
  steps.step = [](const StepContext&) {
    StepReport report;
    report.record = {{"loss", 3.0}};
    return report;
  };
  testing::internal::CaptureStdout();
  loop.run(steps);
  const std::string out = testing::internal::GetCapturedStdout();
  const nlohmann::json summary = loop.finish(nlohmann::json::object(), [](const std::string&) {});

  EXPECT_EQ(asked, (std::vector<int64_t>{4, 6, 8}));
  EXPECT_NE(out.find("forecast failed: metrics.jsonl: step 3 logs lr 0.1"), std::string::npos)
      << out;
  EXPECT_NE(out.find("forecast 2.5000"), std::string::npos) << out;
  const auto logged = test::metrics_by_step(dir + "/run/x/metrics.jsonl");
  ASSERT_EQ(logged.count(8), 1u);  // every step trained
  EXPECT_FALSE(logged.at(4).contains("forecast_loss"));
  EXPECT_NE(logged.at(4).value("forecast_error", "").find("the recipe's schedule gives"),
            std::string::npos);
  EXPECT_DOUBLE_EQ(logged.at(6).at("forecast_loss").get<double>(), 2.5);
  EXPECT_FALSE(logged.at(6).contains("forecast_error"));
  // The summary's forecast is the first one due, the failed one: it says why.
  EXPECT_EQ(summary.at("forecast").at("at_step"), 4);
  EXPECT_TRUE(summary.at("forecast").contains("forecast_error")) << summary.dump();
}

}  // namespace
}  // namespace tiller
