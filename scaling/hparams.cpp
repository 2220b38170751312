#include "scaling/hparams.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "common/util/error.h"
#include "scaling/fit.h"

namespace tiller::scaling {
namespace {

bool positive_finite(double x) {
  return std::isfinite(x) && x > 0;
}

void check_options(const HparamOptions& options) {
  check(options.tolerance >= 0 && std::isfinite(options.tolerance),
        "scaling hparams: --tolerance must be a percentage >= 0");
  check(options.budget_tolerance >= 0 && std::isfinite(options.budget_tolerance),
        "scaling hparams: --budget-tolerance must be a percentage >= 0");
  check(options.bootstrap >= 0 && options.bootstrap <= 100000,
        "scaling hparams: --bootstrap must be in [0, 100000]");
  check(options.percentiles.low >= 0 && options.percentiles.low < options.percentiles.high &&
            options.percentiles.high <= 100,
        "scaling hparams: percentiles must satisfy 0 <= low < high <= 100");
  for (double c : options.predict_c)
    check(positive_finite(c), "scaling hparams: a --predict-c must be a positive number of FLOPs");
}

// Both laws of one set of points: log B and log eta against log C.
struct HparamLines {
  Line batch, lr;
};

// Fits the laws to the near-optimal points of every budget, each counted `weights` times when
// given (a resample), once otherwise. Nothing when the points span a single budget.
std::optional<HparamLines> fit_lines(const std::vector<HparamBudget>& budgets,
                                     const std::vector<std::vector<size_t>>* draws = nullptr) {
  std::vector<double> log_c, log_batch, log_lr;
  for (size_t k = 0; k < budgets.size(); ++k) {
    const HparamBudget& budget = budgets[k];
    auto add = [&](const HparamRun& run) {
      log_c.push_back(std::log(budget.compute));
      log_batch.push_back(std::log(run.batch));
      log_lr.push_back(std::log(run.lr));
    };
    if (draws)
      for (size_t i : (*draws)[k]) add(budget.near_optimal[i]);
    else
      for (const HparamRun& run : budget.near_optimal) add(run);
  }
  const std::optional<Line> batch = fit_line(log_c, log_batch), lr = fit_line(log_c, log_lr);
  if (!batch || !lr) return std::nullopt;
  return HparamLines{*batch, *lr};
}

std::string runs_word(size_t n) {
  return std::to_string(n) + (n == 1 ? " run" : " runs");
}

}  // namespace

HparamSource read_hparam_runs(const std::string& path, const HparamColumns& columns) {
  RunsColumns read;
  read.c = columns.c;
  read.loss = columns.loss;
  read.require_c = columns.require_c;
  read.extra = {columns.lr, columns.batch};
  const bool budget_column = !columns.budget.empty();
  if (budget_column) read.extra.push_back(columns.budget);
  const RunsTable table = read_runs(path, read);
  check(budget_column || table.has_c,
        path + ": no compute column '" + columns.c +
            "' (--c-col), nor N and D to derive C = 6ND; or name the budget with --budget-col");
  HparamSource source;
  source.source = table.source;
  source.budget_column = budget_column;
  for (const Run& run : table.runs)
    source.runs.push_back(
        {budget_column ? run.extra[2] : run.c, run.extra[1], run.extra[0], run.loss, run.line});
  return source;
}

namespace {

// Runs at the same batch and lr as one point each: the first run's, with the mean loss.
std::vector<HparamRun> averaged_repeats(const std::vector<HparamRun>& runs) {
  std::vector<HparamRun> points;
  for (const HparamRun& run : runs) {
    const auto same = std::find_if(points.begin(), points.end(), [&](const HparamRun& p) {
      return p.batch == run.batch && p.lr == run.lr;
    });
    if (same == points.end()) {
      points.push_back(run);
      continue;
    }
    ++same->repeats;
    same->loss += (run.loss - same->loss) / same->repeats;
  }
  return points;
}

}  // namespace

std::vector<HparamBudget> group_budgets(std::vector<HparamRun> runs, double budget_tolerance,
                                        double tolerance, bool average_repeats) {
  std::stable_sort(runs.begin(), runs.end(),
                   [](const HparamRun& x, const HparamRun& y) { return x.compute < y.compute; });
  std::vector<std::vector<HparamRun>> groups;
  for (const HparamRun& run : runs) {
    if (groups.empty() ||
        run.compute > groups.back().front().compute * (1 + budget_tolerance / 100))
      groups.emplace_back();
    groups.back().push_back(run);
  }
  std::vector<HparamBudget> budgets;
  for (std::vector<HparamRun>& group : groups) {
    std::sort(group.begin(), group.end(),
              [](const HparamRun& x, const HparamRun& y) { return x.line < y.line; });
    HparamBudget budget;
    budget.runs = group.size();
    double log_sum = 0;
    for (const HparamRun& run : group) log_sum += std::log(run.compute);
    const auto [low, high] = std::minmax_element(
        group.begin(), group.end(),
        [](const HparamRun& x, const HparamRun& y) { return x.compute < y.compute; });
    budget.compute = low->compute == high->compute
                         ? low->compute  // exact, e.g. a budget column's value
                         : std::exp(log_sum / group.size());
    budget.points = average_repeats ? averaged_repeats(group) : group;
    budget.min_loss = budget.points.front().loss;
    for (const HparamRun& point : budget.points)
      budget.min_loss = std::min(budget.min_loss, point.loss);
    for (const HparamRun& point : budget.points)
      if (point.loss <= budget.min_loss * (1 + tolerance / 100))
        budget.near_optimal.push_back(point);
    budgets.push_back(budget);
  }
  return budgets;
}

HparamAnalysis analyze_hparams(const HparamSource& source, const HparamOptions& options) {
  check_options(options);
  HparamAnalysis analysis;
  analysis.source = source.source;
  analysis.runs_read = source.runs.size();
  analysis.tolerance = options.tolerance;
  analysis.budget_tolerance = source.budget_column ? 0 : options.budget_tolerance;
  analysis.resamples = options.bootstrap;
  analysis.seed = options.seed;
  analysis.percentiles = options.percentiles;
  analysis.average_repeats = options.average_repeats;
  analysis.budgets = group_budgets(source.runs, analysis.budget_tolerance, options.tolerance,
                                   options.average_repeats);
  const size_t count = analysis.budgets.size();
  check(count >= 2,
        source.source + ": the runs span " + std::to_string(count) + " compute budget" +
            (count == 1 ? "" : "s") + "; the fit needs at least 2 (" +
            (source.budget_column ? std::string("distinct values of --budget-col")
                                  : "runs whose C differ by more than --budget-tolerance " +
                                        format_value("%g", analysis.budget_tolerance) + "%") +
            ")");
  for (const HparamBudget& b : analysis.budgets) analysis.points_used += b.near_optimal.size();
  const HparamLines full = *fit_lines(analysis.budgets);

  // Resamples: within each budget, its near-optimal runs drawn with replacement, all drawn from
  // one seeded generator. Every budget stays in every resample, so every refit has a slope.
  std::mt19937_64 rng(options.seed);
  std::vector<HparamLines> refits;
  for (int r = 0; r < options.bootstrap; ++r) {
    std::vector<std::vector<size_t>> draws(count);
    for (size_t k = 0; k < count; ++k)
      for (size_t i = 0; i < analysis.budgets[k].near_optimal.size(); ++i)
        draws[k].push_back(draw_index(rng, analysis.budgets[k].near_optimal.size()));
    refits.push_back(*fit_lines(analysis.budgets, &draws));
  }
  auto interval = [&](double (*quantity)(const HparamLines&)) {
    return interval_of(quantity(full), refits, quantity, options.percentiles);
  };
  analysis.k_batch = interval([](const HparamLines& l) { return std::exp(l.batch.intercept); });
  analysis.b = interval([](const HparamLines& l) { return l.batch.slope; });
  analysis.k_lr = interval([](const HparamLines& l) { return std::exp(l.lr.intercept); });
  analysis.e = interval([](const HparamLines& l) { return l.lr.slope; });
  for (double c : options.predict_c) {
    HparamForecast forecast;
    forecast.compute = c;
    const double log_c = std::log(c);
    auto at = [&](const Line& line) { return std::exp(line.at(log_c)); };
    forecast.batch = interval_of(
        at(full.batch), refits, [&](const HparamLines& l) { return at(l.batch); },
        options.percentiles);
    forecast.lr = interval_of(
        at(full.lr), refits, [&](const HparamLines& l) { return at(l.lr); }, options.percentiles);
    analysis.forecasts.push_back(forecast);
  }
  return analysis;
}

nlohmann::json to_json(const HparamAnalysis& analysis) {
  nlohmann::json j;
  j["source"] = analysis.source;
  j["runs_read"] = analysis.runs_read;
  j["points_used"] = analysis.points_used;
  j["tolerance_percent"] = analysis.tolerance;
  j["average_repeats"] = analysis.average_repeats;
  j["budget_tolerance_percent"] = analysis.budget_tolerance;
  j["k_B"] = interval_json(analysis.k_batch);
  j["b"] = interval_json(analysis.b);
  j["k_eta"] = interval_json(analysis.k_lr);
  j["e"] = interval_json(analysis.e);
  j["budgets"] = nlohmann::json::array();
  for (const HparamBudget& b : analysis.budgets) {
    nlohmann::json points = nlohmann::json::array();
    for (const HparamRun& run : b.near_optimal)
      points.push_back({{"line", run.line},
                        {"C", run.compute},
                        {"batch", run.batch},
                        {"lr", run.lr},
                        {"loss", run.loss},
                        {"repeats", run.repeats}});
    j["budgets"].push_back({{"C", b.compute},
                            {"runs", b.runs},
                            {"points", b.points.size()},
                            {"min_loss", b.min_loss},
                            {"near_optimal", points}});
  }
  j["forecasts"] = nlohmann::json::array();
  for (const HparamForecast& f : analysis.forecasts)
    j["forecasts"].push_back(
        {{"C", f.compute}, {"B_opt", interval_json(f.batch)}, {"eta_opt", interval_json(f.lr)}});
  j["bootstrap"] = bootstrap_json(analysis.resamples, analysis.seed, analysis.percentiles);
  return j;
}

std::string format_report(const HparamAnalysis& analysis) {
  std::string out;
  auto line = [&out](const std::string& s) { out += s + "\n"; };
  line("Hyperparameter scaling (DeepSeek LLM)  B_opt = k_B C^b,  eta_opt = k_eta C^e");
  line("  " + std::to_string(analysis.points_used) + " near-optimal of " +
       runs_word(analysis.runs_read) + " in " + analysis.source + ", " +
       std::to_string(analysis.budgets.size()) + " compute budgets; near-optimal: loss within " +
       format_value("%g", analysis.tolerance) + "% of the budget's lowest");
  if (analysis.average_repeats)
    line(
        "  runs of one budget at the same batch and lr are one point, their mean loss "
        "(--average-repeats); near-opt counts points");
  line("  " + interval_note(analysis.resamples, analysis.seed, analysis.percentiles,
                            "each budget's near-optimal runs"));
  line("");
  line("  " + pad("C", 10) + pad("runs", 6) + pad("lowest loss", 13) + pad("near-opt", 10) + "  " +
       pad_right("batch", 24) + "lr");
  for (const HparamBudget& b : analysis.budgets) {
    double batch_low = HUGE_VAL, batch_high = 0, lr_low = HUGE_VAL, lr_high = 0;
    for (const HparamRun& run : b.near_optimal) {
      batch_low = std::min(batch_low, run.batch);
      batch_high = std::max(batch_high, run.batch);
      lr_low = std::min(lr_low, run.lr);
      lr_high = std::max(lr_high, run.lr);
    }
    auto range = [](double low, double high) {
      return low == high ? format_value("%.4g", low)
                         : format_value("%.4g", low) + " - " + format_value("%.4g", high);
    };
    line("  " + pad(format_value("%.4g", b.compute), 10) + pad(std::to_string(b.runs), 6) +
         pad(format_value("%.5g", b.min_loss), 13) +
         pad(std::to_string(b.near_optimal.size()), 10) + "  " +
         pad_right(range(batch_low, batch_high), 24) + range(lr_low, lr_high));
  }
  line("");
  const std::pair<const char*, const Interval*> parameters[] = {{"k_B", &analysis.k_batch},
                                                                {"b", &analysis.b},
                                                                {"k_eta", &analysis.k_lr},
                                                                {"e", &analysis.e}};
  for (const auto& [name, interval] : parameters)
    line("  " + pad_right(name, 8) + with_bounds("%.5g", *interval));
  if (!analysis.forecasts.empty()) line("");
  for (const HparamForecast& f : analysis.forecasts)
    line("Forecast at C = " + format_value("%.4g", f.compute) + ":  B_opt = " +
         with_bounds("%.4g", f.batch) + ",  eta_opt = " + with_bounds("%.4g", f.lr));
  return out;
}

}  // namespace tiller::scaling
