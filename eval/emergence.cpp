#include "eval/emergence.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>

#include "common/recipe/config_reader.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "eval/fewshot.h"
#include "report/svg_chart.h"

namespace tiller::eval {
namespace {

std::string relative_to(const std::string& base_dir, const std::string& path) {
  if (path.empty() || std::filesystem::path(path).is_absolute()) return path;
  return (base_dir.empty() ? "." : base_dir) + "/" + path;
}

// One entry of "tasks"; mistakes go to `errors` under tasks[i].
SuiteTask read_suite_task(const nlohmann::json& j, const std::string& at,
                          const std::string& base_dir, ConfigErrors& errors) {
  ConfigReader r(j, at, errors);
  SuiteTask t;
  t.name = r.required_string("name");
  t.figure = r.string("figure", t.name);
  t.items_path = relative_to(base_dir, r.required_string("items"));
  t.pool_path = relative_to(base_dir, r.string("pool", ""));
  t.seed = static_cast<uint64_t>(r.integer("seed", static_cast<int64_t>(t.seed)));
  t.separator = r.string("separator", t.separator);
  const nlohmann::json& shots = r.raw("shots");
  if (shots.is_null()) {
    t.shots = {0};
  } else if (!shots.is_array() || shots.empty()) {
    errors.add(at + ".shots", "must be a non-empty list of shot counts (0, 1, ...)");
  } else {
    for (const auto& k : shots) {
      if (!k.is_number_integer() || k.get<int64_t>() < 0 || k.get<int64_t>() > 64)
        errors.add(at + ".shots", "each must be an integer in [0, 64], got " + k.dump());
      else
        t.shots.push_back(k.get<int64_t>());
    }
  }
  bool needs_pool = false;
  for (int64_t k : t.shots) needs_pool = needs_pool || k > 0;
  r.require(!needs_pool || !t.pool_path.empty(), "pool",
            "is required when a shot count is above 0 (the examples are drawn from it)");
  return t;
}

}  // namespace

std::vector<SuiteTask> read_suite(const std::string& path) {
  const nlohmann::json j = read_json_file(path);
  const std::string base_dir = std::filesystem::path(path).parent_path().string();
  ConfigErrors errors;
  std::vector<SuiteTask> tasks;
  {
    ConfigReader top(j, "", errors);
    top.raw("made_by");  // a note from make-suite, not read
    const nlohmann::json& list = top.raw("tasks");
    if (!list.is_array() || list.empty()) errors.add("tasks", "a non-empty list is required");
    std::set<std::string> names;
    for (size_t i = 0; list.is_array() && i < list.size(); ++i) {
      const std::string at = "tasks[" + std::to_string(i) + "]";
      tasks.push_back(read_suite_task(list[i], at, base_dir, errors));
      if (!tasks.back().name.empty() && !names.insert(tasks.back().name).second)
        errors.add(at + ".name", "duplicate task name '" + tasks.back().name + "'");
    }
  }
  errors.throw_if_any(path);
  return tasks;
}

std::vector<SuiteVariant> suite_variants(const std::vector<SuiteTask>& tasks) {
  std::vector<SuiteVariant> variants;
  for (const auto& t : tasks) {
    const std::vector<TaskItem> items = read_task_file(t.items_path);
    const std::vector<TaskItem> pool =
        t.pool_path.empty() ? std::vector<TaskItem>{} : read_task_file(t.pool_path);
    for (int64_t k : t.shots) {
      FewShotOptions shots;
      shots.k = k;
      shots.seed = t.seed;
      shots.separator = t.separator;
      variants.push_back({t.name, t.figure, k, with_shots(items, pool, shots)});
    }
  }
  return variants;
}

std::vector<EmergencePoint> evaluate_suite_across(const std::string& runs_path,
                                                  const std::vector<SuiteVariant>& variants,
                                                  const EvalOptions& options,
                                                  const std::string& stage, bool progress) {
  std::vector<std::vector<TaskItem>> item_sets;
  for (const auto& v : variants) item_sets.push_back(v.items);
  std::vector<AcrossRow> rows = locate_across(runs_path, stage);
  check(rows.size() >= 2, runs_path + ": the mirage reading needs at least two model sizes, got " +
                              std::to_string(rows.size()));
  std::vector<EmergencePoint> points;
  for (AcrossRow& row : rows) {
    std::vector<EvalResult> results = evaluate_model_dir(row.model_dir, item_sets, options);
    EmergencePoint point{std::move(row), std::move(results)};
    for (EvalResult& r : point.results) r.per_item.clear();
    if (progress) {
      std::fprintf(stderr, "[eval] %s (N %.4g):", point.row.model_dir.c_str(), point.row.n);
      for (size_t v = 0; v < variants.size(); ++v)
        std::fprintf(stderr, " %s/k%lld %.2f", variants[v].task.c_str(),
                     static_cast<long long>(variants[v].k), point.results[v].exact_match);
      std::fprintf(stderr, "\n");
    }
    points.push_back(std::move(point));
  }
  return points;
}

std::vector<VariantReading> read_variants(const std::vector<EmergencePoint>& points,
                                          const std::vector<SuiteVariant>& variants,
                                          const MirageRule& rule) {
  check(points.size() >= 2,
        "the mirage reading needs at least two model sizes, got " + std::to_string(points.size()));
  std::vector<double> x;
  for (const auto& p : points) x.push_back(std::log10(p.row.n));
  std::vector<VariantReading> readings;
  for (size_t v = 0; v < variants.size(); ++v) {
    std::vector<double> exact, loglik;
    for (const auto& p : points) {
      exact.push_back(p.results[v].exact_match);
      loglik.push_back(p.results[v].answer_loglik_per_token);
    }
    VariantReading reading;
    reading.discontinuous = discontinuous_shape(x, exact, points.front().results[v].items, rule);
    reading.continuous = continuous_shape(x, loglik, rule);
    reading.verdict = mirage_verdict(reading.discontinuous, reading.continuous);
    readings.push_back(std::move(reading));
  }
  return readings;
}

namespace {

nlohmann::json number_or_null(double value) {
  return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json();
}

std::string fixed(double value, int decimals) {
  if (!std::isfinite(value)) return "-";
  char text[32];
  std::snprintf(text, sizeof text, "%.*f", decimals, value);
  return text;
}

std::string variant_name(const SuiteVariant& v) {
  return v.task + " k=" + std::to_string(v.k);
}

}  // namespace

nlohmann::json emergence_json(const std::vector<EmergencePoint>& points,
                              const std::vector<SuiteVariant>& variants,
                              const std::vector<VariantReading>& readings, const MirageRule& rule) {
  nlohmann::json rows = nlohmann::json::array(), reads = nlohmann::json::array();
  for (size_t v = 0; v < variants.size(); ++v) {
    for (const auto& p : points) {
      const EvalResult& r = p.results[v];
      rows.push_back({{"task", variants[v].task},
                      {"figure", variants[v].figure},
                      {"k", variants[v].k},
                      {"N", p.row.n},
                      {"point", p.row.point},
                      {"model", p.row.model_dir},
                      {"items", r.items},
                      {"exact_match", number_or_null(r.exact_match)},
                      {"answer_loglik", number_or_null(r.answer_loglik)},
                      {"answer_loglik_per_token", number_or_null(r.answer_loglik_per_token)},
                      {"loglik_per_token", number_or_null(r.loglik_per_token)},
                      {"constraint_fraction", number_or_null(r.constraint_fraction)}});
    }
    reads.push_back({{"task", variants[v].task},
                     {"figure", variants[v].figure},
                     {"k", variants[v].k},
                     {"discontinuous", shape_json(readings[v].discontinuous)},
                     {"continuous", shape_json(readings[v].continuous)},
                     {"verdict", readings[v].verdict}});
  }
  return {
      {"rule", rule_json(rule)},
      {"metrics", {{"discontinuous", "exact_match"}, {"continuous", "answer_loglik_per_token"}}},
      {"rows", rows},
      {"readings", reads}};
}

std::string emergence_markdown(const std::vector<EmergencePoint>& points,
                               const std::vector<SuiteVariant>& variants,
                               const std::vector<VariantReading>& readings) {
  std::string out = "| task | k | metric |";
  for (const auto& p : points) out += " N=" + fixed(p.row.n, 0) + " |";
  out += " reading |\n|---|---|---|";
  for (size_t i = 0; i <= points.size(); ++i) out += "---|";
  out += "\n";
  for (size_t v = 0; v < variants.size(); ++v) {
    const std::string head = "| " + variants[v].task + " | " + std::to_string(variants[v].k);
    std::string exact = head + " | exact match |", loglik = head + " | answer ll/token |";
    for (const auto& p : points) {
      exact += " " + fixed(p.results[v].exact_match, 2) + " |";
      loglik += " " + fixed(p.results[v].answer_loglik_per_token, 3) + " |";
    }
    out += exact + " " + readings[v].discontinuous.reading + " |\n";
    out += loglik + " " + readings[v].continuous.reading + " |\n";
    const bool instructions = std::isfinite(points.front().results[v].constraint_fraction);
    if (instructions) {
      std::string met = head + " | constraints met |";
      for (const auto& p : points) met += " " + fixed(p.results[v].constraint_fraction, 2) + " |";
      out += met + " |\n";
    }
  }
  out += "\n";
  for (size_t v = 0; v < variants.size(); ++v)
    out += "- **" + variant_name(variants[v]) + "**: " + readings[v].verdict + "\n";
  return out;
}

std::vector<std::pair<std::string, std::string>> emergence_svgs(
    const std::vector<EmergencePoint>& points, const std::vector<SuiteVariant>& variants) {
  std::vector<std::string> figures;
  for (const auto& v : variants)
    if (std::find(figures.begin(), figures.end(), v.figure) == figures.end())
      figures.push_back(v.figure);
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& figure : figures) {
    std::vector<ChartSeries> exact, loglik;
    for (size_t v = 0; v < variants.size(); ++v) {
      if (variants[v].figure != figure) continue;
      ChartSeries e{variant_name(variants[v]), {}, {}}, l{variant_name(variants[v]), {}, {}};
      for (const auto& p : points) {
        e.x.push_back(std::log10(p.row.n));
        e.y.push_back(p.results[v].exact_match);
        l.x.push_back(std::log10(p.row.n));
        l.y.push_back(p.results[v].answer_loglik_per_token);
      }
      exact.push_back(std::move(e));
      loglik.push_back(std::move(l));
    }
    ChartOptions left;
    left.x_label = "log10 N (non-embedding parameters)";
    left.width = 560;
    left.height = 360;
    ChartOptions right = left;
    left.title = figure + ": exact match (discontinuous)";
    left.attributes = {{"data-panel", "discontinuous"}};
    right.title = figure + ": answer log-likelihood per token, nats (continuous)";
    right.attributes = {{"data-panel", "continuous"}};
    out.emplace_back(figure, render_two_panel_document(exact, left, loglik, right,
                                                       "tiller eval emergence: " + figure));
  }
  return out;
}

}  // namespace tiller::eval
