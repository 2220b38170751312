// One iteration of the GRPO family over in-memory models: sample G responses per prompt with the
// policy's own weights (the prompt prefilled once per group), then, once the stage has scored
// them, group-relative advantages and one or more clipped policy updates. No critic. The recipe
// stage (rlhf/grpo_stage) does the data, the reward functions, dynamic sampling and checkpoints;
// tests drive this directly.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include "common/dist/process_group.h"
#include "common/model/transformer.h"
#include "common/rollout/generator.h"
#include "common/train/parallel_adamw.h"
#include "rlhf/grpo_math.h"

namespace tiller {

class NonFiniteGuard;

struct GrpoOptions {
  std::string algorithm = "grpo";  // grpo | dr_grpo | dapo | rloo | reinforce_pp
  SamplingOptions sampling;        // max_new_tokens, temperature, eos_id, pad_id
  int64_t group_size = 8;          // G responses per prompt
  // The KL to the reference: a k3 loss term with this weight (reinforce_pp: a k1 penalty in the
  // per-token rewards instead). 0: no KL, and no reference is needed.
  double beta = 0.04;
  int64_t epochs = 1;                      // policy updates per batch (mu); 1: the ratio is 1
  int64_t mini_batch_size = 0;             // episodes per optimizer step (0: the whole batch)
  int64_t micro_batch_size = 8;            // episodes per forward/backward
  double clip_low = 0.2, clip_high = 0.2;  // ratio clipped to [1 - low, 1 + high]
  // token_mean | sequence_mean | sequence_sum_constant (grpo_math.h); its constant is
  // max_new_tokens.
  std::string loss_aggregation = "sequence_mean";
  double grad_clip = 1.0;  // <= 0: no clipping
  bool bf16 = false;
  // A micro-batch's samples of one prompt share one computation of it in the training and
  // reference passes (common/rollout/shared_prompt.h); false: one row per sample.
  bool share_prompts = true;

  bool needs_reference() const { return beta > 0; }
};

// A batch of whole groups, laid out for the passes; every [N, R] tensor is 0 where mask is.
struct GroupBatch {
  GenerationBatch generation;  // N = groups * group_size rows, group after group
  int64_t group_size = 1;
  torch::Tensor sequence_ids, sequence_mask;  // [N, P + R]
  torch::Tensor mask;                         // [N, R] float
  torch::Tensor old_logprobs;  // [N, R] the policy's before the update (undefined when mu = 1
                               // and the algorithm needs none: the ratio is then 1)
  torch::Tensor ref_logprobs;  // [N, R] (defined when the options need the reference)
  torch::Tensor scores;        // [N] the weighted reward sum
  torch::Tensor advantages;    // [N, R]

  int64_t size() const { return mask.size(0); }
  int64_t groups() const { return size() / group_size; }
};

struct GrpoLearnStats {
  double policy_loss = 0, kl = 0, clipfrac_low = 0, clipfrac_high = 0;
  double entropy = 0;  // mean over response tokens, at the first pass
  double grad_norm = 0;
  int64_t updates = 0, skipped_updates = 0;
  double seconds = 0;
};

class GrpoTrainer {
 public:
  // The models must outlive the trainer; reference may be null when options need none. Under
  // data parallel (`group`, the optimizer's) every rank holds the whole batch, computes the
  // log-probs of its shard of the rows (shard_of) and trains on its shard of each minibatch; the
  // optimizer sums the gradients, so an update is the one process's on the same batch.
  GrpoTrainer(GrpoOptions options, TransformerImpl& actor, TransformerImpl* reference,
              ParallelAdamW& optimizer, const dist::Group& group = dist::Group());

  // G responses to each prompt (G: group_size, or options.group_size when 0): row b * G + g
  // samples prompt b with row_seeds[b * G + g].
  GenerationBatch sample(const std::vector<std::vector<int64_t>>& prompts,
                         const std::vector<uint64_t>& row_seeds, int64_t group_size = 0);

  // The scored batch ready to learn from: log-probs the algorithm needs and the advantages.
  GroupBatch prepare(GenerationBatch generation, const torch::Tensor& scores);

  // options.epochs passes over the batch in shuffled minibatches (order from shuffle_seed). A
  // guard, when given, may refuse a non-finite update.
  GrpoLearnStats learn(const GroupBatch& batch, uint64_t shuffle_seed,
                       NonFiniteGuard* guard = nullptr, int64_t step_for_guard = 0);

  // The policy's (and the reference's, when there is one) log-probs of a batch's responses,
  // without gradients: [N, R] each (ref undefined without a reference). Every rank of the group
  // passes the whole batch and gets every row's back.
  std::pair<torch::Tensor, torch::Tensor> logprobs(const GenerationBatch& generation);

  const GrpoOptions& options() const { return options_; }

 private:
  // The model's log-probs [b, R] of rows `rows` (autograd as the caller's mode), and the
  // entropy at each position when asked.
  std::pair<torch::Tensor, torch::Tensor> pass(TransformerImpl& model, const GroupBatch& batch,
                                               const torch::Tensor& rows, bool entropy);
  // The model's log-probs of every row, without gradients: this rank's shard in micro-batches,
  // then gathered from every rank.
  torch::Tensor all_rows_logprobs(TransformerImpl& model, const GroupBatch& batch);
  void learn_minibatch(const GroupBatch& batch, const std::vector<int64_t>& minibatch, bool first,
                       NonFiniteGuard* guard, int64_t step_for_guard, GrpoLearnStats& s);

  GrpoOptions options_;
  TransformerImpl& actor_;
  TransformerImpl* reference_;
  ParallelAdamW& optimizer_;
  dist::Group group_;
};

// The default loss aggregation of each algorithm: grpo and rloo sequence_mean, dr_grpo
// sequence_sum_constant, dapo and reinforce_pp token_mean.
std::string default_loss_aggregation(const std::string& algorithm);

}  // namespace tiller
