// GrpoTrainer on tiny random models: every algorithm raises the frequency of a rewarded token,
// a large KL weight holds the policy near the reference, groups with all-equal scores get no
// advantage, and the update's ratios start at 1 (sampling and training log-probs agree).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/rollout/shared_prompt.h"
#include "common/train/optimizer.h"
#include "common/util/error.h"
#include "rlhf/grpo_trainer.h"
#include "tests/ppo_fixtures.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

constexpr int64_t kTarget = 7;

Transformer tiny_model(uint64_t seed) {
  Transformer model(test::llama_config(32, 32, 64, 2, 4, 2, 64));
  model->init_weights(seed);
  return model;
}

// The fraction of each response's tokens that are kTarget: [N].
torch::Tensor target_frequency(const GenerationBatch& g) {
  const auto mask = g.response_mask.to(torch::kFloat);
  return (g.response_ids.eq(kTarget).to(torch::kFloat) * mask).sum(1) / mask.sum(1).clamp_min(1);
}

GrpoOptions options_for(const std::string& algorithm) {
  GrpoOptions o;
  o.algorithm = algorithm;
  o.sampling.max_new_tokens = 8;
  o.sampling.stop_at_eos = false;
  o.group_size = 4;
  o.beta = 0.0;
  o.micro_batch_size = 8;
  o.loss_aggregation = default_loss_aggregation(algorithm);
  if (algorithm == "dapo") o.clip_high = 0.28;
  return o;
}

struct GrpoSetup {
  Transformer actor = tiny_model(1), reference = tiny_model(1);
  std::unique_ptr<ParallelAdamW> optimizer;
  std::unique_ptr<GrpoTrainer> trainer;

  explicit GrpoSetup(const GrpoOptions& o, double lr = 3e-3) {
    optimizer = std::make_unique<ParallelAdamW>(*actor, OptimizerOptions{lr, 0.0, 0.9, 0.95, 1e-8},
                                                dist::Group());
    trainer = std::make_unique<GrpoTrainer>(
        o, *actor, o.needs_reference() ? reference.get() : nullptr, *optimizer);
  }

  // Samples 8 prompts' groups, scores them by target frequency and learns; returns the mean
  // frequency of the sampled responses and the learn figures.
  std::pair<double, GrpoLearnStats> iterate(int64_t iteration) {
    const auto p = test::numbered_prompts(8, 4);
    auto g = trainer->sample(p, test::episode_seeds(8 * trainer->options().group_size, iteration));
    const auto scores = target_frequency(g);
    const auto batch = trainer->prepare(g, scores);
    const auto stats = trainer->learn(batch, static_cast<uint64_t>(iteration));
    return {scores.mean().item<double>(), stats};
  }
};

}  // namespace

TEST(GrpoTrainer, EveryAlgorithmRaisesARewardedTokensFrequency) {
  for (const std::string algorithm : {"grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp"}) {
    SCOPED_TRACE(algorithm);
    torch::manual_seed(0);
    GrpoOptions o = options_for(algorithm);
    if (algorithm == "reinforce_pp") o.beta = 0.01;  // its KL sits in the rewards
    GrpoSetup s(o);
    const double before = s.iterate(0).first;
    double after = 0;
    for (int64_t i = 1; i <= 25; ++i) after = s.iterate(i).first;
    // A random 32-token model emits the target about 1 time in 32.
    EXPECT_LT(before, 0.1);
    EXPECT_GT(after, 3 * before + 0.1) << "before " << before << " after " << after;
  }
}

TEST(GrpoTrainer, ALargeKlWeightHoldsThePolicyNearTheReference) {
  double kl_free = 0, kl_held = 0;
  for (double beta : {0.0, 5.0}) {
    torch::manual_seed(0);
    GrpoOptions o = options_for("grpo");
    o.beta = beta;
    GrpoSetup s(o);
    for (int64_t i = 0; i < 15; ++i) s.iterate(i);
    // The k3 KL of the trained policy to the (untrained) reference on fresh samples.
    GrpoTrainer measure(options_for("grpo"), *s.actor, s.reference.get(), *s.optimizer);
    const auto g = measure.sample(test::numbered_prompts(8, 4), test::episode_seeds(32, 99));
    auto [logp, ref] = measure.logprobs(g);
    const auto mask = g.response_mask.to(torch::kFloat);
    const double kl = ((torch::exp(ref - logp) - (ref - logp) - 1) * mask).sum().item<double>() /
                      mask.sum().item<double>();
    (beta == 0 ? kl_free : kl_held) = kl;
  }
  EXPECT_GT(kl_free, 0.05);
  EXPECT_LT(kl_held, kl_free / 3) << "free " << kl_free << " held " << kl_held;
}

TEST(GrpoTrainer, AllEqualGroupsGetNoAdvantageAndRatiosStartAtOne) {
  GrpoOptions o = options_for("grpo");
  o.epochs = 2;  // old log-probs are computed, and the first epoch's ratios must be 1
  o.mini_batch_size = 32;
  GrpoSetup s(o);
  auto g = s.trainer->sample(test::numbered_prompts(8, 4), test::episode_seeds(32, 5));
  auto scores = target_frequency(g);
  scores.narrow(0, 0, 4).fill_(0.5);  // group 0: all equal
  scores[4] = 1.0;                    // group 1: one response better than the others
  scores.narrow(0, 5, 3).fill_(0.0);
  const auto batch = s.trainer->prepare(g, scores);
  EXPECT_EQ(batch.advantages.narrow(0, 0, 4).abs().max().item<double>(), 0.0);
  EXPECT_GT(batch.advantages[4].max().item<double>(), 0.0);
  EXPECT_LT(batch.advantages[5].min().item<double>(), 0.0);
  // Rollout log-probs recomputed in the training pass: identical computation, ratio exactly 1.
  auto [logp, ref] = s.trainer->logprobs(g);
  EXPECT_TRUE(torch::equal(logp, batch.old_logprobs));
  EXPECT_FALSE(ref.defined());  // beta 0: no reference
}

// Sharing each group's prompt in the policy's and the reference's passes changes only the order
// of the arithmetic: one update's loss, KL, entropy and gradient norm equal those of one row per
// sample.
TEST(GrpoTrainer, SharedPromptsGiveTheUpdateOfOneRowPerSample) {
  // Four prompts of 11 to 14 tokens, so that groups of 4 are packed on this shape.
  std::vector<std::vector<int64_t>> prompts;
  for (int64_t i = 0; i < 4; ++i) {
    std::vector<int64_t> p = {1};
    for (int64_t j = 0; j < 10 + i; ++j) p.push_back(3 + (i * 7 + j * 5) % 29);
    prompts.push_back(p);
  }
  GrpoOptions o = options_for("grpo");
  o.beta = 0.04;
  ASSERT_GT(shared_prompt_pack_size(tiny_model(1)->config, 14, o.sampling.max_new_tokens, {4, 4}),
            1);
  Transformer sampler = tiny_model(1);
  ParallelAdamW unused(*sampler, OptimizerOptions{1e-3, 0.0, 0.9, 0.95, 1e-8}, dist::Group());
  const auto g =
      GrpoTrainer(o, *sampler, sampler.get(), unused).sample(prompts, test::episode_seeds(16, 3));
  const auto scores = torch::arange(16, torch::kFloat).remainder(3);
  std::vector<GrpoLearnStats> stats;
  for (const bool share : {true, false}) {
    o.share_prompts = share;
    Transformer actor = tiny_model(1), reference = tiny_model(2);
    ParallelAdamW optimizer(*actor, OptimizerOptions{1e-3, 0.0, 0.9, 0.95, 1e-8}, dist::Group());
    GrpoTrainer trainer(o, *actor, reference.get(), optimizer);
    stats.push_back(trainer.learn(trainer.prepare(g, scores), 1));
  }
  const auto expect_same = [](double shared, double one_row, const char* what) {
    EXPECT_NEAR(shared, one_row, 1e-5 * std::max(1.0, std::abs(one_row))) << what;
  };
  expect_same(stats[0].policy_loss, stats[1].policy_loss, "policy loss");
  expect_same(stats[0].kl, stats[1].kl, "kl");
  expect_same(stats[0].entropy, stats[1].entropy, "entropy");
  expect_same(stats[0].grad_norm, stats[1].grad_norm, "gradient norm");
  EXPECT_GT(stats[1].kl, 1e-4);  // the reference differs from the policy: its pass is compared
}

TEST(GrpoTrainer, RefusesAKlWithoutAReference) {
  GrpoOptions o = options_for("grpo");
  o.beta = 0.1;
  Transformer actor = tiny_model(1);
  ParallelAdamW optimizer(*actor, OptimizerOptions{1e-3, 0.0, 0.9, 0.95, 1e-8}, dist::Group());
  EXPECT_THROW(GrpoTrainer(o, *actor, nullptr, optimizer), Error);
}
