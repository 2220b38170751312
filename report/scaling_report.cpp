#include "report/scaling_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "common/util/error.h"
#include "common/util/files.h"
#include "report/svg_chart.h"

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

// One quantity of the runs on the x axis: the runs the fit used, those it left out, the fitted
// curves, the forecast.
struct ChartAxis {
  const char* chart;  // loss_vs_N
  const char* title;
  const char* label;
  double Run::*quantity;
};

std::string render_chart(const scaling::RunsTable& table, const scaling::ScalingAnalysis* analysis,
                         const ChartAxis& axis,
                         const std::function<std::vector<ChartSeries>(double, double)>& curves,
                         double forecast_x) {
  const std::set<int64_t> excluded = excluded_lines(analysis);
  ChartSeries used{"runs", {}, {}, SeriesStyle::kMarkers, {}, {}};
  ChartSeries left_out{"left out of the fit", {}, {}, SeriesStyle::kHollowMarkers, {}, {}};
  double low = HUGE_VAL, high = 0;
  for (const Run& run : table.runs) {
    ChartSeries& series = excluded.count(run.line) ? left_out : used;
    series.x.push_back(run.*axis.quantity);
    series.y.push_back(run.loss);
    low = std::min(low, run.*axis.quantity);
    high = std::max(high, run.*axis.quantity);
  }
  const bool forecast = analysis && analysis->forecast && std::isfinite(forecast_x);
  if (forecast) {
    low = std::min(low, forecast_x);
    high = std::max(high, forecast_x);
  }
  std::vector<ChartSeries> series = {used};
  if (!left_out.x.empty()) series.push_back(left_out);
  if (analysis)
    for (ChartSeries& c : curves(low, high)) series.push_back(std::move(c));
  if (forecast) {
    const scaling::Interval& loss = analysis->forecast->loss;  // no bar without a bootstrap (NaN)
    series.push_back(
        {"forecast", {forecast_x}, {loss.value}, SeriesStyle::kMarkers, {loss.low}, {loss.high}});
  }
  ChartOptions options;
  options.title = axis.title;
  options.x_label = axis.label;
  options.log_x = true;
  options.attributes = {{"data-chart", axis.chart}};
  return render_line_chart(series, options);
}

std::vector<double> values_of(const scaling::RunsTable& table,
                              const scaling::ScalingAnalysis& analysis, double Run::*quantity) {
  const std::set<int64_t> excluded = excluded_lines(&analysis);
  std::vector<double> values;
  for (const Run& run : table.runs)
    if (!excluded.count(run.line)) values.push_back(run.*quantity);
  return values;
}

// The curves of L(N, D) along one variable, the other held at each of `levels`.
std::vector<ChartSeries> law_curves(const scaling::LossLaw& law, std::vector<double> levels,
                                    const char* held, bool along_n, double low, double high) {
  std::sort(levels.begin(), levels.end());
  levels.erase(std::unique(levels.begin(), levels.end()), levels.end());
  std::vector<ChartSeries> series;
  for (double level : levels)
    series.push_back(
        curve(std::string("fit at ") + held + " = " + short_number(level), low, high,
              [&](double x) { return along_n ? law.loss(x, level) : law.loss(level, x); }));
  return series;
}

std::string html_number(double x) {
  return xml_escape(scaling::format_value("%.4g", x));
}

}  // namespace

ScalingCharts render_scaling_charts(const scaling::RunsTable& table,
                                    const scaling::ScalingAnalysis* analysis) {
  const scaling::LossLaw* law = analysis ? &analysis->fit.law : nullptr;
  const auto* forecast = analysis && analysis->forecast ? &*analysis->forecast : nullptr;
  auto levels = [&](double Run::*quantity, double forecast_value) {
    std::vector<double> l = curve_levels(values_of(table, *analysis, quantity));
    if (forecast) l.push_back(forecast_value);
    return l;
  };
  ScalingCharts charts;
  charts.loss_vs_n = render_chart(
      table, analysis, {"loss_vs_N", "Loss against parameters N", "parameters N", &Run::n},
      [&](double low, double high) {
        return law_curves(*law, levels(&Run::d, forecast ? forecast->d : 0), "D", true, low, high);
      },
      forecast ? forecast->n : NAN);
  charts.loss_vs_d = render_chart(
      table, analysis, {"loss_vs_D", "Loss against training tokens D", "tokens D", &Run::d},
      [&](double low, double high) {
        return law_curves(*law, levels(&Run::n, forecast ? forecast->n : 0), "N", false, low, high);
      },
      forecast ? forecast->d : NAN);
  charts.loss_vs_c = render_chart(
      table, analysis, {"loss_vs_C", "Loss against compute C", "compute C (FLOPs)", &Run::c},
      [&](double low, double high) {
        return std::vector<ChartSeries>{
            curve("compute-optimal L(N_opt(C), D_opt(C))", low, high,
                  [&](double c) { return law->compute_optimal(c).loss; })};
      },
      forecast ? 6 * forecast->n * forecast->d : NAN);
  return charts;
}

std::vector<std::string> write_scaling_charts(const ScalingCharts& charts, const std::string& dir) {
  make_directories(dir);
  std::vector<std::string> paths;
  for (const auto& [name, svg] :
       {std::pair<const char*, const std::string*>{"loss_vs_N", &charts.loss_vs_n},
        {"loss_vs_D", &charts.loss_vs_d},
        {"loss_vs_C", &charts.loss_vs_c}}) {
    paths.push_back((std::filesystem::path(dir) / (std::string(name) + ".svg")).string());
    write_file_atomic(paths.back(), *svg + "\n");
  }
  return paths;
}

bool is_sweep_directory(const std::string& dir) {
  return path_exists(dir + "/runs.jsonl") && !path_exists(dir + "/recipe.json");
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
    out += "<p class=\"warning\">No Chinchilla fit: " + xml_escape(e.what()) + "</p>";
  }
  if (analysis) {
    out += "<h3>Chinchilla fit L(N, D) = E + A/N<sup>&alpha;</sup> + B/D<sup>&beta;</sup></h3>";
    out += "<p class=\"muted\">" + std::to_string(analysis->runs_used) + " runs; " +
           xml_escape(scaling::interval_note(analysis->resamples, analysis->seed,
                                             analysis->percentiles, "the runs")) +
           " (<code>tiller scaling fit</code> for more).</p>";
    out += "<table class=\"fit\"><tr><th>parameter</th><th>value</th><th>interval</th></tr>";
    const std::pair<const char*, const scaling::Interval*> parameters[] = {
        {"E", &analysis->E},
        {"A", &analysis->A},
        {"B", &analysis->B},
        {"&alpha;", &analysis->alpha},
        {"&beta;", &analysis->beta},
        {"a = &beta;/(&alpha;+&beta;)", &analysis->a},
        {"b = &alpha;/(&alpha;+&beta;)", &analysis->b}};
    for (const auto& [name, interval] : parameters)
      out += std::string("<tr><td>") + name + "</td><td>" + html_number(interval->value) +
             "</td><td>" +
             (std::isfinite(interval->low)
                  ? "[" + html_number(interval->low) + ", " + html_number(interval->high) + "]"
                  : "&ndash;") +
             "</td></tr>";
    out += "</table>";
  }
  const ScalingCharts charts = render_scaling_charts(table, analysis ? &*analysis : nullptr);
  out +=
      "<div class=\"charts\">" + charts.loss_vs_n + charts.loss_vs_d + charts.loss_vs_c + "</div>";
  return out + "</section>";
}

}  // namespace tiller
