// The whole of `tiller scaling fit`: which laws the runs support (Chinchilla's L(N, D) when N and
// D both vary, L(N) = E + A/N^alpha at the fixed D of a single-D sweep, or L(D) at a fixed N),
// Kaplan's one- and two-variable power laws, bootstrap intervals, the compute-optimal allocation,
// forecasts, the forecast of a held-out largest run, and their presentation as a table or one
// JSON object. Torch-free.
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

// Values of a variable within this fraction of one another count as one (a sweep's D is the
// tokens actually trained, which packing may shift slightly between runs of one step count).
constexpr double kConstantTolerance = 0.01;

struct ScalingOptions {
  int exclude_highest_loss = 0;  // drop the K runs of highest loss before fitting (outliers)
  int bootstrap = 200;           // resamples of the runs, with replacement; 0: no intervals
  uint64_t seed = 1234;
  PercentileRange percentiles;
  std::vector<double> budgets;  // compute budgets reported besides kDefaultBudgets
  // Forecast the loss here: each law that takes the variable (N and D together for the
  // two-variable laws).
  std::optional<double> predict_n, predict_d, predict_c;
  // Fit on every run but the largest (by C, then N, then D) and forecast it with every law.
  bool holdout_largest = false;
  ChinchillaFitOptions fit;
};

// Which laws the runs support.
enum class Design {
  kNAndD,  // N and D vary: Chinchilla's L(N, D), Kaplan's L(N, D) and one-variable laws
  kN,      // only N varies (D fixed): L(N) = E + A/N^alpha, Kaplan's L(N) and L(C)
  kD,      // only D varies (N fixed): L(D) = E + B/D^beta, Kaplan's L(D) and L(C)
  kC,      // the table has C alone: Kaplan's L(C)
};

struct BudgetAllocation {
  double compute = 0;
  Interval n_opt, d_opt, tokens_per_parameter, loss;
};

// Chinchilla's L(N, D) = E + A/N^alpha + B/D^beta with intervals, and what follows from it.
struct ChinchillaResult {
  ChinchillaFit fit;
  size_t grid_starts = 0;
  Interval E, A, B, alpha, beta, a, b, G;
  std::vector<BudgetAllocation> compute_optimal;  // by increasing budget
};

// L(X) = E + A/X^alpha along the one variable that varies, the other held at `held_value`.
struct SaturatingResult {
  std::string variable, held;  // "N" and "D", or "D" and "N"
  double held_value = 0;       // the geometric mean of the held variable over the runs
  SaturatingFit fit;
  size_t grid_starts = 0;
  Interval E, A, alpha;
};

// Kaplan et al.: L(X) = (X_c / X)^alpha for X one of N, D, C.
struct KaplanLaw {
  std::string variable;  // "N", "D" or "C"
  PowerLaw fit;
  Interval alpha, x_c;
};

// Kaplan et al.'s L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D.
struct KaplanJointResult {
  KaplanJointFit fit;
  size_t grid_starts = 0;
  Interval alpha_n, alpha_d, n_c, d_c;
};

// One law's forecast. `law` is its key (ScalingAnalysis::law_name gives the formula).
struct LawForecast {
  std::string law;  // "chinchilla", "saturating", "kaplan_N", "kaplan_D", "kaplan_C", "kaplan_ND"
  double n = NAN, d = NAN, c = NAN;  // where it was made (NaN: the law does not take it)
  Interval loss;
  double actual = NAN;  // with holdout_largest: the held-out run's loss
  double relative_error() const { return loss.value / actual - 1; }
};

struct ScalingAnalysis {
  std::string source;
  size_t runs_read = 0, runs_used = 0;
  std::vector<int64_t> excluded_lines;  // source lines of the runs left out, highest loss first
  Design design = Design::kNAndD;
  // What was fitted and why, and what was not and why, one sentence each, e.g. "D is constant
  // (1.2e+06) across 7 runs: fitting L(N) = E + A/N^alpha at that D".
  std::vector<std::string> notes;
  double huber_delta = 0;
  std::optional<ChinchillaResult> chinchilla;
  std::optional<SaturatingResult> saturating;
  std::optional<KaplanJointResult> kaplan_joint;
  std::vector<KaplanLaw> kaplan;  // for each of N, D, C the table has and the runs vary
  std::vector<LawForecast> forecasts;
  std::optional<Run> held_out;  // with holdout_largest: the run the forecasts are checked on
  int resamples = 0;
  uint64_t seed = 0;
  PercentileRange percentiles;
};

// The formula of a law key: "chinchilla" -> "Chinchilla L(N, D)", "kaplan_C" -> "Kaplan L(C)".
std::string law_name(const ScalingAnalysis& analysis, const std::string& law);

// Which of the runs' variables vary (by more than kConstantTolerance): the design, with the note
// that says why. Throws tiller::Error when nothing varies.
Design choose_design(const RunsTable& table, const std::vector<Run>& runs, std::string* note);

// Whether the quantity stays within kConstantTolerance over the runs (true for no runs).
bool is_constant(const std::vector<Run>& runs, double Run::*quantity);

// The index in table.runs of the largest run: the largest C, then N, then D.
size_t largest_run(const RunsTable& table);

// Fits, bootstraps and forecasts. Throws tiller::Error on options or data the fits cannot use.
ScalingAnalysis analyze_runs(const RunsTable& table, const ScalingOptions& options = {});

// One JSON object: design, notes; with Chinchilla's fit E, A, B, alpha, beta, a, b and G as
// {"value", "low", "high"}, objective, compute_optimal, forecast; saturating, kaplan,
// kaplan_ND, forecasts, holdout, runs_used, runs_excluded, bootstrap settings (docs/scaling.md).
nlohmann::json to_json(const ScalingAnalysis& analysis);

// The readable report: what was fitted and why, each law's parameters with intervals, the
// compute-optimal table, the forecasts (against the held-out run's loss).
std::string format_report(const ScalingAnalysis& analysis);

}  // namespace tiller::scaling
