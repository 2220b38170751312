// Reward models: a scalar-head Transformer, the metadata its training recorded in config.json
// (the normalisation offset, chat template, length limit), and batched scoring of token sequences.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include "common/model/shared_prefix.h"
#include "common/model/transformer.h"

namespace tiller {

// Written into config.json next to the HF keys (transformers keeps unknown keys as config
// attributes). Hugging Face's LlamaForSequenceClassification `score` has no bias, and no weight
// change can add a constant to a head that reads an RMS-normalised state, so the normalisation is
// an offset: reward = head score - tiller_reward_offset (also in transformers: subtract
// config.tiller_reward_offset from the logit).
struct RewardMetadata {
  double offset = 0.0;        // "tiller_reward_offset": mean raw score over the reference set
  std::string template_name;  // "tiller_chat_template": the template the model was trained with
  int64_t max_seq_len = 0;    // "tiller_max_seq_len": the training length limit (0: unknown)
};

RewardMetadata read_reward_metadata(const std::string& dir);
// Adds the metadata to DIR/config.json (replaced atomically).
void write_reward_metadata(const std::string& dir, const RewardMetadata& metadata);

struct RewardModel {
  Transformer model{nullptr};
  RewardMetadata metadata;
};

// load_reward_model and reward_pad_id: common/io/reward_model_dir.h.

// Sequences laid in a padded batch: input_ids, attention_mask [N, T] (T: the longest).
struct ScoreBatch {
  torch::Tensor input_ids;       // [N, T] int64
  torch::Tensor attention_mask;  // [N, T] int64, 1 on real tokens
};
ScoreBatch make_score_batch(const std::vector<const std::vector<int64_t>*>& sequences,
                            int64_t pad_id, bool left_pad = false);

// Raw head scores [N] read at each row's last real token (autograd on; no offset). Rows of a
// right-padded batch named in `shared_prefixes` are computed behind one copy of the tokens they
// begin with (common/model/shared_prefix.h): the same scores to rounding. `packed`, when given,
// says whether they were.
torch::Tensor raw_scores(TransformerImpl& model, const ScoreBatch& batch,
                         const std::vector<PrefixGroup>& shared_prefixes = {},
                         bool* packed = nullptr);

// Rewards (raw score - offset) of whole sequences, micro_batch at a time, without autograd.
std::vector<double> score_sequences(TransformerImpl& model,
                                    const std::vector<std::vector<int64_t>>& sequences,
                                    int64_t pad_id, int64_t micro_batch, double offset = 0.0);

}  // namespace tiller
