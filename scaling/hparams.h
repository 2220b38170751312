// Hyperparameter scaling laws as DeepSeek LLM fits them (DeepSeek-AI 2024, sec. 3.1): from a
// grid of learning rates and batch sizes run at several compute budgets C, keep at each budget
// the near-optimal runs (final loss within a tolerance of that budget's lowest), and fit
// B_opt = k_B C^b and eta_opt = k_eta C^e by least squares in log space over them. Torch-free.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "scaling/bootstrap.h"
#include "scaling/runs_table.h"

namespace tiller::scaling {

// Where a runs file keeps each quantity. `budget`, when set, names a column whose equal values
// mark the runs of one budget (and give its C); else runs are grouped by C (read from `c`, or
// 6ND from N and D columns) within HparamOptions::budget_tolerance.
struct HparamColumns {
  std::string lr = "lr", batch = "batch_tokens", c = "C", loss = "loss";
  std::string budget;
  bool require_c = false;  // `c` was named explicitly
};

struct HparamRun {
  double compute = 0, batch = 0, lr = 0, loss = 0;
  int64_t line = 0;
  int repeats = 1;  // runs averaged into this one (HparamOptions::average_repeats)
};

struct HparamSource {
  std::string source;
  std::vector<HparamRun> runs;
  bool budget_column = false;  // compute is a budget label: runs of equal values share a budget
};

// Reads runs.jsonl or CSV through read_runs; every error names file:line and the column.
HparamSource read_hparam_runs(const std::string& path, const HparamColumns& columns = {});

struct HparamOptions {
  double tolerance = 0.25;        // percent: near-optimal = loss <= (1 + tolerance/100) * minimum
  double budget_tolerance = 1.0;  // percent: C within this of a budget's smallest C shares it
  int bootstrap = 200;            // resamples; 0: no intervals
  uint64_t seed = 1234;
  PercentileRange percentiles;
  std::vector<double> predict_c;  // forecast B_opt and eta_opt at these budgets
  // Runs of one budget at the same batch and lr are repeats (seeds): one point, their mean loss
  bool average_repeats = false;
};

// The runs of one compute budget.
struct HparamBudget {
  double compute = 0;  // the geometric mean of its runs' C (equal C with a budget column)
  size_t runs = 0;
  // Its runs, or with average_repeats one per (batch, lr): the first run's, with the mean loss
  std::vector<HparamRun> points;
  double min_loss = 0;
  std::vector<HparamRun> near_optimal;  // in file order
};

struct HparamForecast {
  double compute = 0;
  Interval batch, lr;
};

struct HparamAnalysis {
  std::string source;
  size_t runs_read = 0, points_used = 0;
  double tolerance = 0, budget_tolerance = 0;
  bool average_repeats = false;
  std::vector<HparamBudget> budgets;  // by increasing C
  Interval k_batch, b, k_lr, e;       // B_opt = k_batch C^b, eta_opt = k_lr C^e
  std::vector<HparamForecast> forecasts;
  int resamples = 0;
  uint64_t seed = 0;
  PercentileRange percentiles;
};

// Groups the runs by budget (by increasing C; a run joins the current budget while its C is
// within budget_tolerance percent of the budget's smallest C) and picks each budget's
// near-optimal runs (loss within tolerance percent of its lowest).
std::vector<HparamBudget> group_budgets(std::vector<HparamRun> runs, double budget_tolerance,
                                        double tolerance, bool average_repeats = false);

// Fits both laws; the intervals come from resampling, within each budget, its near-optimal runs
// with replacement. Throws tiller::Error for fewer than two budgets or bad options.
HparamAnalysis analyze_hparams(const HparamSource& runs, const HparamOptions& options = {});

// One JSON object: k_B, b, k_eta, e as {"value", "low", "high"}, budgets with their near-optimal
// runs, forecasts, the tolerances and the bootstrap settings.
nlohmann::json to_json(const HparamAnalysis& analysis);

// The readable report: the budgets, the two laws with intervals, the forecasts.
std::string format_report(const HparamAnalysis& analysis);

}  // namespace tiller::scaling
