// The recipe pipeline behind `tiller run` and `tiller <type>`: loads a recipe, parses every stage
// with its registered type (all mistakes reported at once, before anything runs), writes the
// resolved recipe, then runs the stages in order: a finished stage is skipped (when its
// fingerprint still matches), an interrupted one resumes from its checkpoints; `--only`,
// `--from` and `--until` choose the stages; the run's summary table closes it.
#pragma once
#include <any>
#include <string>
#include <vector>

#include "common/recipe/recipe.h"
#include "common/recipe/stage_registry.h"

namespace tiller {

struct PipelineOptions {
  std::string path;  // the recipe file
  std::vector<std::string> overrides;
  bool check_only = false;        // --check: parse and validate, run nothing
  std::string only, from, until;  // stage names
  std::string only_type;          // `tiller <type> R.json`: the recipe's one stage of this type
  // `tiller --threads N`: wins over the recipe's run.threads (said on stdout when the recipe sets
  // it too); -1: not given.
  int threads = -1;
};

// One stage of a recipe, parsed.
struct ParsedStage {
  std::string name;
  const StageType* type = nullptr;
  std::any config;  // the type's config struct
};

// Parses every stage of `recipe` with its registered type; an unregistered type is a mistake at
// stages[i].type. Mistakes go to `errors`. (run_pipeline also refuses run.tensor_parallel > 1
// beside a stage whose type does not run under it.)
std::vector<ParsedStage> parse_stages(const StageRegistry& registry, const Recipe& recipe,
                                      ConfigErrors& errors);

// `tiller run` and friends: returns the process's exit code; throws tiller::Error (all of the
// recipe's mistakes in one message) and Interrupted.
int run_pipeline(const StageRegistry& registry, const PipelineOptions& options);

// The run's closing table from the stages' complete.json files and their types' summary rows,
// printed and written to RUN_DIR/summary.json for the report.
void write_run_summary(const StageRegistry& registry, const Recipe& recipe);

}  // namespace tiller
