// The PPO-based RLHF stage: loads the actor (policy), a frozen reference, the frozen reward model
// and a critic initialised from it; each iteration draws a batch of prompts, rolls out with the
// actor's own weights, and learns with PpoTrainer. Checkpoints resume exactly (actor, critic, both
// optimizers, KL coefficient, prompt position); the output actor is an HF directory.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "common/data/prompt_data.h"
#include "common/recipe/lora_section.h"
#include "common/recipe/recipe.h"
#include "common/recipe/stage_registry.h"
#include "common/train/parallel_adamw.h"
#include "rlhf/ground_truth.h"
#include "rlhf/ppo_trainer.h"
#include "rlhf/rl_common.h"

namespace tiller {

struct RlhfStageConfig {
  std::string name;
  std::string policy = "@sft";  // the actor's initial weights: "@stage", "@base" or a dir
  std::string reference;        // default: the policy
  std::string reward_model = "@reward";
  std::string critic;  // default: the reward model
  PromptDataOptions data;
  int64_t eval_prompts = 32;           // prompts held out of training for the evaluation rollouts
  int64_t eval_every = 0;              // iterations between evaluations (0: first and last only)
  std::vector<std::string> baselines;  // other policies ("@base", dirs) evaluated once, beside
  int64_t batch_size = 16;             // episodes per iteration
  int64_t reward_max_seq_len = 0;      // the RM's sequence limit (0: what the RM was trained with)
  PpoOptions ppo;
  double beta = 0.05;    // initial KL coefficient
  double kl_target = 0;  // adaptive controller target (0: fixed beta)
  double kl_horizon = 10000;
  double kl_max = 0;  // a bound on the evaluation KL reported at the end (0: none)
  LoraSection lora;   // enabled: adapters on the policy; a reference that is the policy is its base
  // enabled: adapters on the critic, its score head trained whole; a critic that is the reward
  // model shares the reward model's frozen weights (one copy)
  LoraSection critic_lora;
  RlTrainOptions train;  // iterations, schedule, optimizer, checkpoints, precision
  double actor_lr = 1e-5, critic_lr = 1e-5;
  GroundTruthRule ground_truth;
  int64_t sample_every = 10, sample_count = 4;
  // The critic's head at the start: "reward_model" (its head, less the reward offset, predicts
  // the unwhitened scores) or "zeros" (the mean of whitened scores); "auto" resolves at parse.
  std::string critic_head = "auto";
  int64_t dump_rollouts = 0;  // the first N iterations' rollouts -> STAGE/rollouts/*.safetensors
};

// Parses an rlhf stage body; mistakes go to `errors` with their paths.
RlhfStageConfig parse_rlhf_stage(const StageEntry& entry, ConfigErrors& errors);

// Every value the stage runs with, defaults included: the models (policy, reference,
// reward_model, critic), then section by section ({"data": {...}, "rollout": {...}, "reward":
// {...}, "kl": {...}, "ppo": {...}, "train": {...}, "eval": {...}, "samples": {...}, and
// "ground_truth" when there is a rule}),
// to be written into the resolved recipe: what it states is what ran, and it runs again as is.
nlohmann::json rlhf_stated_defaults(const RlhfStageConfig& config);

// Runs the stage to completion (resuming from RUN_DIR/<name>/checkpoints when present) and writes
// RUN_DIR/<name>/final/ (the actor). Returns a summary.
nlohmann::json run_rlhf_stage(const Recipe& recipe, const RlhfStageConfig& config);

// The rlhf type's registry entry (stages/stage_types.cpp registers it).
StageType rlhf_stage_type();

}  // namespace tiller
