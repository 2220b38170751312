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
// Writes RUN_DIR/<stage>/complete.json (atomically) once final/ is in place.
void mark_stage_complete(const Recipe& recipe, const std::string& stage,
                         const nlohmann::json& summary);

// Saves the resolved recipe as RUN_DIR/recipe.json.
void save_resolved_recipe(const Recipe& recipe);

}  // namespace tiller
