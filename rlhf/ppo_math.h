// PPO's math as pure functions over [B, T] tensors (B episodes, T response tokens, mask 1 on
// real response tokens), following InstructGPT and "The N+ Implementation Details of RLHF with
// PPO". rlhf/ppo_trainer.cpp composes these; each is unit-tested against hand values.
#pragma once
#include <torch/torch.h>

namespace tiller::ppo {

// Mean / variance over the positions where mask is 1 (variance unbiased, as TRL's masked_var).
torch::Tensor masked_mean(const torch::Tensor& x, const torch::Tensor& mask);
torch::Tensor masked_var(const torch::Tensor& x, const torch::Tensor& mask);
// Added to the variance before whitening divides by its root.
constexpr double kWhitenEpsilon = 1e-8;
// (x - mean) / sqrt(var + kWhitenEpsilon) over the masked positions; shift_mean=false adds the
// mean back.
// Padding (mask 0) neither contributes to the statistics nor keeps a value: it comes out 0.
torch::Tensor masked_whiten(const torch::Tensor& x, const torch::Tensor& mask,
                            bool shift_mean = true);

// Per-token KL estimators between the policy and the reference, from their log-probs [B, T]:
// k1 = logp - ref_logp; k3 = exp(ref - logp) - (ref - logp) - 1 (non-negative, unbiased).
torch::Tensor kl_k1(const torch::Tensor& logp, const torch::Tensor& ref_logp);
torch::Tensor kl_k3(const torch::Tensor& logp, const torch::Tensor& ref_logp);

// Per-token rewards: -beta * kl at every response token, plus `score` [B] at each row's last
// real token. Zero on padding.
torch::Tensor token_rewards(const torch::Tensor& kl, const torch::Tensor& score,
                            const torch::Tensor& mask, double beta);

// Scores with the penalty in place of the reward model's for episodes that ended without EOS:
// score where ended_with_eos, else penalty. score [B] float, ended_with_eos [B] bool.
torch::Tensor apply_missing_eos_penalty(const torch::Tensor& score,
                                        const torch::Tensor& ended_with_eos, double penalty);

// Scores whitened over the batch (zero mean, unit variance) and/or clipped to [-clip, clip]
// (clip <= 0: no clipping). score [B].
torch::Tensor normalize_scores(const torch::Tensor& score, bool whiten, double clip);

// 1 - Var(returns - values) / Var(returns) over the masked tokens: how much of the returns' spread
// the critic explains (1 perfect, 0 no better than a constant, negative worse).
torch::Tensor explained_variance(const torch::Tensor& values, const torch::Tensor& returns,
                                 const torch::Tensor& mask);


struct Advantages {
  torch::Tensor advantages;  // [B, T], 0 on padding
  torch::Tensor returns;     // [B, T] = advantages + values, 0 on padding
};
// Generalised advantage estimation. The step after a row's last real token is terminal (its
// value counts as 0), so padding never leaks into the real tokens' advantages.
Advantages gae(const torch::Tensor& rewards, const torch::Tensor& values, const torch::Tensor& mask,
               double gamma, double lam);

struct PolicyLoss {
  torch::Tensor loss;       // [] masked mean of max(-A r, -A clip(r, 1-eps, 1+eps))
  torch::Tensor clipfrac;   // [] fraction of tokens where the clipped term was taken
  torch::Tensor approx_kl;  // [] 0.5 * masked mean of (logp - old_logp)^2
  torch::Tensor ratio;      // [B, T] exp(logp - old_logp)
};
PolicyLoss clipped_policy_loss(const torch::Tensor& logp, const torch::Tensor& old_logp,
                               const torch::Tensor& advantages, const torch::Tensor& mask,
                               double clip);

struct ValueLoss {
  torch::Tensor loss;      // [] 0.5 * masked mean of max((v - R)^2, (v_clipped - R)^2)
  torch::Tensor clipfrac;  // [] fraction of tokens where the clipped term was larger
};
ValueLoss clipped_value_loss(const torch::Tensor& values, const torch::Tensor& old_values,
                             const torch::Tensor& returns, const torch::Tensor& mask,
                             double value_clip);

// The KL coefficient controller of Ziegler et al. (2019): beta *= 1 + clip(kl/target - 1,
// -0.2, 0.2) * n_steps / horizon. Fixed when target <= 0.
class KLController {
 public:
  KLController(double initial, double target, double horizon)
      : value_(initial), target_(target), horizon_(horizon) {}
  double value() const { return value_; }
  void update(double current_kl, int64_t n_steps);
  void set_value(double value) { value_ = value; }  // resume

 private:
  double value_, target_, horizon_;
};

}  // namespace tiller::ppo
