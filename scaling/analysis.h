// The whole of `tiller scaling fit`: the Chinchilla fit with bootstrap intervals, the
// compute-optimal allocation at several budgets, Kaplan's one-variable power laws and forecasts,
// and their presentation as a table or one JSON object. Torch-free.
#pragma once
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "scaling/bootstrap.h"
#include "scaling/fit.h"
#include "scaling/runs_table.h"

namespace tiller::scaling {

// The budgets always reported (FLOPs); ScalingOptions::budgets adds to them.
inline const std::vector<double> kDefaultBudgets = {1e21, 1e22, 1e23, 1e24};

struct ScalingOptions {
  int exclude_highest_loss = 0;  // drop the K runs of highest loss before fitting (outliers)
  int bootstrap = 200;           // resamples of the runs, with replacement; 0: no intervals
  uint64_t seed = 1234;
  PercentileRange percentiles;
  std::vector<double> budgets;                 // compute budgets reported besides kDefaultBudgets
  std::optional<double> predict_n, predict_d;  // forecast the loss here (both or neither)
  ChinchillaFitOptions fit;
};

struct BudgetAllocation {
  double compute = 0;
  Interval n_opt, d_opt, tokens_per_parameter, loss;
};

// Kaplan et al.: L(X) = (X_c / X)^alpha for X one of N, D, C.
struct KaplanLaw {
  std::string variable;  // "N", "D" or "C"
  Interval alpha, x_c;
};

struct LossForecast {
  double n = 0, d = 0;
  Interval loss;
};

struct ScalingAnalysis {
  std::string source;
  size_t runs_read = 0, runs_used = 0;
  std::vector<int64_t> excluded_lines;  // source lines of the runs left out, highest loss first
  size_t grid_starts = 0;
  ChinchillaFit fit;
  double huber_delta = 0;
  Interval E, A, B, alpha, beta, a, b, G;
  std::vector<BudgetAllocation> compute_optimal;  // by increasing budget
  std::vector<KaplanLaw> kaplan;                  // for each of N, D, C the table has
  std::vector<std::string> kaplan_skipped;        // variables present but constant across runs
  std::optional<LossForecast> forecast;
  int resamples = 0;
  uint64_t seed = 0;
  PercentileRange percentiles;
};

// Fits, bootstraps and forecasts. Throws tiller::Error on options or data the fits cannot use.
ScalingAnalysis analyze_runs(const RunsTable& table, const ScalingOptions& options = {});

// One JSON object: E, A, B, alpha, beta, a, b and G as {"value", "low", "high"}, objective,
// compute_optimal, kaplan, runs_used, runs_excluded, bootstrap settings, and forecast if asked.
nlohmann::json to_json(const ScalingAnalysis& analysis);

// The readable report: parameters with intervals, the compute-optimal table, Kaplan exponents.
std::string format_report(const ScalingAnalysis& analysis);

}  // namespace tiller::scaling
