// The DPO family's losses against hand computations: on one two-pair batch of log-probabilities,
// each loss's per-pair values, its gradients with respect to the policy's log-probabilities and
// the implicit rewards equal numbers worked out from the papers' formulas (closed-form
// derivatives, evaluated in double precision outside this code and written out here).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <vector>

#include "common/util/error.h"
#include "dpo/dpo_loss.h"

using namespace tiller;

namespace {

// pc, pr: policy chosen / rejected (summed log-probs); rc, rr: the reference's; nc, nr: lengths.
// h = (pc - pr) - (rc - rr) = {0.7, -1.5}; beta 0.5, label smoothing 0.1, gamma 0.3.
struct Batch {
  torch::Tensor pc = torch::tensor({-4.0, -6.0}, torch::dtype(torch::kDouble).requires_grad(true));
  torch::Tensor pr = torch::tensor({-5.0, -5.5}, torch::dtype(torch::kDouble).requires_grad(true));
  torch::Tensor rc = torch::tensor({-4.5, -5.0}, torch::kDouble);
  torch::Tensor rr = torch::tensor({-4.8, -6.0}, torch::kDouble);
  torch::Tensor nc = torch::tensor({4.0, 6.0}, torch::kDouble);
  torch::Tensor nr = torch::tensor({5.0, 5.0}, torch::kDouble);

  PairLogProbs logps(bool with_reference = true) const {
    PairLogProbs l;
    l.policy_chosen = pc;
    l.policy_rejected = pr;
    if (with_reference) {
      l.reference_chosen = rc;
      l.reference_rejected = rr;
    }
    l.chosen_tokens = nc;
    l.rejected_tokens = nr;
    return l;
  }
};

struct Expected {
  std::vector<double> loss, d_chosen, d_rejected;
};

PreferenceLoss check_loss(const PreferenceLossOptions& options, const Expected& want,
                          bool with_reference = true) {
  Batch batch;
  const PreferenceLoss got = preference_loss(batch.logps(with_reference), options);
  got.loss.sum().backward();
  for (int i = 0; i < 2; ++i) {
    EXPECT_NEAR(got.loss[i].item<double>(), want.loss[i], 1e-12) << options.type << " pair " << i;
    EXPECT_NEAR(batch.pc.grad()[i].item<double>(), want.d_chosen[i], 1e-12)
        << options.type << " d/d chosen, pair " << i;
    EXPECT_NEAR(batch.pr.grad()[i].item<double>(), want.d_rejected[i], 1e-12)
        << options.type << " d/d rejected, pair " << i;
  }
  return got;
}

PreferenceLossOptions options(const std::string& type, double label_smoothing = 0.0) {
  PreferenceLossOptions o;
  o.type = type;
  o.beta = 0.5;
  o.label_smoothing = label_smoothing;
  return o;
}

}  // namespace

TEST(DpoLoss, SigmoidWithLabelSmoothingIsConservativeDpo) {
  // -(1 - e) log s(b h) - e log s(-b h); d/d pc = -(1 - e) b s(-b h) + e b s(b h).
  const auto got = check_loss(options("sigmoid", 0.1), {{0.5683821554187769, 1.0618710061149},
                                                        {-0.156691210541335, -0.2895893495876965},
                                                        {0.156691210541335, 0.2895893495876965}});
  // TRL's rewards: b (pc - rc), b (pr - rr).
  EXPECT_NEAR(got.chosen_rewards[0].item<double>(), 0.5 * (-4.0 + 4.5), 1e-12);
  EXPECT_NEAR(got.rejected_rewards[1].item<double>(), 0.5 * (-5.5 + 6.0), 1e-12);
  EXPECT_FALSE(got.nll.defined());
}

TEST(DpoLoss, RobustDividesByOneMinusTwiceTheFlipRate) {
  // (-(1 - e) log s(b h) + e log s(-b h)) / (1 - 2e)
  check_loss(options("robust", 0.1), {{0.48963215541877686, 1.2306210061148999},
                                      {-0.269191210541335, -0.40208934958769654},
                                      {0.269191210541335, 0.40208934958769654}});
}

TEST(DpoLoss, HingeIsSlicAndFlatBeyondItsMargin) {
  // max(0, 1 - b h): both pairs are inside the margin (b h < 1), gradient -b.
  check_loss(options("hinge"), {{0.65, 1.75}, {-0.5, -0.5}, {0.5, 0.5}});
  // b h = 0.5 * 3 > 1: no loss and no gradient.
  Batch batch;
  batch.rc = torch::tensor({-6.0, -5.0}, torch::kDouble);
  batch.rr = torch::tensor({-4.0, -6.0}, torch::kDouble);  // h = 1 + 2 = 3 on pair 0
  const auto got = preference_loss(batch.logps(), options("hinge"));
  got.loss.sum().backward();
  EXPECT_EQ(got.loss[0].item<double>(), 0.0);
  EXPECT_EQ(batch.pc.grad()[0].item<double>(), 0.0);
}

TEST(DpoLoss, IpoRegressesTheMeanLogRatioOnto1Over2Beta) {
  // h' from mean log-probs: pair 0 (-1 + 1) - (-1.125 + 0.96) = 0.165; loss (0.165 - 1)^2.
  // d/d pc = 2 (h' - 1/(2b)) / nc, d/d pr = -2 (h' - 1/(2b)) / nr.
  const auto got = check_loss(options("ipo"), {{0.697225, 1.6044444444444443},
                                               {-0.4175, -0.4222222222222222},
                                               {0.33399999999999996, 0.5066666666666666}});
  EXPECT_NEAR(got.chosen_rewards[0].item<double>(), 0.0625, 1e-12);  // b (pc - rc) / nc
  EXPECT_NEAR(got.rejected_rewards[1].item<double>(), 0.05, 1e-12);
}

TEST(DpoLoss, SimpoIsReferenceFreeAndLengthNormalisedWithAMargin) {
  // -(1 - e) log s(z) - e log s(-z), z = b (pc/nc - pr/nr) - g.
  PreferenceLossOptions o = options("simpo", 0.1);
  o.gamma = 0.3;
  const auto got = check_loss(o,
                              {{0.8243552444685271, 0.8009394198788435},
                               {-0.05930531460145738, -0.038514708407149836},
                               {0.04744425168116591, 0.0462176500885798}},
                              /*with_reference=*/false);
  EXPECT_NEAR(got.chosen_rewards[0].item<double>(), 0.5 * -4.0 / 4.0, 1e-12);  // b pc/nc
}

TEST(DpoLoss, OrpoIsTheChosenNllMinusLambdaTimesTheLogOddsRatio) {
  // -pc/nc - b log s(log odds(pc/nc) - log odds(pr/nr)), log odds(m) = m - log(1 - e^m).
  const auto got = check_loss(options("orpo"),
                              {{1.3465735902799727, 1.3095767253250548},
                               {-0.3488735441793329, -0.22752003377523178},
                               {0.07909883534346632, 0.06919201998287865}},
                              /*with_reference=*/false);
  ASSERT_TRUE(got.nll.defined());
  EXPECT_NEAR(got.nll[1].item<double>(), 1.0, 1e-12);  // -(-6) / 6
}

TEST(DpoLoss, SftWeightAddsTheChosenMeanNllToAnyLoss) {
  // sigmoid (e = 0) + 0.2 * (-pc/nc).
  PreferenceLossOptions o = options("sigmoid");
  o.sft_weight = 0.2;
  const auto got = check_loss(o, {{0.7333821554187769, 1.3368710061148998},
                                  {-0.256691210541335, -0.3729226829210298},
                                  {0.206691210541335, 0.3395893495876965}});
  ASSERT_TRUE(got.nll.defined());
  EXPECT_NEAR(got.nll[0].item<double>(), 1.0, 1e-12);
}

TEST(DpoLoss, AReferenceLossWithoutReferenceLogProbsIsRefused) {
  Batch batch;
  EXPECT_THROW(preference_loss(batch.logps(/*with_reference=*/false), options("sigmoid")), Error);
  EXPECT_THROW(preference_loss(batch.logps(), options("kto")), Error);
}
