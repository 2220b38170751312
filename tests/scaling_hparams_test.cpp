// `tiller scaling hparams`: DeepSeek LLM's batch-size and learning-rate laws recovered from a
// synthetic LR x batch grid at five compute budgets drawn from a known loss surface, the grouping
// of runs into budgets, and errors that name the line and the column.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "common/util/error.h"
#include "scaling/hparams.h"
#include "tests/test_util.h"

using namespace tiller;
using namespace tiller::scaling;

namespace {

// DeepSeek LLM's fitted laws (sec. 3.1), taken as the truth.
constexpr double kBatchK = 0.2920, kBatchExponent = 0.3271;
constexpr double kLrK = 0.3118, kLrExponent = -0.1250;

double true_batch(double c) {
  return kBatchK * std::pow(c, kBatchExponent);
}
double true_lr(double c) {
  return kLrK * std::pow(c, kLrExponent);
}

// L(C, B, eta) = L0(C) + 0.02 (ln B - ln B_opt(C))^2 + 0.03 (ln eta - ln eta_opt(C))^2, plus
// Gaussian noise of sd `noise`, over one fixed grid of B (2^14 ... 2^23 in steps of 2^0.25) and
// eta (1e-4 ... 1e-2 in steps of 10^0.05) at budgets 1e17 ... 1e21, as a DeepSeek-style sweep
// would run it: the grid is not centred on any budget's optimum.
std::vector<HparamRun> synthetic_grid(double noise, uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto gaussian = [&] {  // Box-Muller: the same draws on every standard library
    const double u1 = (rng() + 1.0) / 18446744073709551616.0, u2 = rng() / 18446744073709551616.0;
    return noise * std::sqrt(-2 * std::log(u1)) * std::cos(2 * M_PI * u2);
  };
  std::vector<HparamRun> runs;
  int64_t line = 0;
  for (double c : {1e17, 1e18, 1e19, 1e20, 1e21}) {
    const double l0 = 2 + 20 * std::pow(c, -0.1);
    for (int i = 0; i <= 36; ++i)
      for (int j = 0; j <= 40; ++j) {
        const double batch = std::pow(2.0, 14 + 0.25 * i), lr = std::pow(10.0, -4 + 0.05 * j);
        const double u = std::log(batch / true_batch(c)), v = std::log(lr / true_lr(c));
        // The budgets' C scatter by up to 0.4% (a sweep's C is 6ND plus attention, not exact).
        const double jitter = 1 + 0.004 * ((i + j) % 3 - 1);
        runs.push_back(
            {c * jitter, batch, lr, l0 + 0.02 * u * u + 0.03 * v * v + gaussian(), ++line});
      }
  }
  return runs;
}

}  // namespace

TEST(ScalingHparams, RecoversDeepSeekLawsFromASyntheticGrid) {
  HparamOptions options;
  options.predict_c = {1e19, 1e23};
  const HparamAnalysis a = analyze_hparams({"synthetic", synthetic_grid(0.001, 7), false}, options);
  ASSERT_EQ(a.budgets.size(), 5u);
  for (const HparamBudget& b : a.budgets) {
    EXPECT_EQ(b.runs, 37u * 41u);
    EXPECT_GE(b.near_optimal.size(), 10u) << "C = " << b.compute;
    EXPECT_LT(b.near_optimal.size(), 200u) << "C = " << b.compute;
    for (const HparamRun& run : b.near_optimal) EXPECT_LE(run.loss, b.min_loss * 1.0025);
  }
  std::printf("b = %.4f [%.4f, %.4f] (truth %.4f), e = %.4f [%.4f, %.4f] (truth %.4f)\n", a.b.value,
              a.b.low, a.b.high, kBatchExponent, a.e.value, a.e.low, a.e.high, kLrExponent);
  std::printf("k_B = %.4g [%.4g, %.4g] (truth %.4g), k_eta = %.4g [%.4g, %.4g] (truth %.4g)\n",
              a.k_batch.value, a.k_batch.low, a.k_batch.high, kBatchK, a.k_lr.value, a.k_lr.low,
              a.k_lr.high, kLrK);
  EXPECT_NEAR(a.b.value, kBatchExponent, 0.02);
  EXPECT_NEAR(a.e.value, kLrExponent, 0.02);
  // Each true value inside its 95% interval (for this noise seed; the intervals do not cover
  // the grid's coarseness, so this is not guaranteed for every seed).
  const std::pair<const Interval*, double> truths[] = {
      {&a.k_batch, kBatchK}, {&a.b, kBatchExponent}, {&a.k_lr, kLrK}, {&a.e, kLrExponent}};
  for (const auto& [i, truth] : truths) {
    EXPECT_LE(i->low, i->value);
    EXPECT_GE(i->high, i->value);
    EXPECT_LE(i->low, truth) << i->value;
    EXPECT_GE(i->high, truth) << i->value;
  }
  // The constants: exp(intercept) at log C ~ 44 is sensitive to the slope; within a factor 1.6.
  EXPECT_LT(std::abs(std::log(a.k_batch.value / kBatchK)), std::log(1.6));
  EXPECT_LT(std::abs(std::log(a.k_lr.value / kLrK)), std::log(1.6));
  // Inside the budgets the laws are tight; two orders of magnitude beyond, the interval holds.
  ASSERT_EQ(a.forecasts.size(), 2u);
  EXPECT_NEAR(a.forecasts[0].batch.value / true_batch(1e19), 1, 0.05);
  EXPECT_NEAR(a.forecasts[0].lr.value / true_lr(1e19), 1, 0.05);
  EXPECT_NEAR(a.forecasts[1].batch.value / true_batch(1e23), 1, 0.25);
  EXPECT_NEAR(a.forecasts[1].lr.value / true_lr(1e23), 1, 0.25);

  // The same seed gives the same intervals; JSON carries every part.
  const HparamAnalysis again =
      analyze_hparams({"synthetic", synthetic_grid(0.001, 7), false}, options);
  EXPECT_EQ(again.b.low, a.b.low);
  EXPECT_EQ(again.e.high, a.e.high);
  const nlohmann::json j = to_json(a);
  for (const char* key : {"k_B", "b", "k_eta", "e"})
    for (const char* part : {"value", "low", "high"}) EXPECT_TRUE(j[key][part].is_number()) << key;
  ASSERT_EQ(j["budgets"].size(), 5u);
  EXPECT_EQ(j["budgets"][0]["near_optimal"].size(), a.budgets[0].near_optimal.size());
  EXPECT_TRUE(j["budgets"][0]["near_optimal"][0].contains("line"));
  ASSERT_EQ(j["forecasts"].size(), 2u);
  EXPECT_TRUE(j["forecasts"][1]["eta_opt"]["low"].is_number());
  EXPECT_NE(format_report(a).find("k_eta"), std::string::npos);
}

TEST(ScalingHparams, IsExactOnANoiselessGridCentredOnEachOptimum) {
  // Symmetric near-optimal sets: least squares in log space lands on the true laws.
  std::vector<HparamRun> runs;
  int64_t line = 0;
  for (double c : {1e18, 1e19, 1e20, 1e21})
    for (int i = -3; i <= 3; ++i)
      for (int j = -3; j <= 3; ++j)
        runs.push_back({c, true_batch(c) * std::pow(2.0, i), true_lr(c) * std::pow(2.0, j),
                        3 + 0.01 * (i * i + j * j), ++line});
  HparamOptions options;
  options.tolerance = 1.0;  // 0.03 of 3: i^2 + j^2 <= 3
  options.bootstrap = 0;
  const HparamAnalysis a = analyze_hparams({"exact", runs, false}, options);
  EXPECT_EQ(a.budgets[0].near_optimal.size(), 9u);  // (0,0), 4 at distance 1, 4 at sqrt 2
  EXPECT_NEAR(a.b.value, kBatchExponent, 1e-9);
  EXPECT_NEAR(a.e.value, kLrExponent, 1e-9);
  EXPECT_NEAR(a.k_batch.value, kBatchK, 1e-6);
  EXPECT_NEAR(a.k_lr.value, kLrK, 1e-6);
  EXPECT_TRUE(std::isnan(a.b.low));
  EXPECT_TRUE(to_json(a)["b"]["low"].is_null());
}

TEST(ScalingHparams, GroupsRunsIntoBudgetsByComputeOrByAColumn) {
  const std::vector<HparamRun> runs = {{1.000e18, 1, 1, 3.0, 1},
                                       {1.009e18, 1, 1, 3.1, 2},
                                       {1.05e18, 1, 1, 3.2, 3},
                                       {1e19, 1, 1, 2.9, 4},
                                       {1.002e19, 1, 1, 2.9, 5}};
  const auto budgets = group_budgets(runs, 1.0, 0.25);
  ASSERT_EQ(budgets.size(), 3u);  // 1.05e18 is more than 1% above 1e18
  EXPECT_EQ(budgets[0].runs, 2u);
  EXPECT_NEAR(budgets[0].compute, std::sqrt(1.000e18 * 1.009e18), 1e6);
  EXPECT_EQ(budgets[0].near_optimal.size(), 1u);  // 3.1 is 3.3% above 3.0
  EXPECT_EQ(budgets[2].near_optimal.size(), 2u);  // a tie: both
  EXPECT_EQ(group_budgets(runs, 0, 0.25).size(), 5u);

  // A budget column: equal values share a budget, whatever C is.
  const std::string path = test::write_temp_file("scaling_hparams", "budget.csv",
                                                 "budget,C,lr,batch_tokens,loss\n"
                                                 "1e18,1.0e18,1e-3,1e5,3.0\n"
                                                 "1e18,1.2e18,2e-3,1e5,3.1\n"
                                                 "1e19,1.0e19,1e-3,2e5,2.9\n");
  HparamColumns columns;
  columns.budget = "budget";
  const HparamSource source = read_hparam_runs(path, columns);
  EXPECT_TRUE(source.budget_column);
  HparamOptions options;
  options.bootstrap = 10;
  const HparamAnalysis a = analyze_hparams(source, options);
  ASSERT_EQ(a.budgets.size(), 2u);
  EXPECT_EQ(a.budgets[0].runs, 2u);
  EXPECT_EQ(a.budgets[0].compute, 1e18);
  EXPECT_NEAR(a.b.value, std::log10(2.0), 1e-12);  // B doubles over a decade of C
}

TEST(ScalingHparams, BadInputFailsNamingTheLineAndTheColumn) {
  std::string error = test::error_of([] {
    read_hparam_runs(
        test::write_temp_file("scaling_hparams", "bad.csv",
                              "C,lr,batch_tokens,loss\n1e18,1e-3,1e5,3.0\n1e18,-1e-3,1e5,3.1\n"));
  });
  EXPECT_NE(error.find("bad.csv:3: 'lr' must be a positive finite number"), std::string::npos)
      << error;
  error = test::error_of([] {
    read_hparam_runs(
        test::write_temp_file("scaling_hparams", "missing.jsonl",
                              "{\"C\": 1e18, \"lr\": 1e-3, \"batch_tokens\": 1e5, \"loss\": 3}\n"
                              "{\"C\": 1e18, \"lr\": 1e-3, \"loss\": 3}\n"));
  });
  EXPECT_NE(error.find("missing.jsonl:2: no 'batch_tokens'"), std::string::npos) << error;
  error = test::error_of([] {
    read_hparam_runs(test::write_temp_file("scaling_hparams", "nolr.jsonl",
                                           "{\"C\": 1e18, \"batch_tokens\": 1e5, \"loss\": 3}\n"));
  });
  EXPECT_NE(error.find("nolr.jsonl:1: no 'lr'"), std::string::npos) << error;
  error = test::error_of([] {
    read_hparam_runs(
        test::write_temp_file("scaling_hparams", "noc.csv", "lr,batch_tokens,loss\n1e-3,1e5,3\n"));
  });
  EXPECT_NE(error.find("noc.csv: no compute column 'C'"), std::string::npos) << error;

  const std::string one_budget = test::write_temp_file("scaling_hparams", "one.csv",
                                                       "C,lr,batch_tokens,loss\n"
                                                       "1e18,1e-3,1e5,3.0\n"
                                                       "1.001e18,2e-3,1e5,3.1\n");
  error = test::error_of([&] { analyze_hparams(read_hparam_runs(one_budget)); });
  EXPECT_NE(error.find("one.csv: the runs span 1 compute budget; the fit needs at least 2"),
            std::string::npos)
      << error;
  EXPECT_EQ(error.find('\n'), std::string::npos) << error;
  HparamOptions bad;
  bad.predict_c = {-1};
  error = test::error_of([&] { analyze_hparams(read_hparam_runs(one_budget), bad); });
  EXPECT_NE(error.find("--predict-c"), std::string::npos) << error;

  // The command: one line on stderr, exit 1; --json prints one object.
  std::string output;
  EXPECT_EQ(
      test::run_command(
          test::shell_command({test::tiller_binary(), "scaling", "hparams", one_budget}), &output),
      1);
  EXPECT_NE(output.find("tiller: error: " + one_budget + ": the runs span 1 compute budget"),
            std::string::npos)
      << output;
  const std::string two = test::write_temp_file("scaling_hparams", "two.csv",
                                                "C,lr,batch_tokens,loss\n"
                                                "1e18,1e-3,1e5,3.0\n"
                                                "1e19,5e-4,2e5,2.9\n");
  ASSERT_EQ(test::run_command(test::shell_command({test::tiller_binary(), "scaling", "hparams", two,
                                                   "--json", "--predict-c", "1e20"}),
                              &output),
            0)
      << output;
  const nlohmann::json j = nlohmann::json::parse(output);
  EXPECT_NEAR(j["b"]["value"].get<double>(), std::log10(2.0), 1e-9);
  EXPECT_NEAR(j["forecasts"][0]["B_opt"]["value"].get<double>(), 4e5, 1e-3);
}

// --average-repeats: runs of one budget at the same batch and lr (seeds) are one point with their
// mean loss. Here one lucky seed of (batch 2, lr 1) is the lowest run, but its mean is not the
// lowest point; without the option the lucky run decides.
TEST(ScalingHparams, AveragedRepeatsDecideTheNearOptimalPoint) {
  const std::vector<HparamRun> runs = {{1e18, 2, 1, 2.90, 1},
                                       {1e18, 2, 1, 3.10, 2},
                                       {1e18, 4, 1, 2.95, 3},
                                       {1e18, 4, 1, 2.96, 4},
                                       {1e18, 8, 1, 3.30, 5}};
  const std::vector<HparamBudget> single = group_budgets(runs, 1.0, 0.25);
  ASSERT_EQ(single.size(), 1u);
  ASSERT_EQ(single[0].near_optimal.size(), 1u);
  EXPECT_EQ(single[0].near_optimal[0].batch, 2);
  EXPECT_EQ(single[0].points.size(), 5u);

  const std::vector<HparamBudget> averaged = group_budgets(runs, 1.0, 0.25, true);
  ASSERT_EQ(averaged.size(), 1u);
  EXPECT_EQ(averaged[0].runs, 5u);
  EXPECT_EQ(averaged[0].points.size(), 3u);
  EXPECT_DOUBLE_EQ(averaged[0].min_loss, 2.955);
  ASSERT_EQ(averaged[0].near_optimal.size(), 1u);
  EXPECT_EQ(averaged[0].near_optimal[0].batch, 4);
  EXPECT_EQ(averaged[0].near_optimal[0].repeats, 2);
  EXPECT_EQ(averaged[0].near_optimal[0].line, 3);  // the first run of the point
}
