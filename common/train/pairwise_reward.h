// The pairwise (Bradley-Terry) reward-model loss, batches of preference pairs, and the figures of a
// reward model over a set of pairs: shared by the reward stage and `tiller eval reward`.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/data/preference_data.h"
#include "common/dist/process_group.h"
#include "common/model/reward_model.h"
#include "common/model/transformer.h"

namespace tiller {

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

// Pairs [begin, begin + count) of `order` as one forward batch: chosen rows first, then rejected.
struct PairBatch {
  ScoreBatch rows;
  torch::Tensor margin;  // [P]
  int64_t pairs = 0;
  int64_t tokens = 0;
};
PairBatch make_pair_batch(const std::vector<PreferencePair>& pairs,
                          const std::vector<int64_t>& order, size_t begin, size_t count,
                          int64_t pad_id, bool use_margin);

// Running sums of a set of pairs' figures.
struct PairTotals {
  double loss = 0, correct = 0, margin = 0, chosen = 0, rejected = 0;
  int64_t pairs = 0;
  // chosen_r, rejected_r, margin_r: [P].
  void add(const torch::Tensor& chosen_r, const torch::Tensor& rejected_r,
           const torch::Tensor& margin_r);
  // Sums over the ranks of a data-parallel group.
  void reduce(const dist::Group& group);
  RewardEvalResult result() const;
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

}  // namespace tiller
