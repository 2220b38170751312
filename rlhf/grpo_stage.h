// The grpo stage: online RL with verifiable rewards, critic-free. Each iteration draws prompts
// (with reference answers), samples G responses to each with the policy's own weights, scores
// them with the recipe's reward functions (rlhf/reward_functions.h), and learns from
// group-relative advantages (rlhf/grpo_math.h: grpo, dr_grpo, dapo, rloo, reinforce_pp).
// Checkpoints resume exactly (policy, optimizer, prompt position); the output is an HF directory.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "common/data/prompt_data.h"
#include "common/recipe/lora_section.h"
#include "common/recipe/recipe.h"
#include "common/recipe/stage_registry.h"
#include "rlhf/grpo_trainer.h"
#include "rlhf/reward_functions.h"
#include "rlhf/rl_common.h"

namespace tiller {

struct GrpoStageConfig {
  std::string name;
  std::string policy = "@sft";        // the initial weights: "@stage", "@base" or a dir
  std::string reference;              // default: the policy; not loaded when kl.beta is 0
  PromptDataOptions data;             // format auto | prompt_answer | gsm8k
  int64_t prompts_per_iteration = 8;  // groups per batch (each of grpo.group_size responses)
  GrpoOptions grpo;
  std::vector<RewardFunctionSpec> rewards;
  // DAPO's dynamic sampling: groups whose scores are all equal are dropped and more prompts
  // drawn, up to max_rounds samplings per iteration, until prompts_per_iteration groups are kept.
  bool dynamic_sampling = false;
  int64_t max_sampling_rounds = 4;
  // DAPO's overlong penalty, added to the score: 0 up to max_new_tokens - buffer tokens, then
  // down to -penalty at max_new_tokens. buffer 0: off.
  int64_t overlong_buffer = 0;
  double overlong_penalty = 1.0;
  LoraSection lora;  // enabled: adapters on the policy; a reference that is the policy is its base
  RlTrainOptions train;
  double lr = 1e-6;
  int64_t eval_prompts = 64;  // held out of training
  int64_t eval_every = 0;     // 0: before and after only
  int64_t eval_samples = 0;   // k of pass@k: responses per evaluation prompt (0: group_size)
  int64_t sample_every = 10, sample_count = 4;
};

// Parses a grpo stage body; mistakes go to `errors` with their paths.
GrpoStageConfig parse_grpo_stage(const StageEntry& entry, ConfigErrors& errors);

// Every value the stage runs with, defaults included, for the resolved recipe.
nlohmann::json grpo_stated_defaults(const GrpoStageConfig& config);

// Runs the stage (resuming from RUN_DIR/<name>/checkpoints) and writes RUN_DIR/<name>/final/.
nlohmann::json run_grpo_stage(const Recipe& recipe, const GrpoStageConfig& config);

// The grpo type's registry entry.
StageType grpo_stage_type();

}  // namespace tiller
