// The reward-model stage: a scalar head on the transformer trained with the Bradley-Terry loss on
// preference pairs, or with InstructGPT's loss on rankings, normalised after training, saved as
// LlamaForSequenceClassification. parse -> build model, data, optimizer -> resume -> train ->
// normalise -> save final/.
#pragma once
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "common/data/preference_data.h"
#include "common/data/ranking_data.h"
#include "common/dist/process_group.h"
#include "common/model/transformer.h"
#include "common/recipe/lora_section.h"
#include "common/recipe/recipe.h"
#include "common/recipe/stage_registry.h"
#include "common/train/train_config.h"

namespace tiller {

struct RewardStageConfig {
  std::string name;
  std::string init;            // "@base", "@stage" or a model directory
  PreferenceDataOptions data;  // data.max_seq_len = train.max_seq_len; format: preference, hh,
                               // ranking or oasst
  std::string val_path;        // a validation file, or empty to split val_fraction off train
  double val_fraction = 0.1;
  bool use_margin = true;    // subtract each pair's "margin" inside the loss
  double center_coef = 0.0;  // reward centering: + center_coef * mean over pairs of (r_c + r_r)^2
  // Rankings (formats ranking, oasst) only: "instructgpt" trains each ranking as one example, all
  // its comparisons in one batch from one forward per response, weighted 1/C(K,2); "pairs"
  // expands each ranking into its C(K,2) pairs, each an example of its own (two forwards a pair).
  std::string ranking_loss = "instructgpt";
  // The set whose mean reward is made 0 after training: "val_chosen", "train_chosen", "none", or
  // a preference file (in data.format) whose chosen responses are the reference.
  std::string normalize_reference = "val_chosen";
  // A pair's (a ranking's) responses computed behind one copy of the tokens they begin with
  // (ComparisonBatch::scores), in training and validation.
  bool share_prefixes = true;
  TrainConfig train;  // batch_size and micro_batch_size count pairs, or rankings ("instructgpt")
  LoraSection lora;   // enabled: adapters on the init's body; the score head always trains whole
};

// Parses a reward stage body; mistakes go to `errors` with their paths.
RewardStageConfig parse_reward_stage(const StageEntry& entry, ConfigErrors& errors);

// Every value the stage runs with, defaults included, as stage-body sections (init, data, loss,
// normalize, share_prefixes, train): the resolved recipe's, which parse_reward_stage reads back to
// the same config. normalize.reference is the set the offset is taken on.
nlohmann::json reward_stated_values(const RewardStageConfig& config);

// Runs the stage to completion (resuming from RUN_DIR/<name>/checkpoints when present) and
// writes RUN_DIR/<name>/final/. Returns a summary.
nlohmann::json run_reward_stage(const Recipe& recipe, const RewardStageConfig& config);

// The registry's entry for reward-model stages: parser, runner, summary and report.
StageType reward_stage_type();

}  // namespace tiller
