// The GRPO family's math against hand-computed values.
#include <gtest/gtest.h>

#include <cmath>

#include "common/util/error.h"
#include "rlhf/grpo_math.h"

using namespace tiller::grpo;

namespace {
torch::Tensor t1(std::vector<double> values) {
  return torch::tensor(values, torch::kDouble);
}
torch::Tensor t2(std::vector<double> values, int64_t rows) {
  return t1(std::move(values)).view({rows, -1});
}
void expect_near(const torch::Tensor& actual, const torch::Tensor& expected, double tolerance) {
  EXPECT_TRUE(torch::allclose(actual.to(torch::kDouble), expected, 0, tolerance))
      << "actual\n"
      << actual << "\nexpected\n"
      << expected;
}
}  // namespace

TEST(GrpoMath, GroupAdvantagesOfEachAlgorithm) {
  // Group 1: one right of four (mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5);
  // group 2: all equal.
  const auto scores = t1({1, 0, 0, 0, 2, 2, 2, 2});
  const double s = 0.5 + kStdEpsilon;
  expect_near(group_advantages(scores, 4, "grpo"),
              t1({0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s, 0, 0, 0, 0}), 1e-12);
  expect_near(group_advantages(scores, 4, "dapo"), group_advantages(scores, 4, "grpo"), 0);
  expect_near(group_advantages(scores, 4, "dr_grpo"), t1({0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0}),
              1e-12);
  // Leave-one-out: 1 - mean(0, 0, 0) = 1; 0 - mean(1, 0, 0) = -1/3.
  expect_near(group_advantages(scores, 4, "rloo"),
              t1({1, -1.0 / 3, -1.0 / 3, -1.0 / 3, 0, 0, 0, 0}), 1e-12);
  // Groups of one: no baseline to compare against, advantage 0.
  expect_near(group_advantages(t1({3, -1}), 1, "rloo"), t1({0, 0}), 0);
  EXPECT_THROW(group_advantages(scores, 3, "grpo"), tiller::Error);
  EXPECT_THROW(group_advantages(scores, 4, "ppo"), tiller::Error);
}

TEST(GrpoMath, ReinforcePlusPlusWhitensReturnsOverTheBatch) {
  // Two rows, mask [[1,1,1],[1,1,0]], log-ratios [[0.2,0,-0.2],[0.4,0.2,-]], beta 0.5,
  // scores [1, -1]. Rewards: [[-0.1, 0, -(-0.1) + 1], [-0.2, -0.1 - 1, 0]] = [[-0.1, 0, 1.1],
  // [-0.2, -1.1, 0]]; returns to the end: [[1.0, 1.1, 1.1], [-1.3, -1.1, 0]]; over the five real
  // tokens mean 0.16, unbiased variance (0.84^2 + 2 * 0.94^2 + 1.46^2 + 1.26^2) / 4 = 1.548.
  const auto mask = t2({1, 1, 1, 1, 1, 0}, 2);
  const auto ref = t2({0, 0, 0, 0, 0, 0}, 2);
  const auto logp = t2({0.2, 0, -0.2, 0.4, 0.2, 7.0}, 2);  // 7.0 on padding must not leak in
  const auto a = reinforce_pp_advantages(t1({1, -1}), logp, ref, mask, 0.5);
  const double sd = std::sqrt(1.548 + 1e-8);
  expect_near(a, t2({0.84 / sd, 0.94 / sd, 0.94 / sd, -1.46 / sd, -1.26 / sd, 0}, 2), 1e-9);
}

TEST(GrpoMath, GroupsWithSignalAndOverlongPenalty) {
  const auto signal = groups_with_signal(t1({1, 0, 1, 1, 0.5, 0.5}), 2);
  EXPECT_TRUE(signal.equal(torch::tensor({true, false, false})));
  // max 10, buffer 4: no penalty up to 6 tokens, then -1/4 per token to -1 at 10.
  expect_near(overlong_penalty(torch::tensor({5, 6, 8, 10}), 10, 4, 1.0), t1({0, 0, -0.5, -1}),
              1e-7);
  expect_near(overlong_penalty(torch::tensor({9}), 10, 4, 0.5), t1({-0.375}), 1e-7);
  EXPECT_THROW(overlong_penalty(torch::tensor({1}), 10, 0, 1.0), tiller::Error);
}

TEST(GrpoMath, AggregationsAndTheirMicroBatchShares) {
  const auto loss = t2({1, 2, 3, 4, 5, 99}, 2);
  const auto mask = t2({1, 1, 1, 1, 1, 0}, 2);
  // token_mean: 15 / 5; sequence_mean: (2 + 4.5) / 2; sequence_sum_constant 4: (6/4 + 9/4) / 2.
  const std::vector<std::pair<Aggregation, double>> cases = {
      {{"token_mean", 5, 2, 1}, 3.0},
      {{"sequence_mean", 5, 2, 1}, 3.25},
      {{"sequence_sum_constant", 5, 2, 4}, 1.875}};
  for (const auto& [aggregation, expected] : cases) {
    EXPECT_NEAR(aggregate(loss, mask, aggregation).item<double>(), expected, 1e-12)
        << aggregation.mode;
    // Each row alone, over the whole minibatch's denominators: the shares add up.
    const double shares =
        aggregate(loss.narrow(0, 0, 1), mask.narrow(0, 0, 1), aggregation).item<double>() +
        aggregate(loss.narrow(0, 1, 1), mask.narrow(0, 1, 1), aggregation).item<double>();
    EXPECT_NEAR(shares, expected, 1e-12) << aggregation.mode;
  }
  EXPECT_THROW(aggregate(loss, mask, {"mean", 1, 1, 1}), tiller::Error);
}

TEST(GrpoMath, PolicyLossClipsHigherAndAddsTheK3Term) {
  // Four one-token rows: ratios 1.5, 0.5, 1.1, 0.7; advantages 1, -1, 1, -1; eps_low 0.2,
  // eps_high 0.28. Per token max(-A r, -A clip(r, 0.8, 1.28)): -1.28 (clipped high), 0.8
  // (clipped low), -1.1, 0.8 (clipped low). Token mean: -0.78 / 4.
  const auto old_logp = t2({-1, -1, -1, -1}, 4);
  auto logp = (old_logp + t2({std::log(1.5), std::log(0.5), std::log(1.1), std::log(0.7)}, 4))
                  .detach()
                  .requires_grad_(true);
  const auto advantages = t2({1, -1, 1, -1}, 4);
  const auto mask = t2({1, 1, 1, 1}, 4);
  const Aggregation token_mean{"token_mean", 4, 4, 1};
  const auto plain = policy_loss(logp, old_logp, {}, advantages, mask, 0.2, 0.28, 0, token_mean);
  EXPECT_NEAR(plain.loss.item<double>(), -0.78 / 4, 1e-12);
  EXPECT_NEAR(plain.clipfrac_low.item<double>(), 0.5, 1e-12);
  EXPECT_NEAR(plain.clipfrac_high.item<double>(), 0.25, 1e-12);
  EXPECT_EQ(plain.kl.item<double>(), 0.0);

  // The reference: equal to the policy except row 3, where ref - logp = -0.5:
  // k3 = exp(-0.5) + 0.5 - 1 = 0.1065307; d k3 / d logp = 1 - exp(-0.5) = 0.3934693.
  const auto ref = (logp - t2({0, 0, 0.5, 0}, 4)).detach();
  const auto with_kl =
      policy_loss(logp, old_logp, ref, advantages, mask, 0.2, 0.28, 0.1, token_mean);
  const double k3 = std::exp(-0.5) - 0.5;
  EXPECT_NEAR(with_kl.loss.item<double>(), (-0.78 + 0.1 * k3) / 4, 1e-12);
  EXPECT_NEAR(with_kl.kl.item<double>(), k3 / 4, 1e-12);
  with_kl.loss.backward();
  // Clipped rows have no policy gradient; row 3's is -A r / 4 plus the KL term's.
  expect_near(logp.grad(), t2({0, 0, (-1.1 + 0.1 * (1 - std::exp(-0.5))) / 4, 0}, 4), 1e-12);
}

TEST(GrpoMath, PassAtK) {
  EXPECT_NEAR(pass_at_k(4, 1, 1), 0.25, 1e-12);
  EXPECT_NEAR(pass_at_k(4, 1, 4), 1.0, 1e-12);
  EXPECT_NEAR(pass_at_k(4, 2, 2), 5.0 / 6.0, 1e-12);  // 1 - C(2,2) / C(4,2)
  EXPECT_NEAR(pass_at_k(8, 0, 8), 0.0, 1e-12);
  EXPECT_THROW(pass_at_k(4, 5, 1), tiller::Error);
}
