#include "common/recipe/stage_registry.h"

namespace tiller {

const StageType* find_stage_type(const StageRegistry& registry, const std::string& type) {
  for (const StageType& stage : registry)
    if (stage.type == type) return &stage;
  return nullptr;
}

std::string stage_type_names(const StageRegistry& registry, const std::string& separator,
                             bool sweepable_only) {
  std::string names;
  for (const StageType& stage : registry) {
    if (sweepable_only && !stage.sweepable) continue;
    names += (names.empty() ? "" : separator) + stage.type;
  }
  return names;
}

}  // namespace tiller
