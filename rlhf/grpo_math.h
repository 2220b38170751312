// The math of the GRPO family as pure functions. Episodes come in groups: G responses to one
// prompt, laid out group after group ([B * G] scores, row b * G + g). References:
//   grpo         DeepSeekMath (Shao et al. 2024): A = (r - mean_group) / (std_group + eps)
//   dr_grpo      "Understanding R1-Zero-Like Training" (Liu et al. 2025): A = r - mean_group,
//                token sums divided by a constant (no length bias)
//   dapo         Yu et al. 2025: group-normalised A, clip-higher, token-level loss, dynamic
//                sampling, overlong penalty
//   rloo         Ahmadian et al. 2024: A = r - mean of the other G - 1 rewards of the group
//   reinforce_pp REINFORCE++ (Hu 2025): per-token rewards -beta * k1 plus the score at the end,
//                returns summed to the end, whitened over the batch
// rlhf/grpo_trainer.cpp composes these; tests/grpo_math_test.cpp checks them against hand values.
#pragma once
#include <torch/torch.h>

#include <string>

namespace tiller::grpo {

// The standard deviation's epsilon in grpo/dapo advantages (verl's; TRL uses 1e-4).
constexpr double kStdEpsilon = 1e-6;

// Sequence advantages [B * G] from the scores [B * G] of groups of `group_size`, for algorithm
// grpo, dapo (both: mean/std, the std unbiased), dr_grpo (mean only) or rloo (leave-one-out; a
// group of one has advantage 0). A group whose scores are all equal has advantages 0.
torch::Tensor group_advantages(const torch::Tensor& scores, int64_t group_size,
                               const std::string& algorithm);

// REINFORCE++ token advantages [B, T]: rewards -beta * (logp - ref_logp) at every response token
// plus the score [B] at each row's last real token, summed from each token to the end (gamma 1),
// then whitened over every real token of the batch. 0 on padding.
torch::Tensor reinforce_pp_advantages(const torch::Tensor& scores, const torch::Tensor& logp,
                                      const torch::Tensor& ref_logp, const torch::Tensor& mask,
                                      double beta);

// Whether each group's scores differ (a group with all-equal scores carries no signal): [B] bool.
torch::Tensor groups_with_signal(const torch::Tensor& scores, int64_t group_size);

// DAPO's soft overlong punishment: 0 up to max_tokens - buffer tokens, then falling linearly to
// -factor at max_tokens (and -factor beyond). lengths [N] -> [N] float.
torch::Tensor overlong_penalty(const torch::Tensor& lengths, int64_t max_tokens, int64_t buffer,
                               double factor);

// How each token's loss is reduced to the minibatch's:
//   token_mean            sum over every token / the minibatch's tokens (DAPO)
//   sequence_mean         each sequence's token mean, averaged over sequences (GRPO)
//   sequence_sum_constant each sequence's token sum / `constant`, averaged over sequences
//                         (Dr. GRPO: the constant is max_new_tokens)
// A micro-batch's share is its rows' part of the numerator over the whole minibatch's
// denominator, so the shares of any split add up to the minibatch's loss.
struct Aggregation {
  std::string mode = "sequence_mean";
  double minibatch_tokens = 1;     // token_mean's denominator
  double minibatch_sequences = 1;  // the sequence modes' denominator
  double constant = 1;             // sequence_sum_constant's divisor
};
torch::Tensor aggregate(const torch::Tensor& token_loss, const torch::Tensor& mask,
                        const Aggregation& aggregation);

struct PolicyLoss {
  torch::Tensor loss;           // [] the aggregated loss (policy term + beta * k3 term)
  torch::Tensor kl;             // [] masked token mean of k3(logp, ref_logp) (0 without ref)
  torch::Tensor clipfrac_low;   // [] fraction of tokens clipped below (A < 0, ratio < 1 - eps_low)
  torch::Tensor clipfrac_high;  // [] fraction clipped above (A > 0, ratio > 1 + eps_high)
  torch::Tensor ratio;          // [B, T]
};
// The clipped surrogate with asymmetric clipping, per token -min(ratio * A, clip(ratio, 1 -
// eps_low, 1 + eps_high) * A), plus beta * k3(logp, ref_logp) when beta > 0 (ref_logp then
// defined), aggregated. advantages [B, T] (a sequence advantage broadcast over its tokens).
PolicyLoss policy_loss(const torch::Tensor& logp, const torch::Tensor& old_logp,
                       const torch::Tensor& ref_logp, const torch::Tensor& advantages,
                       const torch::Tensor& mask, double eps_low, double eps_high, double beta,
                       const Aggregation& aggregation);

// The unbiased pass@k estimate from n samples of which c are right (Chen et al. 2021):
// 1 - C(n - c, k) / C(n, k).
double pass_at_k(int64_t n, int64_t c, int64_t k);

}  // namespace tiller::grpo
