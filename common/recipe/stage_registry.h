// StageType: everything the recipe pipeline, `--check`, the report, the sweep and the bench know
// of one kind of stage: its parser, its runner, its rows in the run's summary table, and what
// its report shows. The types are registered above common/, one line each, in
// stages/stage_types.cpp; nothing else names a stage type.
#pragma once
#include <nlohmann/json.hpp>

#include <any>
#include <functional>
#include <string>
#include <vector>

#include "common/recipe/config_reader.h"
#include "common/recipe/recipe.h"

namespace tiller {

// One row of the run's closing summary table (RUN_DIR/summary.json).
struct SummaryRow {
  std::string label;
  nlohmann::json value;  // rows whose value is not a number are left out
};

// A chart of the report: metrics.jsonl keys drawn as its series.
struct MetricChart {
  std::string metric;  // the chart's data-metric
  std::string title;
  std::vector<std::string> keys;
  bool log_y = false;
};

struct StageType {
  std::string type;         // the recipe's "type" (set by the registration line)
  std::string description;  // one line for `tiller <type> RECIPE`'s help

  // Parses and checks a stage body into the type's config struct (held in the std::any);
  // mistakes go to `errors` with their paths, never thrown.
  std::function<std::any(const StageEntry& entry, ConfigErrors& errors)> parse;
  // Runs the stage to completion (resuming from its checkpoints) and returns its summary.
  std::function<nlohmann::json(const Recipe& recipe, const std::any& config)> run;
  // Optional: every value the stage runs with, defaults included, as parts of a stage body
  // ({"section": {"key": value}, "key": value}), merged into the stage's body of
  // RUN_DIR/recipe.json. Parsing the merged body must give the same config back.
  std::function<nlohmann::json(const std::any& config)> stated_defaults;
  // Optional: in a multi-process job, the stage's batch layout for the head of the resolved
  // recipe ("global batch 8 rows = 2 ranks x 4").
  std::function<std::string(const std::any& config, int data_parallel_ranks)> batch_layout;
  // Optional: why a job of `data_parallel_ranks` ranks cannot share the stage's batches as
  // configured ("train.batch_size 6 does not divide among 4 data-parallel ranks"), or "". The
  // pipeline asks each stage it will run before the first one starts.
  std::function<std::string(const std::any& config, int data_parallel_ranks)> data_parallel_error;
  // Optional: the stage's rows of the run's summary table, from its complete.json.
  std::function<std::vector<SummaryRow>(const std::string& stage, const nlohmann::json& summary)>
      summary_rows;

  std::vector<std::string> report_figures;  // complete.json keys of the report's stage table
  std::vector<MetricChart> report_charts;   // the report's charts of metrics.jsonl
  std::string step_name = "step";           // the charts' x axis ("iteration" for PPO)
  bool sweepable = false;  // `tiller sweep` may measure it: it trains a language model
  // It runs with run.tensor_parallel > 1; the pipeline refuses a recipe that asks for tensor
  // parallelism beside a stage of any other type before anything runs (--check too), naming it.
  bool tensor_parallel = false;
};

using StageRegistry = std::vector<StageType>;

// The registered type named `type`, or nullptr.
const StageType* find_stage_type(const StageRegistry& registry, const std::string& type);
// "pretrain, sft, reward, rlhf": the types in registration order, joined by `separator`; only
// the sweepable ones when `sweepable_only`.
std::string stage_type_names(const StageRegistry& registry, const std::string& separator = ", ",
                             bool sweepable_only = false);

// A StageType from a typed parser and runner: the std::any holds a Config.
template <typename Config>
StageType typed_stage_type(std::function<Config(const StageEntry&, ConfigErrors&)> parse,
                           std::function<nlohmann::json(const Recipe&, const Config&)> run) {
  StageType stage;
  stage.parse = [parse](const StageEntry& entry, ConfigErrors& errors) {
    return std::any(parse(entry, errors));
  };
  stage.run = [run](const Recipe& recipe, const std::any& config) {
    return run(recipe, std::any_cast<const Config&>(config));
  };
  return stage;
}

}  // namespace tiller
