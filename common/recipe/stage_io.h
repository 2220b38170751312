// Stage inputs and outputs inside a run directory: "@base" / "@stage" references resolved to
// model directories, and the completion marker written after a stage's final/ directory.
#pragma once
#include <nlohmann/json.hpp>

#include <string>

#include "common/recipe/recipe.h"

namespace tiller {

// "@base": the recipe's base (a llama2.c base is converted once into RUN_DIR/base/final);
// "@name": RUN_DIR/name/final, which must be complete; anything else: a model directory path.
std::string resolve_model_reference(const Recipe& recipe, const std::string& reference);

// RUN_DIR/<stage>/final
std::string stage_output_dir(const Recipe& recipe, const std::string& stage);
bool stage_complete(const Recipe& recipe, const std::string& stage);

// What a stage's outputs depend on, as a hex digest: its resolved config, the run's seed, the
// contents of the files and directories its config names (data, tokenizers, model directories),
// and the fingerprints of the earlier stages it refers to ("@name", "@base"). "base" names the
// recipe's base.
std::string stage_fingerprint(const Recipe& recipe, const std::string& stage);

// Throws tiller::Error when RUN_DIR/<stage> was completed with another fingerprint: its outputs
// came from a different config or different inputs and must not be reused.
void check_stage_reusable(const Recipe& recipe, const std::string& stage);

// Writes RUN_DIR/<stage>/complete.json (atomically) once final/ is in place, with the stage's
// fingerprint added to the summary.
void mark_stage_complete(const Recipe& recipe, const std::string& stage,
                         const nlohmann::json& summary);

// Saves the resolved recipe as RUN_DIR/recipe.json, after `comment` lines (each written as a
// "// " line, which load_recipe skips, so the file stays a valid recipe).
void save_resolved_recipe(const Recipe& recipe, const std::vector<std::string>& comment = {});

}  // namespace tiller
