// InstructGPT's ranking loss: its value and gradients on a hand-computed batch of two rankings
// scored once per response, and its agreement with the pairwise loss on a ranking of two.
#include <gtest/gtest.h>

#include <cmath>

#include "common/train/pairwise_reward.h"

using namespace tiller;

namespace {

double log_sigmoid(double x) {
  return -std::log1p(std::exp(-x));
}
double sigmoid(double x) {
  return 1.0 / (1.0 + std::exp(-x));
}

}  // namespace

TEST(RankingLoss, EqualsInstructGptOnTwoRankingsScoredOncePerResponse) {
  // Ranking A: responses 0 > 1 > 2 (C(3,2) = 3 comparisons); ranking B: response 4 > 3 (one).
  const std::vector<double> s = {1.0, 0.2, -0.4, 0.3, 0.6};
  auto scores = torch::tensor({1.0f, 0.2f, -0.4f, 0.3f, 0.6f}, torch::requires_grad());
  auto better = torch::tensor({0, 0, 1, 4}, torch::kLong);
  auto worse = torch::tensor({1, 2, 2, 3}, torch::kLong);
  auto weight = torch::tensor({1.0f / 3, 1.0f / 3, 1.0f / 3, 1.0f});
  const double coef = 0.05;
  auto loss =
      ranking_loss_sum(scores.index_select(0, better), scores.index_select(0, worse), weight, coef);
  auto term = [&](int b, int w) {
    return -log_sigmoid(s[b] - s[w]) + coef * std::pow(s[b] + s[w], 2);
  };
  const double expected = (term(0, 1) + term(0, 2) + term(1, 2)) / 3 + term(4, 3);
  EXPECT_NEAR(loss.item<double>(), expected, 1e-6);

  // d/ds_i: each comparison pushes its better response up by (1 - sigmoid(b - w)) and its worse
  // down as much, times the comparison's weight; centering adds 2 k (b + w) to both.
  loss.backward();
  auto push = [&](int b, int w) { return 1 - sigmoid(s[b] - s[w]); };
  auto centre = [&](int b, int w) { return 2 * coef * (s[b] + s[w]); };
  const double grad1 = (push(0, 1) - push(1, 2) + centre(0, 1) + centre(1, 2)) / 3;
  EXPECT_NEAR(scores.grad()[1].item<double>(), grad1, 1e-6);
  const double grad0 = (-push(0, 1) - push(0, 2) + centre(0, 1) + centre(0, 2)) / 3;
  EXPECT_NEAR(scores.grad()[0].item<double>(), grad0, 1e-6);
  EXPECT_NEAR(scores.grad()[3].item<double>(), push(4, 3) + centre(4, 3), 1e-6);
}

TEST(RankingLoss, ARankingOfTwoWithWeightOneIsThePairwiseLoss) {
  auto chosen = torch::tensor({0.7f, -1.2f});
  auto rejected = torch::tensor({0.1f, 0.4f});
  auto ranked = ranking_loss_sum(chosen, rejected, torch::ones({2}), 0.1);
  auto pairwise = pairwise_loss_sum(chosen, rejected, torch::zeros({2}), 0.1);
  EXPECT_NEAR(ranked.item<double>(), pairwise.item<double>(), 1e-6);
  EXPECT_GT(ranked.item<double>(), 0.0);
}
