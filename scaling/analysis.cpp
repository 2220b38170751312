#include "scaling/analysis.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>
#include <set>
#include <tuple>

#include "common/util/error.h"
#include "scaling/parallel.h"

namespace tiller::scaling {
namespace {

// Each law needs one run more than it has parameters. Kaplan's L(N, D) (4) is fitted beside
// Chinchilla's (5), so Chinchilla's count covers it.
constexpr size_t kChinchillaMinRuns = 6, kSaturatingMinRuns = 4, kPowerLawMinRuns = 3;

bool positive_finite(double x) {
  return std::isfinite(x) && x > 0;
}

std::string number(double x) {
  return format_value("%.3g", x);
}

// The logarithm of one of N, D, C of each run.
std::vector<double> log_of(const std::vector<Run>& runs, double Run::*quantity) {
  std::vector<double> logs;
  for (const Run& run : runs) logs.push_back(std::log(run.*quantity));
  return logs;
}

Observations observations_of(const std::vector<Run>& runs) {
  Observations o;
  o.log_n = log_of(runs, &Run::n);
  o.log_d = log_of(runs, &Run::d);
  o.log_loss = log_of(runs, &Run::loss);
  return o;
}

// The range of one variable over the runs, and its geometric mean.
struct Spread {
  double low = HUGE_VAL, high = 0, mean = 0;
  bool constant() const { return high <= low * (1 + kConstantTolerance); }
};

Spread spread_of(const std::vector<Run>& runs, double Run::*quantity) {
  Spread spread;
  double log_sum = 0;
  for (const Run& run : runs) {
    spread.low = std::min(spread.low, run.*quantity);
    spread.high = std::max(spread.high, run.*quantity);
    log_sum += std::log(run.*quantity);
  }
  spread.mean = std::exp(log_sum / runs.size());
  return spread;
}

struct KaplanVariable {
  std::string name;
  double Run::*quantity;
  const std::optional<double> ScalingOptions::*predict;
};

const KaplanVariable kKaplanVariables[] = {{"N", &Run::n, &ScalingOptions::predict_n},
                                           {"D", &Run::d, &ScalingOptions::predict_d},
                                           {"C", &Run::c, &ScalingOptions::predict_c}};

bool table_has(const RunsTable& table, const std::string& variable) {
  return variable == "N" ? table.has_n : variable == "D" ? table.has_d : table.has_c;
}

void check_options(const ScalingOptions& options) {
  check(options.exclude_highest_loss >= 0, "scaling fit: --exclude-highest-loss must be >= 0");
  check(options.bootstrap >= 0 && options.bootstrap <= 100000,
        "scaling fit: --bootstrap must be in [0, 100000]");
  check(options.percentiles.low >= 0 && options.percentiles.low < options.percentiles.high &&
            options.percentiles.high <= 100,
        "scaling fit: percentiles must satisfy 0 <= low < high <= 100");
  for (double c : options.budgets)
    check(positive_finite(c), "scaling fit: a --budget must be a positive number of FLOPs");
  for (const KaplanVariable& v : kKaplanVariables) {
    const std::optional<double>& value = options.*v.predict;
    check(!value || positive_finite(*value),
          "scaling fit: --predict-" + std::string(1, char(std::tolower(v.name[0]))) +
              " must be a positive finite number, got " + (value ? number(*value) : ""));
  }
  check(!options.holdout_largest || !(options.predict_n || options.predict_d || options.predict_c),
        "scaling fit: --holdout-largest forecasts the largest run itself; leave out --predict-*");
  check(options.fit.huber_delta > 0, "scaling fit: the Huber delta must be positive");
}

// The analysis with its inputs' description and the settings that ran filled in.
ScalingAnalysis analysis_settings(const RunsTable& table, const ScalingOptions& options) {
  ScalingAnalysis analysis;
  analysis.source = table.source;
  analysis.runs_read = table.runs.size();
  analysis.huber_delta = options.fit.huber_delta;
  analysis.seed = options.seed;
  analysis.resamples = options.bootstrap;
  analysis.percentiles = options.percentiles;
  return analysis;
}

// The runs left after the `excluded` highest-loss ones, in file order; the source lines of those
// left out are appended to excluded_lines, highest loss first.
std::vector<Run> runs_without_highest_loss(const RunsTable& table, size_t excluded,
                                           std::vector<int64_t>& excluded_lines) {
  check(excluded < table.runs.size(), "scaling fit: " + std::to_string(table.runs.size()) +
                                          " runs, --exclude-highest-loss " +
                                          std::to_string(excluded) + " would leave none");
  std::vector<size_t> by_loss(table.runs.size());
  std::iota(by_loss.begin(), by_loss.end(), 0);
  std::stable_sort(by_loss.begin(), by_loss.end(),
                   [&](size_t i, size_t j) { return table.runs[i].loss > table.runs[j].loss; });
  std::vector<bool> keep(table.runs.size(), true);
  for (size_t k = 0; k < excluded; ++k) {
    keep[by_loss[k]] = false;
    excluded_lines.push_back(table.runs[by_loss[k]].line);
  }
  std::vector<Run> runs;
  for (size_t i = 0; i < table.runs.size(); ++i)
    if (keep[i]) runs.push_back(table.runs[i]);
  return runs;
}

// Refuses too few runs for the design's main law, in one line.
void check_run_count(const std::string& source, size_t runs, size_t excluded, Design design) {
  const std::string counted = std::to_string(runs) + (runs == 1 ? " run" : " runs") +
                              (excluded ? " (" + std::to_string(excluded) + " excluded)" : "");
  const char* law = "Chinchilla's L(N, D) has 5 parameters and needs";
  size_t needed = kChinchillaMinRuns;
  if (design == Design::kN || design == Design::kD) {
    law = design == Design::kN ? "L(N) = E + A/N^alpha has 3 parameters and needs"
                               : "L(D) = E + B/D^beta has 3 parameters and needs";
    needed = kSaturatingMinRuns;
  } else if (design == Design::kC) {
    law = "Kaplan's L(C) has 2 parameters and needs";
    needed = kPowerLawMinRuns;
  }
  check(runs >= needed,
        source + ": " + counted + ": " + law + " at least " + std::to_string(needed) + " runs");
}

// The one-variable Kaplan laws the runs support, with the logarithms they were fitted on.
struct KaplanFits {
  std::vector<KaplanVariable> variables;
  std::vector<std::vector<double>> log_x;  // per variable
  std::vector<PowerLaw> full;
};

KaplanFits fit_kaplan_laws(const RunsTable& table, const std::vector<Run>& runs,
                           const std::vector<double>& log_loss, std::vector<std::string>& notes) {
  KaplanFits fits;
  for (const KaplanVariable& v : kKaplanVariables) {
    if (!table_has(table, v.name)) continue;
    const Spread spread = spread_of(runs, v.quantity);
    if (spread.constant()) {
      notes.push_back("Kaplan L(" + v.name + "): not fitted, every run has the same " + v.name +
                      " (" + number(spread.mean) + ")");
      continue;
    }
    fits.variables.push_back(v);
    fits.log_x.push_back(log_of(runs, v.quantity));
    fits.full.push_back(*fit_power_law(fits.log_x.back(), log_loss));  // x varies: a slope
  }
  return fits;
}

// The nonlinear laws fitted on all the runs (each present when the design has it).
struct FullFits {
  std::optional<ChinchillaFit> chinchilla;
  std::optional<SaturatingFit> saturating;
  std::optional<KaplanJointFit> kaplan_joint;
  std::vector<double> saturating_log_x;  // log N or log D of each run
};

// The fits refitted on each bootstrap resample: chinchilla[r], kaplan[variable][r], ...
struct BootstrapRefits {
  std::vector<LossLaw> chinchilla;
  std::vector<SaturatingLaw> saturating;
  std::vector<KaplanJointLaw> kaplan_joint;
  std::vector<std::vector<std::optional<PowerLaw>>> kaplan;
};

template <size_t K>
std::vector<std::array<double, K>> refit_starts(const std::array<double, K>& optimum,
                                                const std::array<double, K>& start) {
  return {optimum, start};
}

// Refits on runs drawn with replacement. Every resample is drawn up front from one seeded
// generator, so the intervals do not depend on the thread count. Each refit starts from the full
// fit's optimum and from the grid point that led there, not from the whole grid: the interval
// describes the spread of that optimum, and it keeps 200 refits to a second or so.
BootstrapRefits refit_bootstrap_resamples(const Observations& observations, const FullFits& full,
                                          const std::vector<std::vector<double>>& log_x,
                                          const ScalingOptions& options) {
  const size_t run_count = observations.size();
  std::mt19937_64 rng(options.seed);
  std::vector<std::vector<size_t>> draws(options.bootstrap);
  for (auto& draw : draws)
    for (size_t i = 0; i < run_count; ++i) draw.push_back(draw_index(rng, run_count));
  BootstrapRefits refits;
  if (full.chinchilla) refits.chinchilla.resize(draws.size());
  if (full.saturating) refits.saturating.resize(draws.size());
  if (full.kaplan_joint) refits.kaplan_joint.resize(draws.size());
  refits.kaplan.assign(log_x.size(), std::vector<std::optional<PowerLaw>>(draws.size()));
  ChinchillaFitOptions refit = options.fit;
  refit.threads = 1;  // the resamples are the parallel loop
  parallel_for(draws.size(), options.fit.threads, [&](size_t r) {
    Observations sample;
    std::vector<double> sample_saturating_x;
    std::vector<std::vector<double>> sample_log_x(log_x.size());
    for (size_t i : draws[r]) {
      sample.log_n.push_back(observations.log_n[i]);
      sample.log_d.push_back(observations.log_d[i]);
      sample.log_loss.push_back(observations.log_loss[i]);
      if (full.saturating) sample_saturating_x.push_back(full.saturating_log_x[i]);
      for (size_t v = 0; v < log_x.size(); ++v) sample_log_x[v].push_back(log_x[v][i]);
    }
    if (full.chinchilla)
      refits.chinchilla[r] =
          fit_chinchilla(sample, refit_starts(full.chinchilla->parameters, full.chinchilla->start),
                         refit)
              .law;
    if (full.saturating)
      refits.saturating[r] =
          fit_saturating(sample_saturating_x, sample.log_loss,
                         refit_starts(full.saturating->parameters, full.saturating->start), refit)
              .law;
    if (full.kaplan_joint)
      refits.kaplan_joint[r] =
          fit_kaplan_joint(
              sample, refit_starts(full.kaplan_joint->parameters, full.kaplan_joint->start), refit)
              .law;
    for (size_t v = 0; v < log_x.size(); ++v)
      refits.kaplan[v][r] = fit_power_law(sample_log_x[v], sample.log_loss);
  });
  return refits;
}

// A quantity of a fitted law, bounded by the percentiles of that quantity over the refits.
template <typename Law>
class LawIntervals {
 public:
  LawIntervals(const Law& law, const std::vector<Law>& resampled,
               const PercentileRange& percentiles)
      : law_(law), resampled_(resampled), percentiles_(percentiles) {}

  Interval operator()(const std::function<double(const Law&)>& quantity) const {
    return interval_of(quantity(law_), resampled_, quantity, percentiles_);
  }

 private:
  const Law& law_;
  const std::vector<Law>& resampled_;
  const PercentileRange& percentiles_;
};

// The compute-optimal allocation at the default budgets and the asked ones, by increasing budget.
std::vector<BudgetAllocation> compute_optimal_allocations(
    const std::vector<double>& asked_budgets, const LawIntervals<LossLaw>& law_interval) {
  std::vector<double> budgets = kDefaultBudgets;
  budgets.insert(budgets.end(), asked_budgets.begin(), asked_budgets.end());
  std::sort(budgets.begin(), budgets.end());
  budgets.erase(std::unique(budgets.begin(), budgets.end()), budgets.end());
  std::vector<BudgetAllocation> allocations;
  for (double c : budgets) {
    BudgetAllocation allocation;
    allocation.compute = c;
    allocation.n_opt = law_interval([c](const LossLaw& l) { return l.compute_optimal(c).n; });
    allocation.d_opt = law_interval([c](const LossLaw& l) { return l.compute_optimal(c).d; });
    allocation.tokens_per_parameter =
        law_interval([c](const LossLaw& l) { return l.compute_optimal(c).tokens_per_parameter; });
    allocation.loss = law_interval([c](const LossLaw& l) { return l.compute_optimal(c).loss; });
    allocations.push_back(allocation);
  }
  return allocations;
}

ChinchillaResult chinchilla_result(const ChinchillaFit& fit, size_t grid_starts,
                                   const std::vector<LossLaw>& refits,
                                   const ScalingOptions& options) {
  const LawIntervals<LossLaw> law_interval(fit.law, refits, options.percentiles);
  ChinchillaResult result;
  result.fit = fit;
  result.grid_starts = grid_starts;
  result.E = law_interval([](const LossLaw& l) { return l.E; });
  result.A = law_interval([](const LossLaw& l) { return l.A; });
  result.B = law_interval([](const LossLaw& l) { return l.B; });
  result.alpha = law_interval([](const LossLaw& l) { return l.alpha; });
  result.beta = law_interval([](const LossLaw& l) { return l.beta; });
  result.a = law_interval([](const LossLaw& l) { return l.n_exponent(); });
  result.b = law_interval([](const LossLaw& l) { return l.d_exponent(); });
  result.G = law_interval([](const LossLaw& l) { return l.G(); });
  result.compute_optimal = compute_optimal_allocations(options.budgets, law_interval);
  return result;
}

SaturatingResult saturating_result(const SaturatingFit& fit, size_t grid_starts,
                                   const std::vector<SaturatingLaw>& refits, Design design,
                                   double held_value, const PercentileRange& percentiles) {
  const LawIntervals<SaturatingLaw> law_interval(fit.law, refits, percentiles);
  SaturatingResult result;
  result.variable = design == Design::kN ? "N" : "D";
  result.held = design == Design::kN ? "D" : "N";
  result.held_value = held_value;
  result.fit = fit;
  result.grid_starts = grid_starts;
  result.E = law_interval([](const SaturatingLaw& l) { return l.E; });
  result.A = law_interval([](const SaturatingLaw& l) { return l.A; });
  result.alpha = law_interval([](const SaturatingLaw& l) { return l.alpha; });
  return result;
}

KaplanJointResult kaplan_joint_result(const KaplanJointFit& fit, size_t grid_starts,
                                      const std::vector<KaplanJointLaw>& refits,
                                      const PercentileRange& percentiles) {
  const LawIntervals<KaplanJointLaw> law_interval(fit.law, refits, percentiles);
  KaplanJointResult result;
  result.fit = fit;
  result.grid_starts = grid_starts;
  result.alpha_n = law_interval([](const KaplanJointLaw& l) { return l.alpha_n; });
  result.alpha_d = law_interval([](const KaplanJointLaw& l) { return l.alpha_d; });
  result.n_c = law_interval([](const KaplanJointLaw& l) { return l.n_c(); });
  result.d_c = law_interval([](const KaplanJointLaw& l) { return l.d_c(); });
  return result;
}

// The Kaplan one-variable laws with bootstrap intervals.
std::vector<KaplanLaw> kaplan_results(const KaplanFits& fits, const BootstrapRefits& refits,
                                      const PercentileRange& percentiles) {
  std::vector<KaplanLaw> laws;
  for (size_t v = 0; v < fits.variables.size(); ++v) {
    std::vector<PowerLaw> samples;
    for (const auto& fitted : refits.kaplan[v])
      if (fitted) samples.push_back(*fitted);  // a draw of runs that all share one X says nothing
    KaplanLaw kaplan;
    kaplan.variable = fits.variables[v].name;
    kaplan.fit = fits.full[v];
    const LawIntervals<PowerLaw> law_interval(fits.full[v], samples, percentiles);
    kaplan.alpha = law_interval([](const PowerLaw& p) { return p.alpha; });
    kaplan.x_c = law_interval([](const PowerLaw& p) { return p.x_c; });
    laws.push_back(kaplan);
  }
  return laws;
}

// The value asked of --predict-n, -d or -c (variable "N", "D" or "C").
const std::optional<double>& asked_value(const ScalingOptions& options,
                                         const std::string& variable) {
  for (const KaplanVariable& v : kKaplanVariables)
    if (v.name == variable) return options.*v.predict;
  throw Error("scaling fit: no variable " + variable);
}

// Each fitted law's forecast at the asked point, with notes for asked values no law takes.
void add_forecasts(ScalingAnalysis& analysis, const ScalingOptions& options, const FullFits& full,
                   const BootstrapRefits& refits) {
  const std::optional<double> n = options.predict_n, d = options.predict_d;
  const PercentileRange& range = options.percentiles;
  std::set<std::string> taken;  // the variables some forecast used
  if (n && d && full.chinchilla) {
    LawForecast f{"chinchilla", *n, *d, NAN, {}};
    f.loss = LawIntervals<LossLaw>(full.chinchilla->law, refits.chinchilla,
                                   range)([&](const LossLaw& l) { return l.loss(*n, *d); });
    analysis.forecasts.push_back(f);
    taken.insert({"N", "D"});
  }
  if (full.saturating) {
    const std::string& variable = analysis.saturating->variable;
    if (const std::optional<double>& x = asked_value(options, variable)) {
      LawForecast f{"saturating", variable == "N" ? *x : NAN, variable == "D" ? *x : NAN, NAN, {}};
      f.loss = LawIntervals<SaturatingLaw>(full.saturating->law, refits.saturating, range)(
          [&](const SaturatingLaw& l) { return l.loss(*x); });
      analysis.forecasts.push_back(f);
      taken.insert(variable);
    }
  }
  for (size_t v = 0; v < analysis.kaplan.size(); ++v) {
    const KaplanLaw& law = analysis.kaplan[v];
    const std::optional<double>& x = asked_value(options, law.variable);
    if (!x) continue;
    std::vector<PowerLaw> samples;
    for (const auto& fitted : refits.kaplan[v])
      if (fitted) samples.push_back(*fitted);
    LawForecast f{"kaplan_" + law.variable, NAN, NAN, NAN, {}};
    (law.variable == "N" ? f.n : law.variable == "D" ? f.d : f.c) = *x;
    f.loss = LawIntervals<PowerLaw>(law.fit, samples,
                                    range)([&](const PowerLaw& p) { return p.loss(*x); });
    analysis.forecasts.push_back(f);
    taken.insert(law.variable);
  }
  if (n && d && full.kaplan_joint) {
    LawForecast f{"kaplan_ND", *n, *d, NAN, {}};
    f.loss = LawIntervals<KaplanJointLaw>(full.kaplan_joint->law, refits.kaplan_joint, range)(
        [&](const KaplanJointLaw& l) { return l.loss(*n, *d); });
    analysis.forecasts.push_back(f);
  }
  if ((full.chinchilla || full.kaplan_joint) && (n.has_value() != d.has_value()))
    analysis.notes.push_back(
        "the two-variable laws forecast only with --predict-n and --predict-d together");
  for (const KaplanVariable& v : kKaplanVariables)
    if ((options.*v.predict) && !taken.count(v.name))
      analysis.notes.push_back("--predict-" + std::string(1, char(std::tolower(v.name[0]))) + " " +
                               number(*(options.*v.predict)) + ": no law fitted here takes " +
                               v.name + " alone");
}

// The analysis on the given table, without a held-out run.
ScalingAnalysis analyze_table(const RunsTable& table, const ScalingOptions& options) {
  ScalingAnalysis analysis = analysis_settings(table, options);
  const std::vector<Run> runs = runs_without_highest_loss(
      table, static_cast<size_t>(options.exclude_highest_loss), analysis.excluded_lines);
  analysis.runs_used = runs.size();
  check(runs.size() >= kPowerLawMinRuns,
        table.source + ": " + std::to_string(runs.size()) + (runs.size() == 1 ? " run" : " runs") +
            (analysis.excluded_lines.empty()
                 ? ""
                 : " (" + std::to_string(analysis.excluded_lines.size()) + " excluded)") +
            ": too few to fit any law (the smallest, Kaplan's L(X), needs at least " +
            std::to_string(kPowerLawMinRuns) + ")");
  std::string design_note;
  analysis.design = choose_design(table, runs, &design_note);
  analysis.notes.push_back(design_note);
  check_run_count(table.source, runs.size(), analysis.excluded_lines.size(), analysis.design);

  const Observations observations = observations_of(runs);
  FullFits full;
  size_t chinchilla_starts = 0, saturating_starts = 0, joint_starts = 0;
  if (analysis.design == Design::kNAndD) {
    const std::vector<ChinchillaParameters> grid = chinchilla_grid();
    chinchilla_starts = grid.size();
    full.chinchilla = fit_chinchilla(observations, grid, options.fit);
    const std::vector<KaplanJointParameters> joint_grid = kaplan_joint_grid();
    joint_starts = joint_grid.size();
    full.kaplan_joint = fit_kaplan_joint(observations, joint_grid, options.fit);
  }
  double held_value = NAN;
  if (analysis.design == Design::kN || analysis.design == Design::kD) {
    const bool along_n = analysis.design == Design::kN;
    full.saturating_log_x = along_n ? observations.log_n : observations.log_d;
    held_value = spread_of(runs, along_n ? &Run::d : &Run::n).mean;
    const std::vector<SaturatingParameters> grid = saturating_grid();
    saturating_starts = grid.size();
    full.saturating =
        fit_saturating(full.saturating_log_x, observations.log_loss, grid, options.fit);
  }
  const KaplanFits kaplan = fit_kaplan_laws(table, runs, observations.log_loss, analysis.notes);

  const BootstrapRefits refits =
      refit_bootstrap_resamples(observations, full, kaplan.log_x, options);
  if (full.chinchilla)
    analysis.chinchilla =
        chinchilla_result(*full.chinchilla, chinchilla_starts, refits.chinchilla, options);
  if (full.saturating)
    analysis.saturating = saturating_result(*full.saturating, saturating_starts, refits.saturating,
                                            analysis.design, held_value, options.percentiles);
  if (full.kaplan_joint)
    analysis.kaplan_joint = kaplan_joint_result(*full.kaplan_joint, joint_starts,
                                                refits.kaplan_joint, options.percentiles);
  analysis.kaplan = kaplan_results(kaplan, refits, options.percentiles);
  add_forecasts(analysis, options, full, refits);
  return analysis;
}

}  // namespace

Design choose_design(const RunsTable& table, const std::vector<Run>& runs, std::string* note) {
  const std::string count = std::to_string(runs.size()) + " runs";
  if (!table.has_n || !table.has_d) {
    check(table.has_c && !table.has_n && !table.has_d,
          table.source +
              ": the fits need N and D for every run (columns for two of N, D and C; "
              "see --n-col, --d-col, --c-col), or C alone for Kaplan's L(C)");
    const Spread c = spread_of(runs, &Run::c);
    check(!c.constant(), table.source + ": C is the same (" + number(c.mean) + ") in all " + count +
                             ": no law can be fitted");
    *note = "the table has C but not N or D: fitting Kaplan's L(C) alone";
    return Design::kC;
  }
  const Spread n = spread_of(runs, &Run::n), d = spread_of(runs, &Run::d);
  check(!(n.constant() && d.constant()),
        table.source + ": N (" + number(n.mean) + ") and D (" + number(d.mean) +
            ") are each the same in all " + count +
            " (within 1%): no law can be fitted; a sweep must vary N or D");
  if (n.constant()) {
    *note = "N is constant (" + number(n.mean) + ") across " + count +
            ": fitting L(D) = E + B/D^beta at that N; the two-variable laws (Chinchilla's, "
            "Kaplan's L(N, D)) need runs at two or more N";
    return Design::kD;
  }
  if (d.constant()) {
    *note = "D is constant (" + number(d.mean) + ") across " + count +
            ": fitting L(N) = E + A/N^alpha at that D; the two-variable laws (Chinchilla's, "
            "Kaplan's L(N, D)) need runs at two or more D";
    return Design::kN;
  }
  *note = "N and D both vary across " + count +
          ": fitting Chinchilla's L(N, D), Kaplan's L(N, D) and Kaplan's one-variable laws";
  return Design::kNAndD;
}

bool is_constant(const std::vector<Run>& runs, double Run::*quantity) {
  return runs.empty() || spread_of(runs, quantity).constant();
}

size_t largest_run(const RunsTable& table) {
  check(!table.runs.empty(), table.source + ": no runs");
  auto key = [&](const Run& r) { return std::make_tuple(r.c, r.n, r.d); };
  size_t largest = 0;
  for (size_t i = 1; i < table.runs.size(); ++i)
    if (key(table.runs[i]) > key(table.runs[largest])) largest = i;
  return largest;
}

ScalingAnalysis analyze_runs(const RunsTable& table, const ScalingOptions& options) {
  check_options(options);
  if (!options.holdout_largest) return analyze_table(table, options);
  const size_t largest = largest_run(table);
  const Run held_out = table.runs[largest];
  RunsTable rest = table;
  rest.runs.erase(rest.runs.begin() + static_cast<std::ptrdiff_t>(largest));
  ScalingOptions forecast = options;
  forecast.holdout_largest = false;
  if (table.has_n) forecast.predict_n = held_out.n;
  if (table.has_d) forecast.predict_d = held_out.d;
  if (table.has_c) forecast.predict_c = held_out.c;
  ScalingAnalysis analysis = analyze_table(rest, forecast);
  analysis.runs_read = table.runs.size();
  analysis.held_out = held_out;
  for (LawForecast& f : analysis.forecasts) f.actual = held_out.loss;
  analysis.notes.insert(analysis.notes.begin(),
                        "held out the largest run (line " + std::to_string(held_out.line) +
                            ", loss " + format_value("%.4g", held_out.loss) +
                            ") and forecast it from the other " + std::to_string(rest.runs.size()));
  // The notes on --predict-* the holdout set itself are not the user's to act on.
  analysis.notes.erase(
      std::remove_if(analysis.notes.begin(), analysis.notes.end(),
                     [](const std::string& note) { return note.rfind("--predict-", 0) == 0; }),
      analysis.notes.end());
  return analysis;
}

// ---------------------------------------------------------------------------------------------
// Presentation

namespace {

const char* design_key(Design design) {
  switch (design) {
    case Design::kNAndD:
      return "N and D";
    case Design::kN:
      return "N";
    case Design::kD:
      return "D";
    case Design::kC:
      return "C";
  }
  return "";
}

// The coefficient's and exponent's names of the saturating law: A and alpha along N, B and beta
// along D, as in Chinchilla's law.
std::pair<const char*, const char*> saturating_names(const SaturatingResult& law) {
  return law.variable == "N" ? std::make_pair("A", "alpha") : std::make_pair("B", "beta");
}

nlohmann::json chinchilla_json(const ChinchillaResult& c) {
  nlohmann::json j;
  j["E"] = interval_json(c.E);
  j["A"] = interval_json(c.A);
  j["B"] = interval_json(c.B);
  j["alpha"] = interval_json(c.alpha);
  j["beta"] = interval_json(c.beta);
  j["a"] = interval_json(c.a);
  j["b"] = interval_json(c.b);
  j["G"] = interval_json(c.G);
  j["objective"] = c.fit.objective;
  j["grid_starts"] = c.grid_starts;
  j["compute_optimal"] = nlohmann::json::array();
  for (const BudgetAllocation& b : c.compute_optimal) {
    j["compute_optimal"].push_back(
        {{"C", b.compute},
         {"N_opt", number_or_null(b.n_opt.value)},
         {"D_opt", number_or_null(b.d_opt.value)},
         {"tokens_per_parameter", number_or_null(b.tokens_per_parameter.value)},
         {"loss", number_or_null(b.loss.value)},
         {"interval",
          {{"N_opt", bounds_json(b.n_opt)},
           {"D_opt", bounds_json(b.d_opt)},
           {"tokens_per_parameter", bounds_json(b.tokens_per_parameter)},
           {"loss", bounds_json(b.loss)}}}});
  }
  return j;
}

nlohmann::json forecast_json(const ScalingAnalysis& analysis, const LawForecast& f) {
  nlohmann::json j = {{"law", f.law}, {"formula", law_name(analysis, f.law)}};
  for (const auto& [key, value] :
       {std::pair<const char*, double>{"N", f.n}, {"D", f.d}, {"C", f.c}})
    if (std::isfinite(value)) j[key] = value;
  j["loss"] = interval_json(f.loss);
  if (std::isfinite(f.actual)) {
    j["actual"] = f.actual;
    j["relative_error"] = number_or_null(f.relative_error());
  }
  return j;
}

}  // namespace

std::string law_name(const ScalingAnalysis& analysis, const std::string& law) {
  if (law == "chinchilla") return "Chinchilla L(N, D)";
  if (law == "kaplan_ND") return "Kaplan L(N, D)";
  if (law.rfind("kaplan_", 0) == 0) return "Kaplan L(" + law.substr(7) + ")";
  if (law == "saturating" && analysis.saturating) {
    const SaturatingResult& s = *analysis.saturating;
    const auto [coefficient, exponent] = saturating_names(s);
    return "L(" + s.variable + ") = E + " + coefficient + "/" + s.variable + "^" + exponent +
           " at " + s.held + " = " + format_value("%.3g", s.held_value);
  }
  return law;
}

nlohmann::json to_json(const ScalingAnalysis& analysis) {
  nlohmann::json j;
  j["source"] = analysis.source;
  j["runs_read"] = analysis.runs_read;
  j["runs_used"] = analysis.runs_used;
  j["runs_excluded"] = analysis.excluded_lines.size();
  j["excluded_lines"] = analysis.excluded_lines;
  j["design"] = design_key(analysis.design);
  j["notes"] = analysis.notes;
  j["huber_delta"] = analysis.huber_delta;
  if (analysis.chinchilla) j.update(chinchilla_json(*analysis.chinchilla));
  if (analysis.saturating) {
    const SaturatingResult& s = *analysis.saturating;
    const auto [coefficient, exponent] = saturating_names(s);
    j["saturating"] = {{"variable", s.variable},          {"held", s.held},
                       {"held_value", s.held_value},      {"E", interval_json(s.E)},
                       {coefficient, interval_json(s.A)}, {exponent, interval_json(s.alpha)},
                       {"objective", s.fit.objective},    {"grid_starts", s.grid_starts}};
  }
  j["kaplan"] = nlohmann::json::object();
  for (const KaplanLaw& k : analysis.kaplan)
    j["kaplan"][k.variable] = {{"alpha", interval_json(k.alpha)}, {"X_c", interval_json(k.x_c)}};
  if (analysis.kaplan_joint) {
    const KaplanJointResult& k = *analysis.kaplan_joint;
    j["kaplan_ND"] = {{"alpha_N", interval_json(k.alpha_n)}, {"alpha_D", interval_json(k.alpha_d)},
                      {"N_c", interval_json(k.n_c)},         {"D_c", interval_json(k.d_c)},
                      {"objective", k.fit.objective},        {"grid_starts", k.grid_starts}};
  }
  j["forecasts"] = nlohmann::json::array();
  for (const LawForecast& f : analysis.forecasts) {
    j["forecasts"].push_back(forecast_json(analysis, f));
    if (f.law == "chinchilla")  // as before the other laws had forecasts
      j["forecast"] = {
          {"N", f.n}, {"D", f.d}, {"C", 6 * f.n * f.d}, {"loss", interval_json(f.loss)}};
  }
  if (analysis.held_out) {
    const Run& r = *analysis.held_out;
    j["holdout"] = {{"line", r.line},
                    {"N", number_or_null(r.n)},
                    {"D", number_or_null(r.d)},
                    {"C", number_or_null(r.c)},
                    {"loss", r.loss}};
  }
  j["bootstrap"] = bootstrap_json(analysis.resamples, analysis.seed, analysis.percentiles);
  return j;
}

namespace {

using Lines = std::vector<std::string>;

// "  NAME                    value  [low, high]" for each parameter.
void parameter_lines(Lines& out, const std::vector<std::pair<std::string, const Interval*>>& rows) {
  for (const auto& [name, interval] : rows)
    out.push_back("  " + pad_right(name, 24) + with_bounds("%.5g", *interval));
}

std::string huber_line(double objective, double delta, size_t starts) {
  return "  Huber objective " + format_value("%.6g", objective) + " (delta " +
         format_value("%g", delta) + " on log L), lowest of " + std::to_string(starts) +
         " L-BFGS starts";
}

void chinchilla_lines(Lines& out, const ScalingAnalysis& analysis) {
  const ChinchillaResult& c = *analysis.chinchilla;
  out.push_back("Chinchilla fit  L(N, D) = E + A/N^alpha + B/D^beta");
  out.push_back(huber_line(c.fit.objective, analysis.huber_delta, c.grid_starts));
  parameter_lines(out, {{"E", &c.E},
                        {"A", &c.A},
                        {"B", &c.B},
                        {"alpha", &c.alpha},
                        {"beta", &c.beta},
                        {"a = beta/(alpha+beta)", &c.a},
                        {"b = alpha/(alpha+beta)", &c.b},
                        {"G", &c.G}});
  out.push_back("");
  out.push_back("Compute-optimal allocation  N_opt = G (C/6)^a,  D_opt = (C/6)^b / G");
  out.push_back("  " + pad("C", 8) + pad("N_opt", 12) + pad("D_opt", 12) + "  " +
                pad_right("tokens/parameter", 30) + "loss");
  for (const BudgetAllocation& b : c.compute_optimal)
    out.push_back("  " + pad(format_value("%.3g", b.compute), 8) +
                  pad(format_value("%.4g", b.n_opt.value), 12) +
                  pad(format_value("%.4g", b.d_opt.value), 12) + "  " +
                  pad_right(with_bounds("%.4g", b.tokens_per_parameter), 30) +
                  with_bounds("%.4g", b.loss));
  out.push_back("");
}

void saturating_lines(Lines& out, const ScalingAnalysis& analysis) {
  const SaturatingResult& s = *analysis.saturating;
  const auto [coefficient, exponent] = saturating_names(s);
  out.push_back("Saturating power law  " + law_name(analysis, "saturating") + " (every run's " +
                s.held + ")");
  out.push_back(huber_line(s.fit.objective, analysis.huber_delta, s.grid_starts));
  parameter_lines(out, {{"E", &s.E}, {coefficient, &s.A}, {exponent, &s.alpha}});
  out.push_back("");
}

void kaplan_lines(Lines& out, const ScalingAnalysis& analysis) {
  if (!analysis.kaplan.empty()) {
    out.push_back("Kaplan power laws  L(X) = (X_c / X)^alpha_X  (least squares on log L)");
    for (const KaplanLaw& k : analysis.kaplan)
      out.push_back("  " + k.variable + ": alpha_" + k.variable + " = " +
                    pad_right(with_bounds("%.4g", k.alpha), 30) + k.variable +
                    "_c = " + with_bounds("%.4g", k.x_c));
    out.push_back("");
  }
  if (analysis.kaplan_joint) {
    const KaplanJointResult& k = *analysis.kaplan_joint;
    out.push_back("Kaplan L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D");
    out.push_back(huber_line(k.fit.objective, analysis.huber_delta, k.grid_starts));
    parameter_lines(
        out, {{"alpha_N", &k.alpha_n}, {"alpha_D", &k.alpha_d}, {"N_c", &k.n_c}, {"D_c", &k.d_c}});
    out.push_back("");
  }
}

void forecast_lines(Lines& out, const ScalingAnalysis& analysis) {
  if (analysis.forecasts.empty()) return;
  const bool checked = analysis.held_out.has_value();
  if (checked) {
    const Run& r = *analysis.held_out;
    out.push_back("Held-out largest run (line " + std::to_string(r.line) +
                  "): N = " + format_value("%.4g", r.n) + ", D = " + format_value("%.4g", r.d) +
                  ", C = " + format_value("%.4g", r.c) + ", loss " + format_value("%.4g", r.loss));
  }
  out.push_back(std::string(checked ? "Forecasts of it" : "Forecasts"));
  out.push_back("  " + pad_right("law", 40) + pad("N", 10) + pad("D", 10) + pad("C", 10) + "  " +
                pad_right("loss", 28) + (checked ? pad("actual", 8) + pad("error", 9) : ""));
  for (const LawForecast& f : analysis.forecasts)
    out.push_back("  " + pad_right(law_name(analysis, f.law), 40) +
                  pad(format_value("%.3g", f.n), 10) + pad(format_value("%.3g", f.d), 10) +
                  pad(format_value("%.3g", f.c), 10) + "  " +
                  pad_right(with_bounds("%.4g", f.loss), 28) +
                  (checked ? pad(format_value("%.4g", f.actual), 8) +
                                 pad(format_value("%+.2f", 100 * f.relative_error()) + "%", 9)
                           : ""));
}

}  // namespace

std::string format_report(const ScalingAnalysis& analysis) {
  Lines out;
  out.push_back(
      "Scaling fit of " + std::to_string(analysis.runs_used) + " of " +
      std::to_string(analysis.runs_read) + " runs in " + analysis.source +
      (analysis.excluded_lines.empty()
           ? ""
           : " (" + std::to_string(analysis.excluded_lines.size()) + " highest-loss left out)"));
  for (const std::string& note : analysis.notes) out.push_back("  " + note);
  out.push_back("  " +
                interval_note(analysis.resamples, analysis.seed, analysis.percentiles, "the runs"));
  out.push_back("");
  if (analysis.chinchilla) chinchilla_lines(out, analysis);
  if (analysis.saturating) saturating_lines(out, analysis);
  kaplan_lines(out, analysis);
  forecast_lines(out, analysis);
  while (!out.empty() && out.back().empty()) out.pop_back();
  std::string text;
  for (const std::string& line : out) text += line + "\n";
  return text;
}

}  // namespace tiller::scaling
