#include "report/scaling_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "common/util/error.h"
#include "common/util/files.h"
#include "report/svg_chart.h"
#include "scaling/hparams.h"

namespace tiller {
namespace {

using scaling::Run;

constexpr int kCurvePoints = 64;
constexpr size_t kMaxCurves = 4;  // more distinct values than this: one curve, at the median
constexpr double kLevelTolerance = 0.01;  // values within 1% are one level

std::string short_number(double x) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.3g", x);
  return buffer;
}

// The distinct values (within kLevelTolerance of the first of a cluster), each cluster's
// geometric mean, ascending; the median value alone when there are more than kMaxCurves.
std::vector<double> curve_levels(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  std::vector<std::vector<double>> clusters;
  for (double v : values) {
    if (clusters.empty() || v > clusters.back().front() * (1 + kLevelTolerance))
      clusters.emplace_back();
    clusters.back().push_back(v);
  }
  if (clusters.size() > kMaxCurves) return {values[values.size() / 2]};
  std::vector<double> levels;
  for (const auto& cluster : clusters) {
    double log_sum = 0;
    for (double v : cluster) log_sum += std::log(v);
    levels.push_back(std::exp(log_sum / cluster.size()));
  }
  return levels;
}

// A line series of f over kCurvePoints log-spaced x in [low, high].
ChartSeries curve(const std::string& name, double low, double high,
                  const std::function<double(double)>& f) {
  ChartSeries series;
  series.name = name;
  for (int i = 0; i < kCurvePoints; ++i) {
    const double x =
        low * std::pow(high / low, static_cast<double>(i) / static_cast<double>(kCurvePoints - 1));
    series.x.push_back(x);
    series.y.push_back(f(x));
  }
  return series;
}

// The source lines of the runs the fit left out.
std::set<int64_t> excluded_lines(const scaling::ScalingAnalysis* analysis) {
  if (!analysis) return {};
  return {analysis->excluded_lines.begin(), analysis->excluded_lines.end()};
}

// One quantity of the runs on the x axis: the runs the fit used, those it left out, the held-out
// run, the fitted curves, the forecasts.
struct ChartAxis {
  const char* chart;  // loss_vs_N
  const char* title;
  const char* label;
  double Run::*quantity;
};

// A forecast drawn on one chart: a point with its interval as an error bar.
struct ChartForecast {
  std::string name;
  double x = NAN;
  scaling::Interval loss;
};

std::string render_chart(const scaling::RunsTable& table, const scaling::ScalingAnalysis* analysis,
                         const ChartAxis& axis,
                         const std::function<std::vector<ChartSeries>(double, double)>& curves,
                         const std::vector<ChartForecast>& forecasts) {
  const std::set<int64_t> excluded = excluded_lines(analysis);
  const int64_t held_out_line = analysis && analysis->held_out ? analysis->held_out->line : -1;
  ChartSeries used{"runs", {}, {}, SeriesStyle::kMarkers, {}, {}};
  ChartSeries left_out{"left out of the fit", {}, {}, SeriesStyle::kHollowMarkers, {}, {}};
  ChartSeries held_out{"held out (forecast target)", {}, {}, SeriesStyle::kHollowMarkers, {}, {}};
  double low = HUGE_VAL, high = 0;
  for (const Run& run : table.runs) {
    ChartSeries& series = run.line == held_out_line  ? held_out
                          : excluded.count(run.line) ? left_out
                                                     : used;
    series.x.push_back(run.*axis.quantity);
    series.y.push_back(run.loss);
    low = std::min(low, run.*axis.quantity);
    high = std::max(high, run.*axis.quantity);
  }
  for (const ChartForecast& f : forecasts) {
    low = std::min(low, f.x);
    high = std::max(high, f.x);
  }
  std::vector<ChartSeries> series = {used};
  if (!left_out.x.empty()) series.push_back(left_out);
  if (!held_out.x.empty()) series.push_back(held_out);
  if (analysis)
    for (ChartSeries& c : curves(low, high)) series.push_back(std::move(c));
  for (const ChartForecast& f : forecasts)  // no bar without a bootstrap (NaN bounds)
    series.push_back(
        {f.name, {f.x}, {f.loss.value}, SeriesStyle::kMarkers, {f.loss.low}, {f.loss.high}});
  ChartOptions options;
  options.title = axis.title;
  options.x_label = axis.label;
  options.log_x = true;
  options.attributes = {{"data-chart", axis.chart}};
  return render_line_chart(series, options);
}

// The values of a quantity over the runs the fit used.
std::vector<double> values_of(const scaling::RunsTable& table,
                              const scaling::ScalingAnalysis& analysis, double Run::*quantity) {
  const std::set<int64_t> excluded = excluded_lines(&analysis);
  std::vector<double> values;
  for (const Run& run : table.runs)
    if (!excluded.count(run.line) && !(analysis.held_out && analysis.held_out->line == run.line))
      values.push_back(run.*quantity);
  return values;
}

// The curves of L(N, D) along one variable, the other held at each of `levels`.
// A two-variable law's curves along N (or D) at each level of the other variable.
std::vector<ChartSeries> law_curves(const std::string& prefix,
                                    const std::function<double(double n, double d)>& loss,
                                    std::vector<double> levels, const char* held, bool along_n,
                                    double low, double high) {
  std::sort(levels.begin(), levels.end());
  levels.erase(std::unique(levels.begin(), levels.end()), levels.end());
  std::vector<ChartSeries> series;
  for (double level : levels)
    series.push_back(curve(prefix + " at " + held + " = " + short_number(level), low, high,
                           [&](double x) { return along_n ? loss(x, level) : loss(level, x); }));
  return series;
}

std::string html_number(double x) {
  return xml_escape(scaling::format_value("%.4g", x));
}

// The chart along one of N, D, C: the main law's curves (Chinchilla's along N and D at the runs'
// levels of the other, its compute-optimal frontier along C; the saturating law along its
// variable), Kaplan's power law of that variable, and the forecasts of the laws drawn.
std::string render_variable_chart(const scaling::RunsTable& table,
                                  const scaling::ScalingAnalysis* analysis, const ChartAxis& axis,
                                  const std::string& variable) {
  std::vector<ChartForecast> forecasts;
  const scaling::KaplanLaw* kaplan = nullptr;
  const scaling::LawForecast* chinchilla_forecast = nullptr;
  const scaling::LawForecast* kaplan_joint_forecast = nullptr;
  if (analysis) {
    for (const scaling::KaplanLaw& k : analysis->kaplan)
      if (k.variable == variable) kaplan = &k;
    for (const scaling::LawForecast& f : analysis->forecasts) {
      if (f.law == "chinchilla") chinchilla_forecast = &f;
      if (f.law == "kaplan_ND") kaplan_joint_forecast = &f;
      // Chinchilla's forecast sits on its compute-optimal chart at C = 6ND.
      const double c = f.law == "chinchilla" ? 6 * f.n * f.d : f.c;
      const double x = variable == "N" ? f.n : variable == "D" ? f.d : c;
      // Kaplan's L(N, D) is drawn along N and D only (it has no compute-optimal frontier).
      if (!std::isfinite(x) || (f.law == "kaplan_ND" && variable == "C")) continue;
      const bool main = f.law == "chinchilla" || f.law == "saturating";
      forecasts.push_back(
          {main ? "forecast" : "forecast (" + scaling::law_name(*analysis, f.law) + ")", x,
           f.loss});
    }
  }
  // The levels of the variable held fixed along the chart: the runs' distinct values.
  auto run_levels = [&](bool along_n) {
    return curve_levels(values_of(table, *analysis, along_n ? &Run::d : &Run::n));
  };
  auto curves = [&](double low, double high) {
    std::vector<ChartSeries> series;
    if (const auto& c = analysis->chinchilla) {
      if (variable == "C") {
        series.push_back(curve("compute-optimal L(N_opt(C), D_opt(C))", low, high,
                               [&](double x) { return c->fit.law.compute_optimal(x).loss; }));
      } else {
        const bool along_n = variable == "N";
        std::vector<double> levels = run_levels(along_n);
        if (chinchilla_forecast)
          levels.push_back(along_n ? chinchilla_forecast->d : chinchilla_forecast->n);
        for (ChartSeries& s : law_curves(
                 "fit", [&](double n, double d) { return c->fit.law.loss(n, d); }, levels,
                 along_n ? "D" : "N", along_n, low, high))
          series.push_back(std::move(s));
      }
    }
    if (const auto& k = analysis->kaplan_joint)
      if (variable != "C") {
        const bool along_n = variable == "N";
        std::vector<double> levels = run_levels(along_n);
        if (kaplan_joint_forecast)
          levels.push_back(along_n ? kaplan_joint_forecast->d : kaplan_joint_forecast->n);
        for (ChartSeries& s : law_curves(
                 "Kaplan L(N, D)", [&](double n, double d) { return k->fit.law.loss(n, d); },
                 levels, along_n ? "D" : "N", along_n, low, high))
          series.push_back(std::move(s));
      }
    if (const auto& s = analysis->saturating)
      if (s->variable == variable)
        series.push_back(curve("fit " + scaling::law_name(*analysis, "saturating"), low, high,
                               [&](double x) { return s->fit.law.loss(x); }));
    if (kaplan)
      series.push_back(curve("Kaplan L(" + variable + ")", low, high,
                             [&](double x) { return kaplan->fit.loss(x); }));
    return series;
  };
  return render_chart(table, analysis, axis, curves, forecasts);
}

// "<td>value</td><td>[low, high]</td>" (a dash for no interval).
std::string interval_cells(const scaling::Interval& interval) {
  return "<td>" + html_number(interval.value) + "</td><td>" +
         (std::isfinite(interval.low)
              ? "[" + html_number(interval.low) + ", " + html_number(interval.high) + "]"
              : "&ndash;") +
         "</td>";
}

std::string parameter_row(const std::string& name, const scaling::Interval& interval) {
  return "<tr><td>" + name + "</td>" + interval_cells(interval) + "</tr>";
}

// What was fitted and why, the main law's parameters, and Kaplan's laws, as HTML.
std::string render_fit_tables(const scaling::ScalingAnalysis& analysis) {
  std::string out = "<ul class=\"notes\">";
  for (const std::string& note : analysis.notes) out += "<li>" + xml_escape(note) + "</li>";
  out += "</ul><p class=\"muted\">" + std::to_string(analysis.runs_used) + " runs; " +
         xml_escape(scaling::interval_note(analysis.resamples, analysis.seed, analysis.percentiles,
                                           "the runs")) +
         " (<code>tiller scaling fit</code> for more).</p>";
  const std::string header = "<tr><th>parameter</th><th>value</th><th>interval</th></tr>";
  if (const auto& c = analysis.chinchilla) {
    out += "<h3>Chinchilla fit L(N, D) = E + A/N<sup>&alpha;</sup> + B/D<sup>&beta;</sup></h3>";
    out += "<table class=\"fit\">" + header;
    const std::pair<const char*, const scaling::Interval*> parameters[] = {
        {"E", &c->E},
        {"A", &c->A},
        {"B", &c->B},
        {"&alpha;", &c->alpha},
        {"&beta;", &c->beta},
        {"a = &beta;/(&alpha;+&beta;)", &c->a},
        {"b = &alpha;/(&alpha;+&beta;)", &c->b}};
    for (const auto& [name, interval] : parameters) out += parameter_row(name, *interval);
    out += "</table>";
  }
  if (const auto& s = analysis.saturating) {
    const bool along_n = s->variable == "N";
    out += "<h3>" + xml_escape(scaling::law_name(analysis, "saturating")) + "</h3>";
    out += "<table class=\"fit\">" + header + parameter_row("E", s->E) +
           parameter_row(along_n ? "A" : "B", s->A) +
           parameter_row(along_n ? "&alpha;" : "&beta;", s->alpha) + "</table>";
  }
  if (!analysis.kaplan.empty() || analysis.kaplan_joint) {
    out +=
        "<h3>Kaplan power laws</h3><table class=\"kaplan\"><tr><th>law</th><th>exponent</th>"
        "<th>interval</th><th>scale</th><th>interval</th></tr>";
    auto row = [&](const std::string& law, const scaling::Interval& exponent,
                   const scaling::Interval& scale) {
      out +=
          "<tr><td>" + law + "</td>" + interval_cells(exponent) + interval_cells(scale) + "</tr>";
    };
    for (const scaling::KaplanLaw& k : analysis.kaplan)
      row("L(" + k.variable + ") = (" + k.variable + "<sub>c</sub>/" + k.variable +
              ")<sup>&alpha;</sup>",
          k.alpha, k.x_c);
    if (const auto& k = analysis.kaplan_joint) {
      row("L(N, D): N term", k->alpha_n, k->n_c);
      row("L(N, D): D term", k->alpha_d, k->d_c);
    }
    out += "</table>";
  }
  return out;
}

}  // namespace

ScalingCharts render_scaling_charts(const scaling::RunsTable& table,
                                    const scaling::ScalingAnalysis* analysis) {
  // A variable the table lacks, or the same in every run, has no chart: its runs would be one
  // vertical line of points.
  auto drawn = [&](bool has, double Run::*quantity) {
    return has && !scaling::is_constant(table.runs, quantity);
  };
  ScalingCharts charts;
  if (drawn(table.has_n, &Run::n))
    charts.loss_vs_n = render_variable_chart(
        table, analysis, {"loss_vs_N", "Loss against parameters N", "parameters N", &Run::n}, "N");
  if (drawn(table.has_d, &Run::d))
    charts.loss_vs_d = render_variable_chart(
        table, analysis, {"loss_vs_D", "Loss against training tokens D", "tokens D", &Run::d}, "D");
  if (drawn(table.has_c, &Run::c))
    charts.loss_vs_c = render_variable_chart(
        table, analysis, {"loss_vs_C", "Loss against compute C", "compute C (FLOPs)", &Run::c},
        "C");
  return charts;
}

std::vector<std::string> write_scaling_charts(const ScalingCharts& charts, const std::string& dir) {
  make_directories(dir);
  std::vector<std::string> paths;
  for (const auto& [name, svg] :
       {std::pair<const char*, const std::string*>{"loss_vs_N", &charts.loss_vs_n},
        {"loss_vs_D", &charts.loss_vs_d},
        {"loss_vs_C", &charts.loss_vs_c}}) {
    if (svg->empty()) continue;  // the variable does not vary: no chart
    paths.push_back((std::filesystem::path(dir) / (std::string(name) + ".svg")).string());
    write_file_atomic(paths.back(), *svg + "\n");
  }
  return paths;
}

bool is_sweep_directory(const std::string& dir) {
  return path_exists(dir + "/runs.jsonl") && !path_exists(dir + "/recipe.json");
}

// The LR x batch grid of a sweep (DeepSeek LLM's laws, scaling/hparams.h), when its runs vary
// both at two or more budgets: the fitted laws with intervals, each budget's near-optimal runs
// (said when they sit at an edge of the budget's grid, where the law is not determined) and a
// chart of loss against lr, one line per budget and batch, the near-optimal runs marked. Runs of
// one budget at the same batch and lr (seeds) count as one point, their mean loss, as
// `tiller scaling hparams --average-repeats` does; the section says so when there are any.
std::string render_hparams_section(const std::string& runs_path) {
  scaling::HparamAnalysis fit;
  try {
    const scaling::HparamSource source = scaling::read_hparam_runs(runs_path);
    std::set<double> lrs, batches;
    for (const scaling::HparamRun& r : source.runs) {
      lrs.insert(r.lr);
      batches.insert(r.batch);
    }
    if (lrs.size() < 2 || batches.size() < 2) return "";
    scaling::HparamOptions options;
    options.average_repeats = true;
    fit = scaling::analyze_hparams(source, options);
  } catch (const Error&) {
    return "";  // no lr or batch column, or a single budget: not an LR x batch sweep
  }
  std::string out =
      "<h3>Batch size and learning rate (DeepSeek LLM, sec. 3.1)</h3><table class=\"hparams\">"
      "<tr><th>parameter</th><th>value</th><th>95% interval</th></tr>" +
      parameter_row("k_B", fit.k_batch) + parameter_row("b (B_opt = k_B C^b)", fit.b) +
      parameter_row("k_&eta;", fit.k_lr) + parameter_row("e (&eta;_opt = k_&eta; C^e)", fit.e) +
      "</table>";
  size_t runs = 0, points = 0;
  for (const scaling::HparamBudget& budget : fit.budgets) {
    runs += budget.runs;
    points += budget.points.size();
  }
  if (points < runs)
    out += "<p>" + std::to_string(runs) + " runs at " + std::to_string(points) +
           " (batch, lr) points: the repeats of a point (seeds) are averaged into one, their "
           "mean loss (as <code>tiller scaling hparams --average-repeats</code>).</p>";
  out +=
      "<table class=\"budgets\"><tr><th>C</th><th>runs</th><th>lowest loss</th>"
      "<th>near-optimal (batch tokens, lr), within " +
      html_number(fit.tolerance) + "%</th></tr>";
  ChartSeries near{"near-optimal", {}, {}, SeriesStyle::kMarkers};
  std::vector<ChartSeries> lines;
  for (const scaling::HparamBudget& budget : fit.budgets) {
    std::set<double> lrs, batches;
    std::map<double, std::map<double, double>> by_batch;  // batch -> lr -> loss
    for (const scaling::HparamRun& point : budget.points) {
      lrs.insert(point.lr);
      batches.insert(point.batch);
      by_batch[point.batch][point.lr] = point.loss;
    }
    std::string cells;
    bool at_edge = false;
    for (const scaling::HparamRun& r : budget.near_optimal) {
      cells += "(" + html_number(r.batch) + ", " + html_number(r.lr) +
               (r.repeats > 1 ? ", mean of " + std::to_string(r.repeats) : std::string()) + ") ";
      near.x.push_back(r.lr);
      near.y.push_back(r.loss);
      at_edge = at_edge || (!lrs.empty() && (r.lr == *lrs.begin() || r.lr == *lrs.rbegin())) ||
                (!batches.empty() && (r.batch == *batches.begin() || r.batch == *batches.rbegin()));
    }
    if (at_edge) cells += "<b>at an edge of the grid: the optimum may lie outside it</b>";
    const std::string run_count = std::to_string(budget.runs) +
                                  (budget.points.size() < budget.runs
                                       ? " (" + std::to_string(budget.points.size()) + " points)"
                                       : "");
    out += "<tr><td>" + html_number(budget.compute) + "</td><td>" + run_count + "</td><td>" +
           html_number(budget.min_loss) + "</td><td>" + cells + "</td></tr>";
    for (const auto& entry : by_batch) {
      ChartSeries line{
          "C " + short_number(budget.compute) + ", batch " + short_number(entry.first), {}, {}};
      for (const auto& point : entry.second) {  // by increasing lr
        line.x.push_back(point.first);
        line.y.push_back(point.second);
      }
      lines.push_back(std::move(line));
    }
  }
  out += "</table>";
  lines.push_back(std::move(near));
  ChartOptions options;
  options.title = "Final loss against the learning rate, per budget and batch";
  options.x_label = "learning rate";
  options.log_x = true;
  options.attributes = {{"data-chart", "loss_vs_lr"}};
  return out + "<div class=\"charts\">" + render_line_chart(lines, options) + "</div>";
}

std::string render_scaling_section(const std::string& sweep_dir) {
  const std::string runs_path = sweep_dir + "/runs.jsonl";
  const scaling::RunsTable table = scaling::read_runs(runs_path);
  std::string out = "<section class=\"scaling\" id=\"scaling\"><h2>Scaling</h2>";

  // The runs, with the columns `tiller sweep` writes that are present.
  std::vector<nlohmann::json> rows;
  {
    std::istringstream in(read_file(runs_path));
    for (std::string line; std::getline(in, line);)
      if (line.find_first_not_of(" \t\r") != std::string::npos)
        rows.push_back(nlohmann::json::parse(line));  // read_runs has checked every line
  }
  std::vector<std::string> columns;
  for (const char* key : {"point", "N", "D", "C", "loss", "train_loss", "steps", "lr", "batch_size",
                          "batch_tokens", "hidden_size", "num_hidden_layers"})
    if (std::any_of(rows.begin(), rows.end(), [&](const auto& r) { return r.contains(key); }))
      columns.push_back(key);
  out += "<h3>Runs (" + std::to_string(rows.size()) + ")</h3><table class=\"runs\"><tr>";
  for (const std::string& c : columns) out += "<th>" + xml_escape(c) + "</th>";
  out += "</tr>";
  for (const auto& row : rows) {
    out += "<tr>";
    for (const std::string& c : columns) {
      const auto it = row.find(c);
      std::string cell = "&ndash;";
      if (it != row.end() && it->is_number()) cell = html_number(it->get<double>());
      if (it != row.end() && it->is_string()) cell = xml_escape(it->get<std::string>());
      out += "<td>" + cell + "</td>";
    }
    out += "</tr>";
  }
  out += "</table>";

  std::optional<scaling::ScalingAnalysis> analysis;
  try {
    analysis = scaling::analyze_runs(table);
  } catch (const Error& e) {
    out += "<p class=\"warning\">No scaling fit: " + xml_escape(e.what()) + "</p>";
  }
  if (analysis) out += render_fit_tables(*analysis);
  const ScalingCharts charts = render_scaling_charts(table, analysis ? &*analysis : nullptr);
  out +=
      "<div class=\"charts\">" + charts.loss_vs_n + charts.loss_vs_d + charts.loss_vs_c + "</div>";
  return out + render_hparams_section(runs_path) + "</section>";
}

}  // namespace tiller
