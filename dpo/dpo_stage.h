// The dpo stage: a causal LM trained directly on preference pairs with a loss of the DPO family
// (dpo/dpo_loss.h), against a frozen reference whose log-probabilities are computed once and
// cached (dpo/reference_cache.h) or computed live. parse -> build the policy, the data, the
// reference log-probs, the optimizer -> resume -> train -> evaluate -> save final/.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "common/data/preference_data.h"
#include "common/data/prompt_data.h"
#include "common/recipe/lora_section.h"
#include "common/recipe/recipe.h"
#include "common/recipe/stage_registry.h"
#include "common/train/train_config.h"
#include "dpo/dpo_loss.h"
#include "rlhf/ground_truth.h"

namespace tiller {

class Tokenizer;

// Optional sampling check after training: responses of the initial policy and of the trained one
// to held-out prompts (same seeds), judged by a ground-truth rule, with the KL to the reference.
struct DpoSampleEval {
  PromptDataOptions prompts;  // empty path: no sampling check
  int64_t count = 64;         // prompts used (the file's first ones)
  int64_t max_new_tokens = 32;
  double temperature = 1.0;
  GroundTruthRule ground_truth;
};

struct DpoStageConfig {
  std::string name;
  std::string init;       // the policy: "@sft", "@base" or a model directory
  std::string reference;  // "": the policy's initial weights; else "@stage" or a directory
  std::string reference_mode = "cache";  // cache: computed once before training; live: per step
  PreferenceDataOptions data;            // data.max_seq_len = train.max_seq_len
  std::string val_path;                  // a validation file, or empty to split val_fraction
  double val_fraction = 0.1;
  PreferenceLossOptions loss;
  int64_t cache_chunk_pairs = 256;
  DpoSampleEval sample_eval;
  // Each pair's chosen and rejected rows computed behind one copy of the tokens they begin with
  // (dpo/pair_log_probs.h), in training, the reference's log-probs and validation.
  bool share_prefixes = true;
  TrainConfig train;  // batch_size and micro_batch_size count pairs
  // enabled: adapters on the policy; the default reference is the policy with them switched off
  LoraSection lora;
};

// Parses a dpo stage body; mistakes go to `errors` with their paths.
DpoStageConfig parse_dpo_stage(const StageEntry& entry, ConfigErrors& errors);

// The values the stage runs with, for the resolved recipe.
nlohmann::json dpo_stated_defaults(const DpoStageConfig& config);

// The stage's training and validation pairs: pair formats as read, rankings ("ranking", "oasst")
// as all their pairs, unweighted, split by whole rankings.
struct DpoData {
  std::vector<PreferencePair> train, val;
  PreferenceStats stats, val_stats;
};
DpoData load_dpo_data(const Recipe& recipe, const DpoStageConfig& config,
                      const Tokenizer& tokenizer);

// Runs the stage to completion (resuming from RUN_DIR/<name>/checkpoints when present) and
// writes RUN_DIR/<name>/final/. Returns a summary.
nlohmann::json run_dpo_stage(const Recipe& recipe, const DpoStageConfig& config);

// The registry's entry for dpo stages: parser, runner, summary and report.
StageType dpo_stage_type();

}  // namespace tiller
