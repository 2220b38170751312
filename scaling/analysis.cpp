#include "scaling/analysis.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>
#include <set>

#include "common/util/error.h"
#include "scaling/parallel.h"

namespace tiller::scaling {
namespace {

constexpr size_t kMinRuns = 6;  // one more than the Chinchilla law has parameters

bool positive_finite(double x) {
  return std::isfinite(x) && x > 0;
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

size_t distinct_count(const std::vector<double>& values) {
  return std::set<double>(values.begin(), values.end()).size();
}

struct KaplanVariable {
  std::string name;
  double Run::*quantity;
};

void check_options(const ScalingOptions& options) {
  check(options.exclude_highest_loss >= 0, "scaling fit: --exclude-highest-loss must be >= 0");
  check(options.bootstrap >= 0 && options.bootstrap <= 100000,
        "scaling fit: --bootstrap must be in [0, 100000]");
  check(options.percentiles.low >= 0 && options.percentiles.low < options.percentiles.high &&
            options.percentiles.high <= 100,
        "scaling fit: percentiles must satisfy 0 <= low < high <= 100");
  for (double c : options.budgets)
    check(positive_finite(c), "scaling fit: a --budget must be a positive number of FLOPs");
  check(options.predict_n.has_value() == options.predict_d.has_value(),
        "scaling fit: --predict-n and --predict-d go together");
  if (options.predict_n)
    check(positive_finite(*options.predict_n) && positive_finite(*options.predict_d),
          "scaling fit: --predict-n and --predict-d must be positive");
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
  check(excluded + kMinRuns <= table.runs.size(),
        "scaling fit: " + std::to_string(table.runs.size()) + " runs, " + std::to_string(excluded) +
            " excluded: the fit needs at least " + std::to_string(kMinRuns));
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

// A Kaplan power law L(X) for each of N, D, C the table has, fitted on all the runs.
struct KaplanFits {
  std::vector<KaplanVariable> variables;
  std::vector<std::vector<double>> log_x;  // per variable
  std::vector<std::optional<PowerLaw>> full;
};

KaplanFits fit_kaplan_laws(const RunsTable& table, const std::vector<Run>& runs,
                           const std::vector<double>& log_loss) {
  KaplanFits fits;
  if (table.has_n) fits.variables.push_back({"N", &Run::n});
  if (table.has_d) fits.variables.push_back({"D", &Run::d});
  if (table.has_c) fits.variables.push_back({"C", &Run::c});
  for (const KaplanVariable& v : fits.variables) {
    fits.log_x.push_back(log_of(runs, v.quantity));
    fits.full.push_back(fit_power_law(fits.log_x.back(), log_loss));
  }
  return fits;
}

// The fits refitted on each bootstrap resample: laws[r], kaplan[variable][r].
struct BootstrapRefits {
  std::vector<LossLaw> laws;
  std::vector<std::vector<std::optional<PowerLaw>>> kaplan;
};

// Refits on runs drawn with replacement. Every resample is drawn up front from one seeded
// generator, so the intervals do not depend on the thread count. Each refit starts from the full
// fit's optimum and from the grid point that led there, not from the whole grid: the interval
// describes the spread of that optimum, and it keeps 200 refits to a second or so.
BootstrapRefits refit_bootstrap_resamples(const Observations& observations,
                                          const std::vector<std::vector<double>>& log_x,
                                          const ChinchillaFit& full_fit,
                                          const ScalingOptions& options) {
  const size_t run_count = observations.log_n.size();
  std::mt19937_64 rng(options.seed);
  std::vector<std::vector<size_t>> draws(options.bootstrap);
  for (auto& draw : draws)
    for (size_t i = 0; i < run_count; ++i) draw.push_back(draw_index(rng, run_count));
  BootstrapRefits refits;
  refits.laws.resize(draws.size());
  refits.kaplan.assign(log_x.size(), std::vector<std::optional<PowerLaw>>(draws.size()));
  ChinchillaFitOptions refit = options.fit;
  refit.threads = 1;  // the resamples are the parallel loop
  parallel_for(draws.size(), options.fit.threads, [&](size_t r) {
    Observations sample;
    std::vector<std::vector<double>> sample_log_x(log_x.size());
    for (size_t i : draws[r]) {
      sample.log_n.push_back(observations.log_n[i]);
      sample.log_d.push_back(observations.log_d[i]);
      sample.log_loss.push_back(observations.log_loss[i]);
      for (size_t v = 0; v < log_x.size(); ++v) sample_log_x[v].push_back(log_x[v][i]);
    }
    refits.laws[r] = fit_chinchilla(sample, {full_fit.parameters, full_fit.start}, refit).law;
    for (size_t v = 0; v < log_x.size(); ++v)
      refits.kaplan[v][r] = fit_power_law(sample_log_x[v], sample.log_loss);
  });
  return refits;
}

// A quantity of the fitted law, bounded by the percentiles of that quantity over the refits.
class LawIntervals {
 public:
  LawIntervals(const LossLaw& law, const std::vector<LossLaw>& resampled,
               const PercentileRange& percentiles)
      : law_(law), resampled_(resampled), percentiles_(percentiles) {}

  Interval operator()(const std::function<double(const LossLaw&)>& quantity) const {
    return interval_of(quantity(law_), resampled_, quantity, percentiles_);
  }

 private:
  const LossLaw& law_;
  const std::vector<LossLaw>& resampled_;
  const PercentileRange& percentiles_;
};

void set_law_parameter_intervals(ScalingAnalysis& analysis, const LawIntervals& law_interval) {
  analysis.E = law_interval([](const LossLaw& l) { return l.E; });
  analysis.A = law_interval([](const LossLaw& l) { return l.A; });
  analysis.B = law_interval([](const LossLaw& l) { return l.B; });
  analysis.alpha = law_interval([](const LossLaw& l) { return l.alpha; });
  analysis.beta = law_interval([](const LossLaw& l) { return l.beta; });
  analysis.a = law_interval([](const LossLaw& l) { return l.n_exponent(); });
  analysis.b = law_interval([](const LossLaw& l) { return l.d_exponent(); });
  analysis.G = law_interval([](const LossLaw& l) { return l.G(); });
}

// The compute-optimal allocation at the default budgets and the asked ones, by increasing budget.
std::vector<BudgetAllocation> compute_optimal_allocations(const std::vector<double>& asked_budgets,
                                                          const LawIntervals& law_interval) {
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

LossForecast loss_forecast(double n, double d, const LawIntervals& law_interval) {
  LossForecast forecast;
  forecast.n = n;
  forecast.d = d;
  forecast.loss = law_interval([&](const LossLaw& l) { return l.loss(forecast.n, forecast.d); });
  return forecast;
}

// The Kaplan laws with bootstrap intervals; a variable constant across the runs is named in
// kaplan_skipped instead.
void add_kaplan_laws(ScalingAnalysis& analysis, const KaplanFits& fits,
                     const BootstrapRefits& refits, const PercentileRange& percentiles) {
  for (size_t v = 0; v < fits.variables.size(); ++v) {
    if (!fits.full[v]) {
      analysis.kaplan_skipped.push_back(fits.variables[v].name);
      continue;
    }
    std::vector<PowerLaw> samples;
    for (const auto& fitted : refits.kaplan[v])
      if (fitted) samples.push_back(*fitted);  // a draw of runs that all share one X says nothing
    KaplanLaw kaplan;
    kaplan.variable = fits.variables[v].name;
    kaplan.alpha = interval_of(
        fits.full[v]->alpha, samples, [](const PowerLaw& p) { return p.alpha; }, percentiles);
    kaplan.x_c = interval_of(
        fits.full[v]->x_c, samples, [](const PowerLaw& p) { return p.x_c; }, percentiles);
    analysis.kaplan.push_back(kaplan);
  }
}

}  // namespace

ScalingAnalysis analyze_runs(const RunsTable& table, const ScalingOptions& options) {
  check_options(options);
  check(table.has_n && table.has_d,
        table.source +
            ": the Chinchilla fit needs N and D for every run (columns for two of N, "
            "D and C; see --n-col, --d-col, --c-col)");
  ScalingAnalysis analysis = analysis_settings(table, options);
  const std::vector<Run> runs = runs_without_highest_loss(
      table, static_cast<size_t>(options.exclude_highest_loss), analysis.excluded_lines);
  analysis.runs_used = runs.size();

  const Observations observations = observations_of(runs);
  check(distinct_count(observations.log_n) >= 2 && distinct_count(observations.log_d) >= 2,
        table.source +
            ": the Chinchilla fit needs runs of at least two sizes N and two token "
            "counts D");
  const std::vector<ChinchillaParameters> grid = chinchilla_grid();
  analysis.grid_starts = grid.size();
  analysis.fit = fit_chinchilla(observations, grid, options.fit);
  const KaplanFits kaplan = fit_kaplan_laws(table, runs, observations.log_loss);

  const BootstrapRefits refits =
      refit_bootstrap_resamples(observations, kaplan.log_x, analysis.fit, options);
  const LawIntervals law_interval(analysis.fit.law, refits.laws, options.percentiles);
  set_law_parameter_intervals(analysis, law_interval);
  analysis.compute_optimal = compute_optimal_allocations(options.budgets, law_interval);
  if (options.predict_n)
    analysis.forecast = loss_forecast(*options.predict_n, *options.predict_d, law_interval);
  add_kaplan_laws(analysis, kaplan, refits, options.percentiles);
  return analysis;
}

// ---------------------------------------------------------------------------------------------
// Presentation

namespace {}  // namespace

nlohmann::json to_json(const ScalingAnalysis& analysis) {
  nlohmann::json j;
  j["source"] = analysis.source;
  j["runs_read"] = analysis.runs_read;
  j["runs_used"] = analysis.runs_used;
  j["runs_excluded"] = analysis.excluded_lines.size();
  j["excluded_lines"] = analysis.excluded_lines;
  j["E"] = interval_json(analysis.E);
  j["A"] = interval_json(analysis.A);
  j["B"] = interval_json(analysis.B);
  j["alpha"] = interval_json(analysis.alpha);
  j["beta"] = interval_json(analysis.beta);
  j["a"] = interval_json(analysis.a);
  j["b"] = interval_json(analysis.b);
  j["G"] = interval_json(analysis.G);
  j["objective"] = analysis.fit.objective;
  j["huber_delta"] = analysis.huber_delta;
  j["grid_starts"] = analysis.grid_starts;
  j["compute_optimal"] = nlohmann::json::array();
  for (const BudgetAllocation& c : analysis.compute_optimal) {
    j["compute_optimal"].push_back(
        {{"C", c.compute},
         {"N_opt", number_or_null(c.n_opt.value)},
         {"D_opt", number_or_null(c.d_opt.value)},
         {"tokens_per_parameter", number_or_null(c.tokens_per_parameter.value)},
         {"loss", number_or_null(c.loss.value)},
         {"interval",
          {{"N_opt", bounds_json(c.n_opt)},
           {"D_opt", bounds_json(c.d_opt)},
           {"tokens_per_parameter", bounds_json(c.tokens_per_parameter)},
           {"loss", bounds_json(c.loss)}}}});
  }
  j["kaplan"] = nlohmann::json::object();
  for (const KaplanLaw& k : analysis.kaplan)
    j["kaplan"][k.variable] = {{"alpha", interval_json(k.alpha)}, {"X_c", interval_json(k.x_c)}};
  if (analysis.forecast) {
    const LossForecast& f = *analysis.forecast;
    j["forecast"] = {{"N", f.n}, {"D", f.d}, {"C", 6 * f.n * f.d}, {"loss", interval_json(f.loss)}};
  }
  j["bootstrap"] = bootstrap_json(analysis.resamples, analysis.seed, analysis.percentiles);
  return j;
}

std::string format_report(const ScalingAnalysis& analysis) {
  std::string out;
  auto line = [&out](const std::string& s) { out += s + "\n"; };

  line("Chinchilla fit  L(N, D) = E + A/N^alpha + B/D^beta");
  line("  " + std::to_string(analysis.runs_used) + " of " + std::to_string(analysis.runs_read) +
       " runs in " + analysis.source +
       (analysis.excluded_lines.empty()
            ? ""
            : " (" + std::to_string(analysis.excluded_lines.size()) + " highest-loss left out)"));
  line("  Huber objective " + format_value("%.6g", analysis.fit.objective) + " (delta " +
       format_value("%g", analysis.huber_delta) + " on log L), lowest of " +
       std::to_string(analysis.grid_starts) + " L-BFGS starts");
  line("  " + interval_note(analysis.resamples, analysis.seed, analysis.percentiles, "the runs"));
  line("");
  const std::pair<const char*, const Interval*> parameters[] = {
      {"E", &analysis.E},
      {"A", &analysis.A},
      {"B", &analysis.B},
      {"alpha", &analysis.alpha},
      {"beta", &analysis.beta},
      {"a = beta/(alpha+beta)", &analysis.a},
      {"b = alpha/(alpha+beta)", &analysis.b},
      {"G", &analysis.G}};
  for (const auto& [name, interval] : parameters)
    line("  " + pad_right(name, 24) + with_bounds("%.5g", *interval));
  line("");

  line("Compute-optimal allocation  N_opt = G (C/6)^a,  D_opt = (C/6)^b / G");
  line("  " + pad("C", 8) + pad("N_opt", 12) + pad("D_opt", 12) + "  " +
       pad_right("tokens/parameter", 30) + "loss");
  for (const BudgetAllocation& c : analysis.compute_optimal)
    line("  " + pad(format_value("%.3g", c.compute), 8) +
         pad(format_value("%.4g", c.n_opt.value), 12) +
         pad(format_value("%.4g", c.d_opt.value), 12) + "  " +
         pad_right(with_bounds("%.4g", c.tokens_per_parameter), 30) + with_bounds("%.4g", c.loss));
  line("");

  line("Kaplan power laws  L(X) = (X_c / X)^alpha_X  (least squares on log L)");
  for (const KaplanLaw& k : analysis.kaplan)
    line("  " + k.variable + ": alpha_" + k.variable + " = " +
         pad_right(with_bounds("%.4g", k.alpha), 30) + k.variable +
         "_c = " + with_bounds("%.4g", k.x_c));
  for (const std::string& v : analysis.kaplan_skipped)
    line("  " + v + ": not fitted (every run has the same " + v + ")");
  if (analysis.kaplan.empty() && analysis.kaplan_skipped.empty()) line("  (no N, D or C column)");

  if (analysis.forecast) {
    const LossForecast& f = *analysis.forecast;
    line("");
    line("Forecast  L(N = " + format_value("%.4g", f.n) + ", D = " + format_value("%.4g", f.d) +
         ") = " + with_bounds("%.4g", f.loss) + "  (C = " + format_value("%.3g", 6 * f.n * f.d) +
         ")");
  }
  return out;
}

}  // namespace tiller::scaling
