// The stage registry: every stage type a recipe may name, one registration line each. It lives
// above common/ (which must not include the stage folders) and below the CLI, the report, the
// sweep and the bench, which read it.
#pragma once
#include <any>

#include "common/recipe/config_reader.h"
#include "common/recipe/recipe.h"
#include "common/recipe/stage_registry.h"

namespace tiller {

const StageRegistry& stage_registry();

// Parses one stage with its registered type (an unregistered type is reported in `errors`, with
// an empty result): for tests and tools that hold a single StageEntry.
std::any parse_stage(const StageEntry& entry, ConfigErrors& errors);

}  // namespace tiller
