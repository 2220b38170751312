#include "rlhf/grpo_math.h"

#include <cmath>

#include "common/util/error.h"
#include "rlhf/ppo_math.h"

namespace tiller::grpo {

namespace {

// scores [B * G] -> [B, G], checked.
torch::Tensor as_groups(const torch::Tensor& scores, int64_t group_size) {
  check(group_size >= 1 && scores.dim() == 1 && scores.size(0) % group_size == 0,
        "grpo: " + std::to_string(scores.numel()) + " scores do not make groups of " +
            std::to_string(group_size));
  return scores.view({-1, group_size});
}

}  // namespace

torch::Tensor group_advantages(const torch::Tensor& scores, int64_t group_size,
                               const std::string& algorithm) {
  const auto groups = as_groups(scores, group_size);
  const auto mean = groups.mean(1, /*keepdim=*/true);
  torch::Tensor advantages;
  if (algorithm == "grpo" || algorithm == "dapo") {
    const auto std = group_size > 1 ? groups.std(1, /*unbiased=*/true, /*keepdim=*/true)
                                    : torch::zeros_like(mean);
    advantages = (groups - mean) / (std + kStdEpsilon);
  } else if (algorithm == "dr_grpo") {
    advantages = groups - mean;
  } else if (algorithm == "rloo") {
    // r_i - (sum - r_i) / (G - 1) = G / (G - 1) * (r_i - mean).
    advantages = group_size > 1 ? (groups - mean) * (static_cast<double>(group_size) /
                                                     static_cast<double>(group_size - 1))
                                : torch::zeros_like(groups);
  } else {
    throw Error("grpo: no group advantages for algorithm '" + algorithm + "'");
  }
  // All-equal groups: exactly 0, not rounding noise over a tiny std.
  const auto flat = groups_with_signal(scores, group_size).unsqueeze(1);
  return torch::where(flat, advantages, torch::zeros_like(advantages)).reshape({-1});
}

torch::Tensor reinforce_pp_advantages(const torch::Tensor& scores, const torch::Tensor& logp,
                                      const torch::Tensor& ref_logp, const torch::Tensor& mask,
                                      double beta) {
  const auto rewards = ppo::token_rewards(ppo::kl_k1(logp, ref_logp) * mask,
                                          scores.to(logp.scalar_type()), mask, beta);
  // Returns to the end: a reversed cumulative sum along the tokens.
  const auto returns = rewards.flip(1).cumsum(1).flip(1) * mask;
  return ppo::masked_whiten(returns, mask);
}

torch::Tensor groups_with_signal(const torch::Tensor& scores, int64_t group_size) {
  const auto groups = as_groups(scores, group_size);
  return std::get<0>(groups.max(1)) > std::get<0>(groups.min(1));
}

torch::Tensor overlong_penalty(const torch::Tensor& lengths, int64_t max_tokens, int64_t buffer,
                               double factor) {
  check(buffer >= 1 && buffer <= max_tokens,
        "grpo: the overlong buffer must be in [1, max_tokens]");
  const auto expected = static_cast<double>(max_tokens - buffer);
  const auto over = (lengths.to(torch::kFloat) - expected).clamp(0, static_cast<double>(buffer));
  return -over / static_cast<double>(buffer) * factor;
}

torch::Tensor aggregate(const torch::Tensor& token_loss, const torch::Tensor& mask,
                        const Aggregation& a) {
  const auto masked = token_loss * mask;
  if (a.mode == "token_mean") return masked.sum() / a.minibatch_tokens;
  if (a.mode == "sequence_mean") {
    const auto per_sequence = masked.sum(1) / mask.sum(1).clamp_min(1);
    return per_sequence.sum() / a.minibatch_sequences;
  }
  if (a.mode == "sequence_sum_constant") return masked.sum() / a.constant / a.minibatch_sequences;
  throw Error("grpo: unknown loss aggregation '" + a.mode + "'");
}

PolicyLoss policy_loss(const torch::Tensor& logp, const torch::Tensor& old_logp,
                       const torch::Tensor& ref_logp, const torch::Tensor& advantages,
                       const torch::Tensor& mask, double eps_low, double eps_high, double beta,
                       const Aggregation& aggregation) {
  PolicyLoss out;
  out.ratio = torch::exp(logp - old_logp);
  const auto unclipped = -advantages * out.ratio;
  const auto clipped = -advantages * out.ratio.clamp(1 - eps_low, 1 + eps_high);
  auto token_loss = torch::max(unclipped, clipped);
  if (beta > 0) {
    const auto k3 = ppo::kl_k3(logp, ref_logp);
    token_loss = token_loss + beta * k3;
    out.kl = ppo::masked_mean(k3.detach(), mask);
  } else {
    out.kl = torch::zeros({}, logp.options());
  }
  out.loss = aggregate(token_loss, mask, aggregation);
  const auto ratio = out.ratio.detach();
  const auto low = (ratio < 1 - eps_low).logical_and(advantages < 0);
  const auto high = (ratio > 1 + eps_high).logical_and(advantages > 0);
  out.clipfrac_low = ppo::masked_mean(low.to(logp.scalar_type()), mask);
  out.clipfrac_high = ppo::masked_mean(high.to(logp.scalar_type()), mask);
  return out;
}

double pass_at_k(int64_t n, int64_t c, int64_t k) {
  check(n >= 1 && c >= 0 && c <= n && k >= 1 && k <= n, "pass_at_k: need 0 <= c <= n, 1 <= k <= n");
  if (n - c < k) return 1.0;
  // prod_{i = n - c + 1}^{n} (1 - k / i), as in Codex's numerically stable form.
  double fail = 1.0;
  for (int64_t i = n - c + 1; i <= n; ++i)
    fail *= 1.0 - static_cast<double>(k) / static_cast<double>(i);
  return 1.0 - fail;
}

}  // namespace tiller::grpo
