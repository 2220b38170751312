#include "stages/stage_types.h"

#include "common/recipe/pipeline.h"
#include "dpo/dpo_stage.h"
#include "prepare/prepare_stage.h"
#include "rlhf/grpo_stage.h"
#include "reward/reward_stage.h"
#include "rlhf/rlhf_stage.h"
#include "sft/sft_stage.h"

namespace tiller {

namespace {

StageType registered(const char* name, StageType type) {
  type.type = name;
  return type;
}

}  // namespace

const StageRegistry& stage_registry() {
  // A new stage type: its folder, and one line here.
  static const StageRegistry registry = {
      registered("prepare", prepare_stage_type()),
      registered("pretrain", sft_stage_type(/*pretrain=*/true)),
      registered("sft", sft_stage_type(/*pretrain=*/false)),
      registered("reward", reward_stage_type()),
      registered("rlhf", rlhf_stage_type()),
      registered("dpo", dpo_stage_type()),
      registered("grpo", grpo_stage_type()),
  };
  return registry;
}

std::any parse_stage(const StageEntry& entry, ConfigErrors& errors) {
  Recipe one;
  one.stages = {entry};
  const auto parsed = parse_stages(stage_registry(), one, errors);
  if (parsed.empty())
    errors.add(entry.path + ".type",
               "'" + entry.type + "' is not one of: " + stage_type_names(stage_registry()));
  return parsed.empty() ? std::any() : parsed[0].config;
}

}  // namespace tiller
