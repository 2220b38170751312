// The recipe's `prepare` stage: `tiller data prepare` as a stage, so that a recipe goes raw text ->
// shards -> pretrain -> sft. Its output, RUN_DIR/<stage>/final, is a shards directory that a
// pretrain stage names as "@<stage>" (data.format: shards).
#pragma once
#include "common/recipe/stage_registry.h"
#include "prepare/prepare.h"

namespace tiller {

struct PrepareStageConfig {
  std::string name;
  PrepareConfig prepare;  // output and seed unset: the stage's final/ and the run's seed
};

StageType prepare_stage_type();

}  // namespace tiller
