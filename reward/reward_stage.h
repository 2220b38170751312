// The pairwise reward-model stage: a scalar head on the transformer trained with the
// Bradley-Terry loss on preference pairs, normalised after training, saved as
// LlamaForSequenceClassification. parse -> build model, data, optimizer -> resume -> train ->
// normalise -> save final/.
#pragma once
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "common/data/preference_data.h"
#include "common/dist/process_group.h"
#include "common/model/transformer.h"
#include "common/recipe/recipe.h"
#include "common/recipe/stage_registry.h"
#include "common/train/train_config.h"

namespace tiller {

struct RewardStageConfig {
  std::string name;
  std::string init;            // "@base", "@stage" or a model directory
  PreferenceDataOptions data;  // data.max_seq_len = train.max_seq_len
  std::string val_path;        // a validation file, or empty to split val_fraction off train
  double val_fraction = 0.1;
  bool use_margin = true;    // subtract each pair's "margin" inside the loss
  double center_coef = 0.0;  // reward centering: + center_coef * mean over pairs of (r_c + r_r)^2
  // The set whose mean reward is made 0 after training: "val_chosen", "train_chosen", "none", or
  // a preference file (in data.format) whose chosen responses are the reference.
  std::string normalize_reference = "val_chosen";
  TrainConfig train;  // batch_size and micro_batch_size count pairs
};

// Parses a reward stage body; mistakes go to `errors` with their paths.
RewardStageConfig parse_reward_stage(const StageEntry& entry, ConfigErrors& errors);

// Every value the stage runs with, defaults included, as stage-body sections (init, data, loss,
// normalize, train): the resolved recipe's, which parse_reward_stage reads back to the same
// config. normalize.reference is the set the offset is taken on.
nlohmann::json reward_stated_values(const RewardStageConfig& config);

// The Bradley-Terry loss of a batch of pairs, summed (the caller divides by the step's pair count
// so that micro-batches accumulate exactly):
//   sum_i [ -log sigmoid(chosen_i - rejected_i - margin_i) + center_coef * (chosen_i +
//   rejected_i)^2 ]
// chosen, rejected, margin: [P] float. Returns a scalar.
torch::Tensor pairwise_loss_sum(const torch::Tensor& chosen, const torch::Tensor& rejected,
                                const torch::Tensor& margin, double center_coef);

// Figures over a set of pairs (rewards as scored, i.e. after any offset).
struct RewardEvalResult {
  int64_t pairs = 0;
  double accuracy = 0;         // fraction with r_chosen > r_rejected
  double loss = 0;             // mean -log sigmoid(r_c - r_r - margin)
  double margin = 0;           // mean r_chosen - r_rejected
  double chosen_reward = 0;    // mean r_chosen
  double rejected_reward = 0;  // mean r_rejected
  PreferenceStats data;        // what loading the file dropped (evaluate_reward_model)
};

// Scores the pairs with `model` (no autograd), `micro_batch` pairs per forward, at most
// `max_batches` forwards (0: all); rewards are raw scores minus `offset`. The batches are dealt
// round-robin to the members of `group` and the figures summed over them.
RewardEvalResult evaluate_pairs(TransformerImpl& model, const std::vector<PreferencePair>& pairs,
                                int64_t pad_id, int64_t micro_batch, int64_t max_batches,
                                double offset, bool use_margin = true, bool bf16 = false,
                                const dist::Group& group = dist::Group());

// `tiller eval reward`: loads a reward-model directory and scores a preference file, tokenized
// exactly as training tokenizes (load_preference_pairs). An empty template or a max_seq_len of 0
// takes the value the model recorded in training (else "chatml" and max_position_embeddings).
RewardEvalResult evaluate_reward_model(const std::string& model_dir, const std::string& data_path,
                                       const std::string& format = "preference",
                                       const std::string& template_name = "",
                                       int64_t max_seq_len = 0);

// Runs the stage to completion (resuming from RUN_DIR/<name>/checkpoints when present) and
// writes RUN_DIR/<name>/final/. Returns a summary.
nlohmann::json run_reward_stage(const Recipe& recipe, const RewardStageConfig& config);

// The registry's entry for reward-model stages: parser, runner, summary and report.
StageType reward_stage_type();

}  // namespace tiller
