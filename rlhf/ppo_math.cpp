#include "rlhf/ppo_math.h"

#include <algorithm>

namespace tiller::ppo {

torch::Tensor masked_mean(const torch::Tensor& x, const torch::Tensor& mask) {
  auto m = mask.to(x.scalar_type());
  return (x * m).sum() / m.sum().clamp_min(1);
}

torch::Tensor masked_var(const torch::Tensor& x, const torch::Tensor& mask) {
  auto m = mask.to(x.scalar_type());
  auto n = m.sum();
  auto mean = (x * m).sum() / n.clamp_min(1);
  auto var = ((x - mean).pow(2) * m).sum() / n.clamp_min(1);
  return var * n / (n - 1).clamp_min(1);  // Bessel's correction
}

torch::Tensor masked_whiten(const torch::Tensor& x, const torch::Tensor& mask, bool shift_mean) {
  auto mean = masked_mean(x, mask);
  auto var = masked_var(x, mask);
  auto whitened = (x - mean) * torch::rsqrt(var + kWhitenEpsilon);
  if (!shift_mean) whitened = whitened + mean;
  return whitened * mask.to(x.scalar_type());
}

torch::Tensor apply_missing_eos_penalty(const torch::Tensor& score,
                                        const torch::Tensor& ended_with_eos, double penalty) {
  TORCH_CHECK(score.sizes() == ended_with_eos.sizes(),
              "apply_missing_eos_penalty: score and ended_with_eos must both be [B]");
  return torch::where(ended_with_eos, score, torch::full_like(score, penalty));
}

torch::Tensor normalize_scores(const torch::Tensor& score, bool whiten, double clip) {
  auto out = score;
  if (whiten && score.numel() > 1) {
    const auto all = torch::ones_like(score, torch::kBool);
    out = masked_whiten(score, all);
  }
  if (clip > 0) out = out.clamp(-clip, clip);
  return out;
}

torch::Tensor explained_variance(const torch::Tensor& values, const torch::Tensor& returns,
                                 const torch::Tensor& mask) {
  auto var_returns = masked_var(returns, mask);
  return 1 - masked_var(returns - values, mask) / var_returns.clamp_min(1e-8);
}

torch::Tensor kl_k1(const torch::Tensor& logp, const torch::Tensor& ref_logp) {
  return logp - ref_logp;
}

torch::Tensor kl_k3(const torch::Tensor& logp, const torch::Tensor& ref_logp) {
  auto log_ratio = ref_logp - logp;
  return log_ratio.exp() - log_ratio - 1;
}

torch::Tensor token_rewards(const torch::Tensor& kl, const torch::Tensor& score,
                            const torch::Tensor& mask, double beta) {
  auto m = mask.to(kl.scalar_type());
  auto rewards = -beta * kl * m;
  // Each row's last real token: the largest index with mask 1.
  const int64_t length = mask.size(1);
  auto idx =
      torch::arange(length, torch::dtype(torch::kLong).device(mask.device())).expand_as(mask);
  auto last =
      std::get<0>(torch::where(mask.to(torch::kBool), idx, torch::full_like(idx, -1)).max(1));
  auto has_tokens = last.ge(0);
  auto rows = torch::arange(mask.size(0), last.options());
  auto bonus = torch::zeros_like(rewards);
  bonus.index_put_({rows, last.clamp_min(0)},
                   score.to(kl.scalar_type()) * has_tokens.to(kl.scalar_type()));
  return rewards + bonus;
}

Advantages gae(const torch::Tensor& rewards, const torch::Tensor& values, const torch::Tensor& mask,
               double gamma, double lam) {
  auto m = mask.to(values.scalar_type());
  const int64_t length = rewards.size(1);
  std::vector<torch::Tensor> reversed;
  auto last_gae = torch::zeros_like(rewards.select(1, 0));
  for (int64_t t = length - 1; t >= 0; --t) {
    // The next step is terminal when it is padding (or past the end).
    auto next_alive = t + 1 < length ? m.select(1, t + 1) : torch::zeros_like(last_gae);
    auto next_value =
        t + 1 < length ? values.select(1, t + 1) * next_alive : torch::zeros_like(last_gae);
    auto delta = rewards.select(1, t) + gamma * next_value - values.select(1, t);
    last_gae = (delta + gamma * lam * last_gae * next_alive) * m.select(1, t);
    reversed.push_back(last_gae);
  }
  std::reverse(reversed.begin(), reversed.end());
  auto advantages = torch::stack(reversed, 1);
  return {advantages, (advantages + values) * m};
}

PolicyLoss clipped_policy_loss(const torch::Tensor& logp, const torch::Tensor& old_logp,
                               const torch::Tensor& advantages, const torch::Tensor& mask,
                               double clip) {
  auto log_ratio = logp - old_logp;
  auto ratio = log_ratio.exp();
  auto unclipped = -advantages * ratio;
  auto clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip);
  PolicyLoss out;
  out.loss = masked_mean(torch::max(unclipped, clipped), mask);
  out.clipfrac = masked_mean(clipped.gt(unclipped).to(logp.scalar_type()), mask).detach();
  out.approx_kl = (0.5 * masked_mean(log_ratio.pow(2), mask)).detach();
  out.ratio = ratio.detach();
  return out;
}

ValueLoss clipped_value_loss(const torch::Tensor& values, const torch::Tensor& old_values,
                             const torch::Tensor& returns, const torch::Tensor& mask,
                             double value_clip) {
  auto clipped = old_values + (values - old_values).clamp(-value_clip, value_clip);
  auto unclipped_loss = (values - returns).pow(2);
  auto clipped_loss = (clipped - returns).pow(2);
  ValueLoss out;
  out.loss = 0.5 * masked_mean(torch::max(unclipped_loss, clipped_loss), mask);
  out.clipfrac =
      masked_mean(clipped_loss.gt(unclipped_loss).to(values.scalar_type()), mask).detach();
  return out;
}

void KLController::update(double current_kl, int64_t n_steps) {
  if (target_ <= 0) return;
  const double error = std::clamp(current_kl / target_ - 1.0, -0.2, 0.2);
  value_ *= 1.0 + error * static_cast<double>(n_steps) / horizon_;
}

}  // namespace tiller::ppo
