// The reward model's losses on comparisons (pairs, Bradley-Terry; rankings, InstructGPT), the
// forward batches they are computed on, and the figures of a reward model over a set of pairs or
// rankings: shared by the reward stage and `tiller eval reward`.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/data/preference_data.h"
#include "common/data/ranking_data.h"
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

// InstructGPT's loss on rankings, summed over comparisons (the caller divides by the step's
// ranking count): sum_c weight_c * [ -log sigmoid(better_c - worse_c) + center_coef * (better_c +
// worse_c)^2 ] where weight_c is 1/(comparisons of c's ranking), 1/C(K,2) without ties, so each
// ranking weighs 1. better, worse, weight: [C] float (scores gathered from one forward of every
// response). Returns a scalar.
torch::Tensor ranking_loss_sum(const torch::Tensor& better, const torch::Tensor& worse,
                               const torch::Tensor& weight, double center_coef);

// Figures over a set of pairs, or the comparisons of a set of rankings (rewards as scored, i.e.
// after any offset).
struct RewardEvalResult {
  int64_t pairs = 0;           // pairs, or comparisons
  double accuracy = 0;         // fraction with r_chosen > r_rejected
  double loss = 0;             // mean -log sigmoid(r_c - r_r - margin)
  double margin = 0;           // mean r_chosen - r_rejected
  double chosen_reward = 0;    // mean r_chosen
  double rejected_reward = 0;  // mean r_rejected
  PreferenceStats data;        // what loading the file dropped (evaluate_reward_model)
};

// One forward batch: every sequence of its examples once, and the comparisons among the rows.
// A pair is two rows and one comparison; a ranking of K responses is K rows and its comparisons.
struct ComparisonBatch {
  ScoreBatch rows;       // [R, T]
  torch::Tensor better;  // [C] int64: the preferred row of each comparison
  torch::Tensor worse;   // [C] int64
  torch::Tensor margin;  // [C] float (0 for rankings)
  torch::Tensor weight;  // [C] float, rankings only: 1/(its ranking's comparisons); undefined
                         // for pairs, which pairwise_loss_sum weighs 1 each
  int64_t tokens = 0;
  // The rows that begin alike (a pair's two, a ranking's), with the tokens they share.
  std::vector<PrefixGroup> shared_prefixes;
  int64_t responses() const { return rows.input_ids.size(0); }
  // The rows' raw scores [R] (raw_scores), each group's beginning computed once when
  // share_prefixes (and the model's shape makes that cheaper: `packed`, when given, says).
  torch::Tensor scores(TransformerImpl& model, bool share_prefixes, bool* packed = nullptr) const;
};

// Pairs [begin, begin + count) of `order`: chosen rows first, then rejected.
ComparisonBatch make_pair_batch(const std::vector<PreferencePair>& pairs,
                                const std::vector<int64_t>& order, size_t begin, size_t count,
                                int64_t pad_id, bool use_margin);

// Rankings [begin, begin + count) of `order`: each response one row, its comparisons gathered.
ComparisonBatch make_ranking_batch(const std::vector<TokenizedRanking>& rankings,
                                   const std::vector<int64_t>& order, size_t begin, size_t count,
                                   int64_t pad_id);

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

// The examples a reward stage trains or validates on: pairs (the pair formats, or rankings
// expanded to pairs) or rankings (trained with ranking_loss_sum).
struct RewardExamples {
  std::vector<PreferencePair> pairs;
  std::vector<TokenizedRanking> rankings;
  bool listwise = false;  // the rankings are the examples

  size_t size() const { return listwise ? rankings.size() : pairs.size(); }
  bool empty() const { return size() == 0; }
  int64_t comparisons() const {
    if (!listwise) return static_cast<int64_t>(pairs.size());
    int64_t n = 0;
    for (const auto& ranking : rankings)
      n += static_cast<int64_t>(ranking_comparisons(ranking.ranks).size());
    return n;
  }
  ComparisonBatch batch(const std::vector<int64_t>& order, size_t begin, size_t count,
                        int64_t pad_id, bool use_margin) const {
    return listwise ? make_ranking_batch(rankings, order, begin, count, pad_id)
                    : make_pair_batch(pairs, order, begin, count, pad_id, use_margin);
  }
};

// Scores `examples` in order, `micro_batch` examples per forward, at most `max_batches` forwards
// (0: all), dealt round-robin to the ranks of `group`, without autograd.
RewardEvalResult evaluate_examples(TransformerImpl& model, const RewardExamples& examples,
                                   int64_t pad_id, int64_t micro_batch, int64_t max_batches,
                                   double offset, bool use_margin, bool bf16, bool share_prefixes,
                                   const dist::Group& group);

// Scores the pairs with `model` (no autograd), `micro_batch` pairs per forward, at most
// `max_batches` forwards (0: all); rewards are raw scores minus `offset`. The batches are dealt
// round-robin to the members of `group` and the figures summed over them. Each pair's beginning
// is computed once (ComparisonBatch::scores), as in every scoring without a recipe to say
// otherwise.
RewardEvalResult evaluate_pairs(TransformerImpl& model, const std::vector<PreferencePair>& pairs,
                                int64_t pad_id, int64_t micro_batch, int64_t max_batches,
                                double offset, bool use_margin = true, bool bf16 = false,
                                const dist::Group& group = dist::Group());

// evaluate_pairs over all comparisons of the rankings (ties excluded), `micro_batch` rankings per
// forward, each response scored once.
RewardEvalResult evaluate_rankings(TransformerImpl& model,
                                   const std::vector<TokenizedRanking>& rankings, int64_t pad_id,
                                   int64_t micro_batch, int64_t max_batches, double offset,
                                   bool bf16 = false, const dist::Group& group = dist::Group());

// `tiller eval reward`: loads a reward-model directory and scores a preference file, tokenized
// exactly as training tokenizes (load_preference_pairs). An empty template or a max_seq_len of 0
// takes the value the model recorded in training (else "chatml" and max_position_embeddings).
// The ranking formats are scored over all comparisons (evaluate_rankings): `pairs` counts them,
// and data.identical counts responses dropped as identical.
RewardEvalResult evaluate_reward_model(const std::string& model_dir, const std::string& data_path,
                                       const std::string& format = "preference",
                                       const std::string& template_name = "",
                                       int64_t max_seq_len = 0);

}  // namespace tiller
