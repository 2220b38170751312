// PPO math against hand-computed values.
#include <gtest/gtest.h>

#include "rlhf/ppo_math.h"

using namespace tiller::ppo;

namespace {
torch::Tensor t2(std::vector<double> values, int64_t rows) {
  return torch::tensor(values, torch::kDouble).view({rows, -1});
}
}  // namespace

TEST(PpoMath, GaeOnAFiveStepExampleWithPadding) {
  // One episode of 4 response tokens and one pad whose value (9.0) must not leak in.
  auto rewards = t2({0.1, -0.2, 0.3, 0.5, 0.0}, 1);
  auto values = t2({0.5, 0.4, 0.3, 0.2, 9.0}, 1);
  auto mask = t2({1, 1, 1, 1, 0}, 1);
  auto out = gae(rewards, values, mask, /*gamma=*/0.9, /*lam=*/0.8);
  // By hand (gamma*lam = 0.72; the step after t=3 is terminal):
  //   t=3: delta = 0.5 - 0.2 = 0.3                      A3 = 0.3
  //   t=2: delta = 0.3 + 0.9*0.2 - 0.3 = 0.18           A2 = 0.18 + 0.72*0.3 = 0.396
  //   t=1: delta = -0.2 + 0.9*0.3 - 0.4 = -0.33         A1 = -0.33 + 0.72*0.396 = -0.04488
  //   t=0: delta = 0.1 + 0.9*0.4 - 0.5 = -0.04          A0 = -0.04 + 0.72*(-0.04488) = -0.0723136
  auto expected = t2({-0.0723136, -0.04488, 0.396, 0.3, 0.0}, 1);
  EXPECT_TRUE(torch::allclose(out.advantages, expected, 0, 1e-12)) << out.advantages;
  EXPECT_TRUE(torch::allclose(out.returns, (expected + values) * mask, 0, 1e-12)) << out.returns;
  // gamma = 1, lambda = 1: the advantage is the sum of future rewards minus the value.
  auto mc = gae(rewards, values, mask, 1.0, 1.0);
  EXPECT_NEAR(mc.advantages[0][0].item<double>(), 0.1 - 0.2 + 0.3 + 0.5 - 0.5, 1e-12);
}

TEST(PpoMath, WhiteningIgnoresPadding) {
  auto x = t2({1, 2, 3, 100, 4, 5, -50, -50}, 2);
  auto mask = t2({1, 1, 1, 0, 1, 1, 0, 0}, 2);
  auto w = masked_whiten(x, mask);
  // Statistics of {1, 2, 3, 4, 5}: mean 3, unbiased variance 2.5.
  EXPECT_NEAR(w[0][0].item<double>(), (1 - 3) / std::sqrt(2.5 + 1e-8), 1e-9);
  EXPECT_NEAR(w[1][1].item<double>(), (5 - 3) / std::sqrt(2.5 + 1e-8), 1e-9);
  EXPECT_EQ(w[0][3].item<double>(), 0.0);
  EXPECT_NEAR(masked_mean(w, mask).item<double>(), 0.0, 1e-12);
  EXPECT_NEAR(masked_var(w, mask).item<double>(), 1.0, 1e-6);
  auto kept_mean = masked_whiten(x, mask, /*shift_mean=*/false);
  EXPECT_NEAR(masked_mean(kept_mean, mask).item<double>(), 3.0, 1e-9);
}

TEST(PpoMath, KlEstimatorsAndTokenRewards) {
  auto logp = t2({-1.0, -2.0, -0.5}, 1);
  auto ref = t2({-1.5, -2.0, -0.1}, 1);
  auto k1 = kl_k1(logp, ref);
  EXPECT_TRUE(torch::allclose(k1, t2({0.5, 0.0, -0.4}, 1)));
  auto k3 = kl_k3(logp, ref);
  EXPECT_NEAR(k3[0][0].item<double>(), std::exp(-0.5) + 0.5 - 1, 1e-12);
  EXPECT_NEAR(k3[0][1].item<double>(), 0.0, 1e-12);
  EXPECT_TRUE(k3.ge(0).all().item<bool>());
  // Rewards: -beta * kl everywhere, the score added at the last real token.
  auto kl = t2({0.5, 0.0, -0.4, 0.2, 0.3, 9.0}, 2);
  auto mask = t2({1, 1, 1, 1, 1, 0}, 2);
  auto r = token_rewards(kl, torch::tensor({2.0, -1.0}, torch::kDouble), mask, 0.1);
  EXPECT_TRUE(
      torch::allclose(r, t2({-0.05, 0.0, 0.04 + 2.0, -0.02, -0.03 - 1.0, 0.0}, 2), 0, 1e-12))
      << r;
}

TEST(PpoMath, ClippedPolicyLoss) {
  auto old_logp = t2({0.0, 0.0, 0.0}, 1);
  auto logp = t2({std::log(1.5), std::log(0.7), std::log(1.1)}, 1);
  auto adv = t2({1.0, -2.0, 3.0}, 1);
  auto mask = t2({1, 1, 0}, 1);
  auto out = clipped_policy_loss(logp, old_logp, adv, mask, 0.2);
  // Token 0: ratio 1.5, A=1: max(-1.5, -1.2) = -1.2 (clipped). Token 1: ratio 0.7, A=-2:
  // max(1.4, 1.6) = 1.6 (clipped). Token 2 is padding.
  EXPECT_NEAR(out.loss.item<double>(), (-1.2 + 1.6) / 2, 1e-12);
  EXPECT_NEAR(out.clipfrac.item<double>(), 1.0, 1e-12);
  // At ratio 1 the loss is -mean(A) and nothing is clipped; the approx KL is 0.
  auto same = clipped_policy_loss(old_logp, old_logp, adv, mask, 0.2);
  EXPECT_NEAR(same.loss.item<double>(), -(1.0 - 2.0) / 2, 1e-12);
  EXPECT_EQ(same.clipfrac.item<double>(), 0.0);
  EXPECT_EQ(same.approx_kl.item<double>(), 0.0);
}

TEST(PpoMath, ClippedValueLoss) {
  auto old_v = t2({1.0, 1.0}, 1);
  auto v = t2({1.5, 0.95}, 1);
  auto returns = t2({2.0, 1.0}, 1);
  auto mask = t2({1, 1}, 1);
  auto out = clipped_value_loss(v, old_v, returns, mask, 0.2);
  // Token 0: unclipped (1.5-2)^2 = 0.25, clipped (1.2-2)^2 = 0.64 -> 0.64.
  // Token 1: (0.95-1)^2 = 0.0025 both ways.
  EXPECT_NEAR(out.loss.item<double>(), 0.5 * (0.64 + 0.0025) / 2, 1e-12);
  EXPECT_NEAR(out.clipfrac.item<double>(), 0.5, 1e-12);
}

TEST(PpoMath, AdaptiveKlControllerUpdate) {
  KLController adaptive(0.1, /*target=*/6.0, /*horizon=*/10000);
  adaptive.update(/*current_kl=*/9.0, /*n_steps=*/256);  // error clipped to +0.2
  EXPECT_NEAR(adaptive.value(), 0.1 * (1 + 0.2 * 256 / 10000.0), 1e-15);
  adaptive.update(/*current_kl=*/5.4, /*n_steps=*/256);  // error -0.1
  EXPECT_NEAR(adaptive.value(), 0.1 * (1 + 0.2 * 0.0256) * (1 - 0.1 * 0.0256), 1e-15);
  KLController fixed(0.05, 0, 10000);
  fixed.update(100.0, 256);
  EXPECT_EQ(fixed.value(), 0.05);
}

TEST(PpoMath, MissingEosPenaltyReplacesTheScore) {
  auto score = torch::tensor({2.5, -0.5, 1.0}, torch::kDouble);
  auto ended = torch::tensor({true, false, true});
  auto out = apply_missing_eos_penalty(score, ended, -1.0);
  EXPECT_TRUE(torch::equal(out, torch::tensor({2.5, -1.0, 1.0}, torch::kDouble))) << out;
  EXPECT_ANY_THROW(apply_missing_eos_penalty(score, torch::tensor({true, false}), -1.0));
}

TEST(PpoMath, ScoreWhiteningAndClipping) {
  auto score = torch::tensor({1.0, 2.0, 3.0, 10.0}, torch::kDouble);
  auto clipped = normalize_scores(score, /*whiten=*/false, /*clip=*/2.5);
  EXPECT_TRUE(torch::equal(clipped, torch::tensor({1.0, 2.0, 2.5, 2.5}, torch::kDouble)));
  auto whitened = normalize_scores(score, /*whiten=*/true, /*clip=*/0);
  EXPECT_NEAR(whitened.mean().item<double>(), 0.0, 1e-12);
  EXPECT_NEAR(whitened.var().item<double>(), 1.0, 1e-6);  // unbiased, as masked_var
  // Mean 4, unbiased variance (9 + 4 + 1 + 36) / 3: 10 -> 6 / sqrt(50 / 3).
  EXPECT_NEAR(whitened[3].item<double>(), 6.0 / std::sqrt(50.0 / 3), 1e-6);
}

TEST(PpoMath, ExplainedVarianceOverMaskedTokens) {
  auto returns = t2({1, 2, 3, 99}, 1);
  auto mask = t2({1, 1, 1, 0}, 1);
  EXPECT_NEAR(explained_variance(returns, returns, mask).item<double>(), 1.0, 1e-12);
  // A constant critic explains nothing; the padded 99 must not count.
  EXPECT_NEAR(explained_variance(t2({2, 2, 2, 0}, 1), returns, mask).item<double>(), 0.0, 1e-12);
  // Residuals {1, 1, -1}: variance 4/3 against the returns' 1 -> 1 - 4/3.
  EXPECT_NEAR(explained_variance(t2({0, 1, 4, 0}, 1), returns, mask).item<double>(), -1.0 / 3,
              1e-12);
}

// Why PPO's reward takes k1 and refuses k3: as a reward (a constant the policy gradient weighs
// each sample's score-function gradient by), k1 gives exactly the gradient of the KL, while k3
// (second order in the log-ratio) gives a small fraction of it near the reference. Computed in
// expectation over a 5-way softmax, so nothing here is sampled.
TEST(PpoMath, AsARewardK1GivesTheKlGradientAndK3AFractionOfIt) {
  torch::manual_seed(0);
  const auto reference_logits = torch::randn({5}, torch::kDouble);
  const auto policy_logits =
      (reference_logits + 0.2 * torch::randn({5}, torch::kDouble)).requires_grad_(true);
  const auto logp = torch::log_softmax(policy_logits, 0);
  const auto ref_logp = torch::log_softmax(reference_logits, 0);
  const auto p = logp.exp();
  // The true gradient of KL(policy || reference).
  const auto kl = (p * (logp - ref_logp)).sum();
  const auto true_grad = torch::autograd::grad({kl}, {policy_logits}, {}, true)[0];
  // E_p[k(x) * grad log p(x)]: what a reward of -beta * k(x) contributes (up to -beta).
  auto score_function_grad = [&](const torch::Tensor& k) {
    const auto surrogate = (p.detach() * k.detach() * logp).sum();
    return torch::autograd::grad({surrogate}, {policy_logits}, {}, true)[0];
  };
  const auto k1_grad = score_function_grad(kl_k1(logp, ref_logp));
  const auto k3_grad = score_function_grad(kl_k3(logp, ref_logp));
  EXPECT_TRUE(torch::allclose(k1_grad, true_grad, 1e-9, 1e-12)) << k1_grad << true_grad;
  const double along =
      (k3_grad * true_grad).sum().item<double>() / true_grad.pow(2).sum().item<double>();
  EXPECT_LT(std::abs(along), 0.3) << "k3's gradient along the KL's: " << along;
  EXPECT_LT(k3_grad.norm().item<double>(), 0.3 * true_grad.norm().item<double>());
}
