#include "report/run_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <vector>

#include "common/util/error.h"
#include "common/util/files.h"
#include "report/emergence_report.h"
#include "report/scaling_report.h"
#include "report/svg_chart.h"
#include "stages/stage_types.h"

namespace tiller {

namespace {

using nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Reading the run directory

// Lines of a JSONL file that could not be used, by 1-based line number.
struct SkippedLines {
  std::vector<int64_t> line_numbers;

  std::string describe(const std::string& file) const {
    constexpr size_t kShown = 8;
    std::string text = file + ": skipped " + std::to_string(line_numbers.size()) +
                       " malformed line" + (line_numbers.size() == 1 ? "" : "s") + " (line";
    text += line_numbers.size() == 1 ? " " : "s ";
    for (size_t i = 0; i < std::min(kShown, line_numbers.size()); ++i)
      text += (i ? ", " : "") + std::to_string(line_numbers[i]);
    return text + (line_numbers.size() > kShown ? ", ...)" : ")");
  }
};

// Calls accept(object) for each line of a JSONL file that holds a JSON object; accept returns
// whether it could use it. Lines that are not objects, or that it refused, are recorded as
// skipped; blank lines are not.
template <typename Accept>
SkippedLines for_each_json_object(const std::string& path, Accept accept) {
  SkippedLines skipped;
  std::istringstream in(read_file(path));
  int64_t number = 0;
  for (std::string line; std::getline(in, line);) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const json object = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!object.is_object() || !accept(object)) skipped.line_numbers.push_back(number);
  }
  return skipped;
}

// metrics.jsonl: for each key, its (step, value) points in file order.
struct MetricsLog {
  bool present = false;
  std::vector<std::string> keys;  // in order of first appearance
  std::map<std::string, ChartSeries> series;
  std::optional<double> last_step;
  SkippedLines skipped;
};

MetricsLog read_metrics(const std::string& path) {
  MetricsLog log;
  if (!path_exists(path)) return log;
  log.present = true;
  log.skipped = for_each_json_object(path, [&](const json& record) {
    const auto step = record.find("step");
    if (step == record.end() || !step->is_number()) return false;
    const double x = step->get<double>();
    for (auto it = record.begin(); it != record.end(); ++it) {
      // JSON has no NaN: a NaN logged is written as null, and shown as a gap in the line.
      if (it.key() == "step" || !(it->is_number() || it->is_null())) continue;
      auto [entry, inserted] = log.series.try_emplace(it.key());
      if (inserted) {
        entry->second.name = it.key();
        log.keys.push_back(it.key());
      }
      entry->second.x.push_back(x);
      entry->second.y.push_back(it->is_null() ? std::nan("") : it->get<double>());
    }
    log.last_step = std::max(log.last_step.value_or(x), x);
    return true;
  });
  return log;
}

// samples.jsonl (rlhf): responses logged before PPO and every few iterations.
struct Sample {
  int64_t iteration = 0;
  std::string prompt, response;
  std::optional<double> score, ground_truth;
};

struct SampleLog {
  bool present = false;
  std::vector<Sample> samples;
  SkippedLines skipped;
};

std::optional<double> optional_number(const json& object, const char* key) {
  const auto it = object.find(key);
  if (it == object.end()) return std::nullopt;
  if (it->is_number()) return it->get<double>();
  if (it->is_boolean()) return it->get<bool>() ? 1.0 : 0.0;
  return std::nullopt;
}

SampleLog read_samples(const std::string& path) {
  SampleLog log;
  if (!path_exists(path)) return log;
  log.present = true;
  log.skipped = for_each_json_object(path, [&](const json& record) {
    const auto iteration = record.find("iteration");
    const auto prompt = record.find("prompt");
    const auto response = record.find("response");
    if (iteration == record.end() || !iteration->is_number() || prompt == record.end() ||
        !prompt->is_string() || response == record.end() || !response->is_string())
      return false;
    log.samples.push_back({static_cast<int64_t>(iteration->get<double>()),
                           prompt->get<std::string>(), response->get<std::string>(),
                           optional_number(record, "score"),
                           optional_number(record, "ground_truth")});
    return true;
  });
  return log;
}

enum class StageStatus { kComplete, kIncomplete, kNotStarted };

struct Stage {
  std::string name, type;
  StageStatus status = StageStatus::kNotStarted;
  json summary;                 // complete.json, or null
  std::string summary_problem;  // why complete.json could not be read, if it could not
  MetricsLog metrics;
  SampleLog samples;
  json preparation;  // a prepare stage's final/stats.json, or null
};

Stage read_stage(const std::string& run_dir, const json& entry, size_t index,
                 const std::string& recipe_path) {
  const std::string where = recipe_path + ": stages[" + std::to_string(index) + "]";
  check(entry.is_object(), where + " is not an object");
  const auto name = entry.find("name");
  check(name != entry.end() && name->is_string() && !name->get<std::string>().empty(),
        where + " has no \"name\"");
  Stage stage;
  stage.name = name->get<std::string>();
  const auto type = entry.find("type");
  stage.type = type != entry.end() && type->is_string() ? type->get<std::string>() : "unknown";

  const std::string dir = run_dir + "/" + stage.name;
  stage.metrics = read_metrics(dir + "/metrics.jsonl");
  stage.samples = read_samples(dir + "/samples.jsonl");
  if (path_exists(dir + "/final/stats.json")) {
    try {
      stage.preparation = read_json_file(dir + "/final/stats.json");
    } catch (const Error& e) {
      stage.summary_problem = e.what();
    }
  }
  const std::string complete_path = dir + "/complete.json";
  if (path_exists(complete_path)) {
    try {
      stage.summary = read_json_file(complete_path);
      stage.status = StageStatus::kComplete;
    } catch (const Error& e) {
      stage.summary_problem = e.what();
      stage.status = StageStatus::kIncomplete;
    }
  } else if (is_directory(dir)) {
    stage.status = StageStatus::kIncomplete;
  }
  return stage;
}

struct Run {
  std::string dir, name;
  json recipe;
  std::vector<Stage> stages;
  json summary;  // summary.json, or null
  std::string summary_problem;
};

Run read_run(const std::string& run_dir) {
  check(is_directory(run_dir), run_dir + ": not a run directory (no such directory)");
  const std::string recipe_path = run_dir + "/recipe.json";
  check(path_exists(recipe_path),
        recipe_path +
            ": not found; a run directory is one written by `tiller run` (or a sweep "
            "directory, with the runs.jsonl `tiller sweep` writes)");
  Run run;
  run.dir = run_dir;
  run.recipe = read_json_file(recipe_path);
  const auto stages = run.recipe.find("stages");
  check(run.recipe.is_object() && stages != run.recipe.end() && stages->is_array(),
        recipe_path + ": no \"stages\" list; a run directory is one written by `tiller run`");

  run.name = std::filesystem::path(run_dir).lexically_normal().filename().string();
  if (run.recipe.contains("run") && run.recipe["run"].is_object()) {
    const json& settings = run.recipe["run"];
    if (settings.contains("name") && settings["name"].is_string())
      run.name = settings["name"].get<std::string>();
  }
  for (size_t i = 0; i < stages->size(); ++i)
    run.stages.push_back(read_stage(run_dir, (*stages)[i], i, recipe_path));

  const std::string summary_path = run_dir + "/summary.json";
  if (path_exists(summary_path)) {
    try {
      run.summary = read_json_file(summary_path);
      check(run.summary.contains("rows") && run.summary["rows"].is_array(),
            summary_path + ": no \"rows\" list");
    } catch (const Error& e) {
      run.summary = nullptr;
      run.summary_problem = e.what();
    }
  }
  return run;
}

// ---------------------------------------------------------------------------------------------
// Formatting

std::string html(const std::string& text) {
  return xml_escape(text);
}

std::string format_number(double value) {
  if (!std::isfinite(value)) return std::isnan(value) ? "NaN" : (value > 0 ? "inf" : "-inf");
  char buffer[64];
  if (value == std::round(value) && std::abs(value) < 1e15)
    std::snprintf(buffer, sizeof(buffer), "%.0f", value);
  else
    std::snprintf(buffer, sizeof(buffer), "%.4g", value);
  return buffer;
}

// A JSON value as table text (escaped): numbers compact, strings as they are, the rest as JSON.
std::string format_value(const json& value) {
  if (value.is_number_integer()) return value.dump();
  if (value.is_number()) return format_number(value.get<double>());
  if (value.is_string()) return html(value.get<std::string>());
  if (value.is_null()) return "&ndash;";
  std::string text = value.dump();
  if (text.size() > 120) text = text.substr(0, 117) + "...";
  return html(text);
}

// complete.json as (key, value) rows; nested objects become dotted keys.
void flatten(const json& object, const std::string& prefix,
             std::vector<std::pair<std::string, json>>& rows) {
  for (auto it = object.begin(); it != object.end(); ++it) {
    if (it->is_object())
      flatten(*it, prefix + it.key() + ".", rows);
    else
      rows.emplace_back(prefix + it.key(), *it);
  }
}

const char* status_text(StageStatus status) {
  switch (status) {
    case StageStatus::kComplete:
      return "complete";
    case StageStatus::kIncomplete:
      return "incomplete";
    case StageStatus::kNotStarted:
      return "not started";
  }
  return "";
}

// The complete.json figures worth a glance in the stage table, as the stage's type names them.
std::vector<std::string> key_figure_names(const std::string& type) {
  const StageType* known = find_stage_type(stage_registry(), type);
  return known != nullptr ? known->report_figures : std::vector<std::string>{};
}

std::string key_figures(const Stage& stage) {
  if (!stage.summary.is_object()) return "";
  std::vector<std::string> names = key_figure_names(stage.type);
  names.erase(std::remove_if(names.begin(), names.end(),
                             [&](const std::string& n) { return !stage.summary.contains(n); }),
              names.end());
  if (names.empty()) {
    // An unfamiliar summary: its first few numbers.
    for (auto it = stage.summary.begin(); it != stage.summary.end() && names.size() < 5; ++it)
      if (it->is_number()) names.push_back(it.key());
  }
  std::string text;
  for (const std::string& name : names)
    text += "<span class=\"figure\">" + html(name) + " <b>" + format_value(stage.summary[name]) +
            "</b></span> ";
  return text;
}

// ---------------------------------------------------------------------------------------------
// Charts

using ChartSpec = MetricChart;

std::vector<ChartSpec> chart_specs(const std::string& type) {
  const StageType* known = find_stage_type(stage_registry(), type);
  return known != nullptr ? known->report_charts : std::vector<ChartSpec>{};
}

std::string render_chart(const Stage& stage, const ChartSpec& spec) {
  std::vector<ChartSeries> series;
  for (const std::string& key : spec.keys) {
    const auto it = stage.metrics.series.find(key);
    if (it != stage.metrics.series.end()) series.push_back(it->second);
  }
  ChartOptions options;
  options.title = spec.title;
  const StageType* known = find_stage_type(stage_registry(), stage.type);
  options.x_label = known != nullptr ? known->step_name : "step";
  options.log_y = spec.log_y;
  options.attributes = {{"data-stage", stage.name}, {"data-metric", spec.metric}};
  return render_line_chart(series, options);
}

std::string render_charts(const Stage& stage) {
  std::vector<ChartSpec> specs = chart_specs(stage.type);
  std::set<std::string> charted;
  std::vector<ChartSpec> drawn;
  for (const ChartSpec& spec : specs) {
    const bool any = std::any_of(spec.keys.begin(), spec.keys.end(), [&](const std::string& key) {
      return stage.metrics.series.count(key) > 0;
    });
    if (!any) continue;
    drawn.push_back(spec);
    charted.insert(spec.keys.begin(), spec.keys.end());
  }
  // A stage type this report does not know: one chart per logged key.
  if (specs.empty())
    for (const std::string& key : stage.metrics.keys) {
      drawn.push_back({key, key, {key}});
      charted.insert(key);
    }

  std::string out;
  if (!drawn.empty()) {
    out += "<div class=\"charts\">";
    for (const ChartSpec& spec : drawn) out += render_chart(stage, spec);
    out += "</div>";
  }
  std::vector<std::string> others;
  for (const std::string& key : stage.metrics.keys)
    if (!charted.count(key)) others.push_back(key);
  if (!others.empty()) {
    out += "<p class=\"muted\">Also logged (not charted): ";
    for (size_t i = 0; i < others.size(); ++i) out += (i ? ", " : "") + html(others[i]);
    out += ".</p>";
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Samples before and after PPO

constexpr size_t kMaxSampleRows = 12;

std::string sample_cell(const Sample* sample) {
  if (sample == nullptr) return "<td class=\"muted\">&ndash;</td>";
  std::string cell = "<td><pre>" + html(sample->response) + "</pre><div class=\"score\">";
  if (sample->score) cell += "score " + format_number(*sample->score);
  if (sample->ground_truth)
    cell += std::string(sample->score ? " &middot; " : "") + "ground truth " +
            format_number(*sample->ground_truth);
  return cell + "</div></td>";
}

std::string render_samples(const Stage& stage) {
  const std::vector<Sample>& samples = stage.samples.samples;
  if (samples.empty()) return "";
  int64_t first = samples.front().iteration, last = first;
  for (const Sample& s : samples) {
    first = std::min(first, s.iteration);
    last = std::max(last, s.iteration);
  }
  std::vector<const Sample*> before, after;
  for (const Sample& s : samples) {
    if (s.iteration == first) before.push_back(&s);
    if (s.iteration == last && last != first) after.push_back(&s);
  }

  // Rows pair a before-sample with the after-sample for the same prompt (sample prompts are
  // usually fixed); what is left unpaired is paired in order.
  std::vector<std::pair<const Sample*, const Sample*>> rows;
  std::vector<bool> used(after.size(), false);
  for (const Sample* b : before) {
    const Sample* partner = nullptr;
    for (size_t j = 0; j < after.size() && !partner; ++j)
      if (!used[j] && after[j]->prompt == b->prompt) {
        used[j] = true;
        partner = after[j];
      }
    rows.emplace_back(b, partner);
  }
  size_t next_row = 0;
  for (size_t j = 0; j < after.size(); ++j) {
    if (used[j]) continue;
    while (next_row < rows.size() && rows[next_row].second) ++next_row;
    if (next_row < rows.size())
      rows[next_row].second = after[j];
    else
      rows.emplace_back(nullptr, after[j]);
  }

  const bool complete = stage.status == StageStatus::kComplete;
  const std::string before_title = (first == 0 ? "Before PPO" : "Earliest logged") +
                                   std::string(" (iteration ") + std::to_string(first) + ")";
  const std::string after_title = (complete ? "After PPO" : "Latest logged, stage incomplete") +
                                  std::string(" (iteration ") + std::to_string(last) + ")";
  std::string out = "<h3>Sample responses</h3>";
  if (after.empty())
    out +=
        "<p class=\"muted\">Only iteration " + std::to_string(first) + " has samples so far.</p>";
  out += "<table class=\"samples\"><tr><th>Prompt</th><th>" + html(before_title) + "</th>";
  if (!after.empty()) out += "<th>" + html(after_title) + "</th>";
  out += "</tr>";
  for (size_t i = 0; i < std::min(rows.size(), kMaxSampleRows); ++i) {
    const auto& [b, a] = rows[i];
    std::string prompt = b ? b->prompt : a->prompt;
    if (b && a && a->prompt != b->prompt) prompt += "\n\n(after: " + a->prompt + ")";
    out += "<tr><td><pre>" + html(prompt) + "</pre></td>" + sample_cell(b);
    if (!after.empty()) out += sample_cell(a);
    out += "</tr>";
  }
  out += "</table>";
  if (rows.size() > kMaxSampleRows)
    out += "<p class=\"muted\">Showing " + std::to_string(kMaxSampleRows) + " of " +
           std::to_string(rows.size()) + " prompts.</p>";
  return out;
}

// ---------------------------------------------------------------------------------------------
// The page

const char* const kStyle = R"(
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
  margin:0 auto;padding:16px 24px 48px;max-width:1200px;color:#222;background:#f7f7f7}
h1{font-size:22px;margin:8px 0 4px}
h2{font-size:18px;margin:32px 0 8px;padding-bottom:4px;border-bottom:1px solid #ccc}
h3{font-size:15px;margin:20px 0 6px}
table{border-collapse:collapse;background:#fff;margin:6px 0}
th,td{border:1px solid #d8d8d8;padding:4px 8px;text-align:left;vertical-align:top;font-size:13px}
th{background:#eee}
.muted{color:#777}
.warning{background:#fff4e5;border-left:4px solid #e8a33d;padding:6px 10px;margin:6px 0}
.status-complete{color:#1a7f37;font-weight:600}
.status-incomplete{color:#b35900;font-weight:600}
.status-not-started{color:#888}
.figure{white-space:nowrap;margin-right:10px}
.charts{display:flex;flex-wrap:wrap;gap:12px}
svg.chart{background:#fff;border:1px solid #d8d8d8;max-width:100%;height:auto}
table.samples{table-layout:fixed;width:100%}
table.samples pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:12px;
  max-height:18em;overflow:auto}
.score{color:#555;font-size:12px;margin-top:4px}
table.preparation-steps{table-layout:fixed;width:100%}
table.preparation-steps th:nth-child(-n+4){width:9em}
table.preparation-steps pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:12px;
  max-height:8em;overflow:auto}
)";

std::string status_cell(StageStatus status) {
  std::string css = status_text(status);
  std::replace(css.begin(), css.end(), ' ', '-');
  return "<td class=\"status-" + css + "\">" + status_text(status) + "</td>";
}

std::string render_run_summary(const Run& run) {
  std::string out;
  if (!run.summary_problem.empty())
    out += "<p class=\"warning\">" + html(run.summary_problem) + "</p>";
  if (!run.summary.is_object()) return out;
  out += "<h2>Summary</h2><table class=\"summary\"><tr><th>Figure</th><th>Value</th></tr>";
  for (const json& row : run.summary["rows"]) {
    if (!row.is_object()) continue;
    const std::string label =
        row.contains("label") && row["label"].is_string() ? row["label"].get<std::string>() : "";
    out += "<tr><td>" + html(label) + "</td><td>" +
           format_value(row.contains("value") ? row["value"] : json()) + "</td></tr>";
  }
  return out + "</table>";
}

std::string render_stage_table(const Run& run) {
  std::string out =
      "<h2>Stages</h2><table class=\"stage-table\"><tr><th>Stage</th><th>Type</th>"
      "<th>Status</th><th>Last step</th><th>Key figures</th></tr>";
  for (const Stage& stage : run.stages) {
    out += "<tr><td><a href=\"#stage-" + html(stage.name) + "\">" + html(stage.name) +
           "</a></td><td>" + html(stage.type) + "</td>" + status_cell(stage.status) + "<td>" +
           (stage.metrics.last_step ? format_number(*stage.metrics.last_step) : "&ndash;") +
           "</td><td>" + key_figures(stage) + "</td></tr>";
  }
  return out + "</table>";
}

// What a data preparation did (its stats.json): documents removed by each step, with examples,
// and the document sizes before and after.
std::string render_preparation(const json& stats) {
  if (!stats.is_object()) return "";
  std::string out = "<h3>Data preparation</h3>";
  const json input = stats.value("input", json::object());
  out += "<p>" + format_value(input.value("documents", json())) + " documents (" +
         format_number(input.value("bytes", 0.0) / 1e6) + " MB) read from " +
         format_value(input.value("files", json())) +
         (input.value("files", 0) == 1 ? " file; " : " files; ") +
         format_value(stats.value("kept_documents", json())) + " kept; " +
         format_number(stats.value("mb_per_s", 0.0)) + " MB/s on " +
         format_value(stats.value("threads", json())) + " threads.</p>";
  out +=
      "<table class=\"preparation-steps\"><tr><th>Step</th><th>Documents removed</th>"
      "<th>Bytes removed</th><th>Documents changed</th><th>Examples</th></tr>";
  for (const json& step : stats.value("steps", json::array())) {
    if (!step.is_object()) continue;
    std::string examples;
    for (const json& e : step.value("examples", json::array())) {
      if (!e.is_object()) continue;
      examples += "<div class=\"score\">" + html(e.value("where", "")) +
                  (e.contains("reason") ? " &ndash; " + html(e.value("reason", "")) : "") +
                  "<pre>" + html(e.value("text", "")) + "</pre></div>";
    }
    out += "<tr><td>" + html(step.value("step", "")) + "</td><td>" +
           format_value(step.value("removed_documents", json())) + "</td><td>" +
           format_value(step.value("removed_bytes", json())) + "</td><td>" +
           format_value(step.value("changed_documents", json())) + "</td><td>" + examples +
           "</td></tr>";
  }
  out += "</table>";
  // Sizes before and after, side by side, bucket by bucket.
  const json sizes = stats.value("document_bytes", json::object());
  std::map<int64_t, std::pair<int64_t, int64_t>> buckets;  // min bytes -> (before, after)
  int64_t largest = 1;
  for (const char* side : {"before", "after"})
    for (const json& b : sizes.value(side, json::array())) {
      if (!b.is_object()) continue;
      const int64_t count = b.value("documents", int64_t{0});
      auto& slot = buckets[b.value("min_bytes", int64_t{0})];
      (std::string(side) == "before" ? slot.first : slot.second) = count;
      largest = std::max(largest, count);
    }
  if (!buckets.empty()) {
    out +=
        "<table class=\"preparation-sizes\"><tr><th>Document bytes</th><th>Before</th>"
        "<th>After</th></tr>";
    auto bar = [&](int64_t count, const char* color) {
      const int width = static_cast<int>(200.0 * static_cast<double>(count) / largest);
      return "<td><span style=\"display:inline-block;height:10px;width:" + std::to_string(width) +
             "px;background:" + color + "\"></span> " + std::to_string(count) + "</td>";
    };
    for (const auto& [low, counts] : buckets)
      out += "<tr><td>&ge; " + std::to_string(low) + "</td>" + bar(counts.first, "#9ab") +
             bar(counts.second, "#37a") + "</tr>";
    out += "</table>";
  }
  return out;
}

std::string render_stage(const Stage& stage) {
  std::string out = "<section class=\"stage\" id=\"stage-" + html(stage.name) + "\"><h2>" +
                    html(stage.name) + " <span class=\"muted\">(" + html(stage.type) + ", " +
                    status_text(stage.status) + ")</span></h2>";
  if (!stage.summary_problem.empty())
    out += "<p class=\"warning\">" + html(stage.summary_problem) + "</p>";
  if (!stage.metrics.skipped.line_numbers.empty())
    out += "<p class=\"warning\">" +
           html(stage.metrics.skipped.describe(stage.name + "/metrics.jsonl")) + "</p>";
  if (!stage.samples.skipped.line_numbers.empty())
    out += "<p class=\"warning\">" +
           html(stage.samples.skipped.describe(stage.name + "/samples.jsonl")) + "</p>";

  if (!stage.metrics.present && !stage.preparation.is_object())
    out += "<p class=\"muted\">No metrics logged yet (" + html(stage.name) +
           "/metrics.jsonl is absent).</p>";
  out += render_charts(stage);
  out += render_preparation(stage.preparation);

  if (stage.summary.is_object()) {
    std::vector<std::pair<std::string, json>> rows;
    flatten(stage.summary, "", rows);
    out += "<h3>Summary (complete.json)</h3><table class=\"figures\">";
    for (const auto& [key, value] : rows)
      out += "<tr><td>" + html(key) + "</td><td>" + format_value(value) + "</td></tr>";
    out += "</table>";
  }
  out += render_samples(stage);
  return out + "</section>";
}

// The page up to and including its <h1>.
std::string page_start(const std::string& name) {
  std::string page = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">";
  page += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">";
  page +=
      "<title>Tiller report: " + html(name) + "</title><style>" + kStyle + "</style></head><body>";
  return page + "<h1>Tiller report: " + html(name) + "</h1>";
}

// A sweep directory's page: its runs and the scaling fit.
std::string render_sweep_report(const std::string& sweep_dir) {
  const std::string name = std::filesystem::path(sweep_dir).lexically_normal().filename().string();
  std::string page = page_start(name.empty() ? sweep_dir : name);
  page += "<p class=\"muted\">Sweep directory " + html(sweep_dir) + " (runs.jsonl).</p>";
  page += render_scaling_section(sweep_dir);
  page += render_emergence_section(sweep_dir);
  return page + "</body></html>\n";
}

}  // namespace

std::string render_run_report(const std::string& run_dir) {
  if (is_directory(run_dir) && is_sweep_directory(run_dir)) return render_sweep_report(run_dir);
  if (path_exists(run_dir + "/stats.json") && path_exists(run_dir + "/prepare.json")) {
    // A `tiller data prepare` output directory.
    std::string page = page_start(std::filesystem::path(run_dir).lexically_normal().string());
    page += "<p class=\"muted\">Prepared data directory " + html(run_dir) + ".</p>";
    return page + render_preparation(read_json_file(run_dir + "/stats.json")) + "</body></html>\n";
  }
  const Run run = read_run(run_dir);
  std::string page = page_start(run.name);
  page += "<p class=\"muted\">Run directory " + html(run.dir) + ", " +
          std::to_string(run.stages.size()) + " stage" + (run.stages.size() == 1 ? "" : "s") +
          ".</p>";
  page += render_run_summary(run);
  page += render_stage_table(run);
  for (const Stage& stage : run.stages) page += render_stage(stage);
  return page + "</body></html>\n";
}

void write_run_report(const std::string& run_dir, const std::string& out_path) {
  write_file_atomic(out_path, render_run_report(run_dir));
}

}  // namespace tiller
