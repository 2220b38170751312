// `tiller eval emergence`: a suite of tasks (suite.json: task files, k-shot pools, the shots each
// is evaluated at) scored on every model of a sweep, each task and k as a discontinuous metric
// (exact match) beside a continuous one (the answer's log-likelihood), with the mirage reading of
// each pair of curves (eval/mirage.h), a JSON table, a Markdown summary and SVG figures.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "eval/mirage.h"
#include "eval/task_eval.h"

namespace tiller::eval {

// One task of a suite.json (paths relative to the suite file's directory).
struct SuiteTask {
  std::string name;
  std::string figure;  // tasks with the same figure are drawn together (default: the name)
  std::string items_path;
  std::string pool_path;  // "" when every shot count is 0
  std::vector<int64_t> shots;
  uint64_t seed = 1234;
  std::string separator = "\n";
};

// A task at one shot count: its items with the examples written into the prompts.
struct SuiteVariant {
  std::string task, figure;
  int64_t k = 0;
  std::vector<TaskItem> items;
};

// Reads suite.json strictly (unknown keys, wrong types, duplicate names, negative shots: all
// reported together, naming the path), then every task file and pool, and builds every variant's
// prompts, so that a malformed item or a k larger than the pool stops before any model loads.
std::vector<SuiteTask> read_suite(const std::string& path);
std::vector<SuiteVariant> suite_variants(const std::vector<SuiteTask>& tasks);

// One model of the sweep: its N and its result on each variant (per-item detail dropped).
struct EmergencePoint {
  AcrossRow row;
  std::vector<EvalResult> results;  // one per variant, in order
};

std::vector<EmergencePoint> evaluate_suite_across(const std::string& runs_path,
                                                  const std::vector<SuiteVariant>& variants,
                                                  const EvalOptions& options,
                                                  const std::string& stage, bool progress);

// The reading of one variant's two curves against log10 N: exact match and the answer's
// log-likelihood per token.
struct VariantReading {
  CurveShape discontinuous, continuous;
  std::string verdict;
};
std::vector<VariantReading> read_variants(const std::vector<EmergencePoint>& points,
                                          const std::vector<SuiteVariant>& variants,
                                          const MirageRule& rule);

// {"suite", "runs", "rule", "rows": [{task, figure, k, N, point, model, items, exact_match,
// answer_loglik, answer_loglik_per_token, loglik_per_token, constraint_fraction}],
// "readings": [{task, figure, k, discontinuous, continuous, verdict}]}.
nlohmann::json emergence_json(const std::vector<EmergencePoint>& points,
                              const std::vector<SuiteVariant>& variants,
                              const std::vector<VariantReading>& readings, const MirageRule& rule);
// The table (one block per variant: N, exact match, answer log-likelihood) and the readings, as
// Markdown.
std::string emergence_markdown(const std::vector<EmergencePoint>& points,
                               const std::vector<SuiteVariant>& variants,
                               const std::vector<VariantReading>& readings);
// One self-contained SVG per figure: exact match against log10 N on the left, the answer's
// log-likelihood per token on the right, a line per task and k. Pairs of (figure name, SVG).
std::vector<std::pair<std::string, std::string>> emergence_svgs(
    const std::vector<EmergencePoint>& points, const std::vector<SuiteVariant>& variants);

}  // namespace tiller::eval
