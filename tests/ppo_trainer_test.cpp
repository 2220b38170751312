// PpoTrainer on tiny random models: rollout and training log-probs agree (ratio 1 in the first
// minibatch), a reward for one token raises its frequency when beta = 0 while a large beta keeps
// the KL near 0, the missing-EOS penalty, and per-episode seeds.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/train/optimizer.h"
#include "rlhf/ppo_math.h"
#include "rlhf/ppo_trainer.h"
#include "tests/ppo_fixtures.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

ModelConfig tiny_config(int64_t num_labels) {
  ModelConfig c = test::llama_config(32, 32, 64, 2, 4, 2, 64);
  c.num_labels = num_labels;
  return c;
}

Transformer tiny_model(uint64_t seed, int64_t num_labels = 0) {
  Transformer model(tiny_config(num_labels));
  model->init_weights(seed);
  return model;
}

// Actor, reference (the same weights), critic, their optimizers and a trainer.
struct PpoSetup {
  Transformer actor = tiny_model(1), reference = tiny_model(1), critic = tiny_model(2, 1);
  std::unique_ptr<ParallelAdamW> actor_opt, critic_opt;
  std::unique_ptr<PpoTrainer> trainer;

  PpoSetup(PpoOptions options, EpisodeScorer scorer, double actor_lr = 1e-3) {
    // A critic that starts at 0 (as one initialised from a normalised reward model roughly does):
    // a random head's values would drown these small rewards in noise for the first iterations.
    torch::NoGradGuard no_grad;
    critic->score->weight.zero_();
    actor_opt = std::make_unique<ParallelAdamW>(
        *actor, OptimizerOptions{actor_lr, 0.0, 0.9, 0.95, 1e-8}, dist::Group());
    critic_opt = std::make_unique<ParallelAdamW>(
        *critic, OptimizerOptions{1e-3, 0.0, 0.9, 0.95, 1e-8}, dist::Group());
    trainer = std::make_unique<PpoTrainer>(options, *actor, *reference, *critic, scorer, *actor_opt,
                                           *critic_opt);
  }
};

PpoOptions options_for_tests() {
  PpoOptions o;
  o.sampling.max_new_tokens = 8;
  // Every response 8 tokens long: the rewarded token's frequency cannot rise by shortening.
  o.sampling.stop_at_eos = false;
  o.missing_eos_penalty = std::nullopt;
  o.sampling.eos_id = 2;
  o.sampling.pad_id = 0;
  o.epochs = 2;
  o.mini_batch_size = 8;
  o.micro_batch_size = 4;
  return o;
}

// Mean per-token frequency of test::kRewardedToken and mean per-sequence KL (k1) on a fixed
// evaluation set.
std::pair<double, double> evaluate(PpoTrainer& trainer, double beta) {
  const auto r = trainer.rollout(test::numbered_prompts(64, 5), test::episode_seeds(64, 999), beta);
  return {r.scorer_scores.mean().item<double>(), rollout_stats(r).kl_k1};
}

// Runs `iterations` PPO iterations of 32 episodes with KL coefficient beta.
void train(PpoTrainer& trainer, int64_t iterations, double beta) {
  for (int64_t it = 0; it < iterations; ++it) {
    const auto r = trainer.rollout(test::numbered_prompts(32, 5),
                                   test::episode_seeds(32, static_cast<uint64_t>(it)), beta);
    trainer.learn(r, static_cast<uint64_t>(it));
  }
}

void expect_close_masked(const torch::Tensor& got, const torch::Tensor& want,
                         const std::string& what) {
  EXPECT_TRUE(torch::allclose(got, want, /*rtol=*/1e-5, /*atol=*/1e-5))
      << what << ": max difference " << (got - want).abs().max().item<double>();
}

}  // namespace

TEST(PpoTrainer, FirstMinibatchRatioIsOne) {
  for (int64_t micro : {4, 8}) {
    auto options = options_for_tests();
    options.micro_batch_size = micro;
    PpoSetup s(options, test::rewarded_token_frequency);
    const auto r =
        s.trainer->rollout(test::numbered_prompts(16, 5), test::episode_seeds(16, 1), 0.05);
    const auto stats = s.trainer->learn(r, 5);
    EXPECT_LT(stats.first_ratio_max_deviation, 1e-5) << "micro_batch_size " << micro;
    EXPECT_LT(std::abs(stats.first_approx_kl), 1e-10) << "micro_batch_size " << micro;
    EXPECT_EQ(stats.updates, 4);  // 2 epochs x 16 / 8
    // The reference starts equal to the actor: the rollout's KL is 0.
    EXPECT_EQ(rollout_stats(r).kl_k1, 0.0);
    // Learning moved the policy: later minibatches see ratios away from 1.
    EXPECT_GT(stats.approx_kl, 0.0);
  }
}

TEST(PpoTrainer, BetaZeroRaisesTheRewardedTokenAndLargeBetaHoldsKlNearZero) {
  PpoSetup unheld(options_for_tests(), test::rewarded_token_frequency, /*actor_lr=*/3e-3);
  const auto [before, kl_before] = evaluate(*unheld.trainer, 0.0);
  train(*unheld.trainer, 12, /*beta=*/0.0);
  const auto [after, kl_after] = evaluate(*unheld.trainer, 0.0);
  EXPECT_EQ(kl_before, 0.0);
  EXPECT_GT(after, before + 0.2) << "target frequency " << before << " -> " << after;

  PpoSetup held(options_for_tests(), test::rewarded_token_frequency, /*actor_lr=*/3e-3);
  train(*held.trainer, 12, /*beta=*/5.0);
  const auto [held_after, held_kl] = evaluate(*held.trainer, 5.0);
  // Per-sequence KL over 8 tokens: under 0.05 nats a token, and a small fraction of beta = 0's.
  EXPECT_LT(held_kl, 0.02 * kl_after) << "kl with beta 0: " << kl_after;
  EXPECT_LT(held_kl, 0.4);
  EXPECT_LT(held_after, after);
}

TEST(PpoTrainer, ResponsesWithoutEosGetThePenalty) {
  auto options = options_for_tests();
  options.sampling.max_new_tokens = 3;
  options.sampling.stop_at_eos = true;
  options.missing_eos_penalty = -1.0;
  auto constant = [](const std::vector<std::vector<int64_t>>& p,
                     const std::vector<std::vector<int64_t>>&) {
    return torch::full({static_cast<int64_t>(p.size())}, 5.0f);
  };
  // Find an EOS id this random model emits in some rows but not others within 3 tokens.
  bool found = false;
  for (int64_t eos = 3; eos < 32 && !found; ++eos) {
    options.sampling.eos_id = eos;
    PpoSetup s(options, constant);
    const auto r =
        s.trainer->rollout(test::numbered_prompts(64, 5), test::episode_seeds(64, 3), 0.1);
    const auto ended = r.generation.ended_with_eos;
    const int64_t with_eos = ended.sum().item<int64_t>();
    if (with_eos == 0 || with_eos == 64) continue;
    found = true;
    auto expected = torch::where(ended, torch::full({64}, 5.0f), torch::full({64}, -1.0f));
    EXPECT_TRUE(torch::equal(r.scores, expected)) << r.scores;
    EXPECT_TRUE(torch::equal(r.scorer_scores, torch::full({64}, 5.0f)));
    EXPECT_EQ(r.eos_penalized, 64 - with_eos);
    EXPECT_FALSE(r.scores_constant);
    // The score lands on each row's last response token, beside the (zero) KL penalty.
    const auto last = r.mask.sum(1).to(torch::kLong) - 1;
    for (int64_t b = 0; b < 64; ++b)
      EXPECT_FLOAT_EQ(r.rewards[b][last[b].item<int64_t>()].item<float>(),
                      expected[b].item<float>());
  }
  EXPECT_TRUE(found) << "no EOS id gave a mix of finished and unfinished rows";

  options.missing_eos_penalty = std::nullopt;
  options.sampling.eos_id = 2;
  PpoSetup off(options, constant);
  const auto r =
      off.trainer->rollout(test::numbered_prompts(16, 5), test::episode_seeds(16, 3), 0.1);
  EXPECT_TRUE(torch::equal(r.scores, torch::full({16}, 5.0f)));
  EXPECT_EQ(r.eos_penalized, 0);
  // A constant scorer gives no signal, and the rollout says so.
  EXPECT_TRUE(r.scores_constant);
}

// The default keeps the scorer's score for a response that never ended: a base model rarely
// ends within max_new_tokens, and a penalty would then replace every score by one constant.
TEST(PpoTrainer, ByDefaultUnfinishedResponsesKeepTheScorersScore) {
  PpoOptions defaults;
  EXPECT_FALSE(defaults.missing_eos_penalty.has_value());
  auto options = options_for_tests();
  options.missing_eos_penalty = defaults.missing_eos_penalty;
  options.sampling.stop_at_eos = true;
  options.sampling.eos_id = 2;
  PpoSetup s(options, test::rewarded_token_frequency);
  const auto r = s.trainer->rollout(test::numbered_prompts(16, 5), test::episode_seeds(16, 3), 0.1);
  ASSERT_LT(r.generation.ended_with_eos.sum().item<int64_t>(), 16) << "every row ended";
  EXPECT_TRUE(torch::equal(r.scores, r.scorer_scores));
  EXPECT_EQ(r.eos_penalized, 0);
}

// With a penalty set and no response ending, every score is the penalty: the rollout marks it as
// carrying no signal (the stage warns), and whitening turns it into zeros.
TEST(PpoTrainer, APenaltyThatReplacesEveryScoreIsMarkedAsNoSignal) {
  auto options = options_for_tests();
  options.sampling.stop_at_eos = true;
  options.sampling.max_new_tokens = 2;
  options.missing_eos_penalty = -10.0;
  options.whiten_rewards = true;
  // An EOS id this random model never emits in these 16 rows of 2 tokens.
  std::unique_ptr<PpoSetup> s;
  Rollout r;
  for (int64_t eos = 3; eos < 32; ++eos) {
    options.sampling.eos_id = eos;
    s = std::make_unique<PpoSetup>(options, test::rewarded_token_frequency);
    r = s->trainer->rollout(test::numbered_prompts(16, 5), test::episode_seeds(16, 5), 0.1);
    if (r.generation.ended_with_eos.sum().item<int64_t>() == 0) break;
  }
  ASSERT_EQ(r.generation.ended_with_eos.sum().item<int64_t>(), 0) << "no EOS id left every row";
  EXPECT_EQ(r.eos_penalized, 16);
  EXPECT_TRUE(r.scores_constant);
  EXPECT_TRUE(torch::equal(r.penalized_scores, torch::full({16}, -10.0f)));
  EXPECT_EQ(r.scores.abs().max().item<float>(), 0.0f);
  EXPECT_DOUBLE_EQ(rollout_stats(r).eos_penalized_fraction, 1.0);
}

// The critic's values are its head less value_offset: a critic initialised from a reward model
// predicts the raw head, the rewards are the head less the model's offset.
TEST(PpoTrainer, TheValueOffsetPutsTheCriticOnTheRewardsScale) {
  auto options = options_for_tests();
  PpoSetup plain(options, test::rewarded_token_frequency);
  {
    torch::NoGradGuard no_grad;
    plain.critic->score->weight.normal_(0, 0.5);
  }
  options.value_offset = 7.5;
  PpoTrainer offset(options, *plain.actor, *plain.reference, *plain.critic,
                    test::rewarded_token_frequency, *plain.actor_opt, *plain.critic_opt);
  const auto a =
      plain.trainer->rollout(test::numbered_prompts(8, 5), test::episode_seeds(8, 2), 0.1);
  const auto b = offset.rollout(test::numbered_prompts(8, 5), test::episode_seeds(8, 2), 0.1);
  ASSERT_TRUE(torch::equal(a.sequence_ids, b.sequence_ids));
  expect_close_masked(b.values, (a.values - 7.5) * a.mask, "values less the offset");
}

// Whitened scores and a critic that starts as the reward model: the first rollout with a signal
// moves the critic's offset and scale by its scores' mean and deviation (what whitening takes
// out), maps its values onto them, and later rollouts keep them.
TEST(PpoTrainer, WhitenedScoresCalibrateTheCriticsScaleAtTheFirstRolloutWithASignal) {
  auto options = options_for_tests();
  options.whiten_rewards = true;
  options.value_offset = 0.5;
  PpoSetup plain(options, test::rewarded_token_frequency);
  {
    torch::NoGradGuard no_grad;
    plain.critic->score->weight.normal_(0, 0.5);
  }
  const auto constant = [](const std::vector<std::vector<int64_t>>& prompts,
                           const std::vector<std::vector<int64_t>>&) {
    return torch::full({static_cast<int64_t>(prompts.size())}, 3.0f);
  };
  options.calibrate_value_scale = true;
  PpoTrainer waits(options, *plain.actor, *plain.reference, *plain.critic, constant,
                   *plain.actor_opt, *plain.critic_opt);
  const auto prompts = test::numbered_prompts(8, 5);
  // Constant scores have no deviation to divide by: the calibration waits for a signal.
  waits.rollout(prompts, test::episode_seeds(8, 2), 0.1);
  EXPECT_TRUE(waits.critic_scale().pending);
  EXPECT_EQ(waits.critic_scale().offset, 0.5);
  EXPECT_EQ(waits.critic_scale().scale, 1.0);

  PpoTrainer calibrates(options, *plain.actor, *plain.reference, *plain.critic,
                        test::rewarded_token_frequency, *plain.actor_opt, *plain.critic_opt);
  const auto raw = plain.trainer->rollout(prompts, test::episode_seeds(8, 2), 0.1);
  const auto first = calibrates.rollout(prompts, test::episode_seeds(8, 2), 0.1);
  ASSERT_TRUE(torch::equal(raw.sequence_ids, first.sequence_ids));
  const double mean = raw.penalized_scores.to(torch::kDouble).mean().item<double>();
  const double deviation = raw.penalized_scores.to(torch::kDouble).std().item<double>();
  ASSERT_GT(deviation, 0.01) << "the rewarded token's frequency did not vary over the rollout";
  EXPECT_FALSE(calibrates.critic_scale().pending);
  EXPECT_NEAR(calibrates.critic_scale().offset, 0.5 + mean, 1e-6);
  EXPECT_NEAR(calibrates.critic_scale().scale, deviation, 1e-5);
  expect_close_masked(first.values, (raw.values - mean) / deviation * raw.mask,
                      "the first rollout's values on the whitened scores' scale");
  // The scores the returns end in are whitened (deviation 1), the scale the values now have.
  EXPECT_NEAR(first.scores.std().item<double>(), 1.0, 1e-4);

  const auto again = calibrates.rollout(prompts, test::episode_seeds(8, 3), 0.1);
  const auto raw_again = plain.trainer->rollout(prompts, test::episode_seeds(8, 3), 0.1);
  expect_close_masked(again.values, (raw_again.values - mean) / deviation * raw_again.mask,
                      "a later rollout keeps the first one's scale");

  // A resumed run restores the scale; a non-positive one is refused.
  waits.restore_critic_scale({0.5 + mean, deviation, false});
  EXPECT_FALSE(waits.critic_scale().pending);
  EXPECT_EQ(waits.critic_scale().scale, deviation);
  EXPECT_THROW(waits.restore_critic_scale({0.0, 0.0, false}), std::exception);
}

TEST(PpoTrainer, EpisodesDependOnTheirSeedNotTheirBatch) {
  auto options = options_for_tests();
  PpoSetup s(options, test::rewarded_token_frequency);
  const auto all = test::numbered_prompts(8, 5);
  const auto all_seeds = test::episode_seeds(8, 4);
  const auto together = s.trainer->rollout(all, all_seeds, 0.0);
  for (int64_t i : {0, 3, 6}) {
    const auto alone = s.trainer->rollout({all[i]}, {all_seeds[i]}, 0.0);
    EXPECT_EQ(alone.responses[0], together.responses[i]) << "episode " << i;
  }
}

namespace {

// Sets LibTorch's intra-op threads for a test's duration.
struct ThreadsForTest {
  int before = at::get_num_threads();
  explicit ThreadsForTest(int threads) { at::set_num_threads(threads); }
  ~ThreadsForTest() { at::set_num_threads(before); }
};

void expect_allclose(const torch::Tensor& a, const torch::Tensor& b, const std::string& what) {
  EXPECT_TRUE(torch::allclose(a, b, /*rtol=*/1e-5, /*atol=*/1e-6))
      << what << ": max difference " << (a - b).abs().max().item<double>();
}

}  // namespace

// The actor's and critic's passes side by side (two threads, one intra-op thread each) compute
// what they compute one after the other: the same rollout figures and, after two epochs of
// updates, the same weights.
TEST(PpoTrainer, SideBySideComputesWhatOneAfterTheOtherDoes) {
  ThreadsForTest two(2);
  auto sequential_options = options_for_tests();
  sequential_options.side_by_side = false;
  PpoSetup sequential(sequential_options, test::rewarded_token_frequency);
  PpoSetup side_by_side(options_for_tests(), test::rewarded_token_frequency);
  ASSERT_FALSE(sequential.trainer->side_by_side());
  ASSERT_TRUE(side_by_side.trainer->side_by_side());

  const auto a =
      sequential.trainer->rollout(test::numbered_prompts(16, 5), test::episode_seeds(16, 3), 0.05);
  const auto b = side_by_side.trainer->rollout(test::numbered_prompts(16, 5),
                                               test::episode_seeds(16, 3), 0.05);
  EXPECT_EQ(at::get_num_threads(), 2) << "the threads are restored after the rollout";
  ASSERT_TRUE(torch::equal(a.sequence_ids, b.sequence_ids));
  expect_allclose(a.logprobs, b.logprobs, "log-probs");
  expect_allclose(a.ref_logprobs, b.ref_logprobs, "reference log-probs");
  expect_allclose(a.values, b.values, "values");
  expect_allclose(a.entropy, b.entropy, "entropy");
  expect_allclose(a.scorer_scores, b.scorer_scores, "scores");

  const auto learned_a = sequential.trainer->learn(a, 5);
  const auto learned_b = side_by_side.trainer->learn(b, 5);
  EXPECT_EQ(at::get_num_threads(), 2) << "the threads are restored after learning";
  EXPECT_EQ(learned_b.updates, 4);
  EXPECT_NEAR(learned_a.policy_loss, learned_b.policy_loss, 1e-6);
  EXPECT_NEAR(learned_a.value_loss, learned_b.value_loss, 1e-6);
  EXPECT_NEAR(learned_a.actor_grad_norm, learned_b.actor_grad_norm, 1e-5);
  EXPECT_NEAR(learned_a.critic_grad_norm, learned_b.critic_grad_norm, 1e-5);
  const auto pairs = {std::make_pair(sequential.actor.ptr(), side_by_side.actor.ptr()),
                      std::make_pair(sequential.critic.ptr(), side_by_side.critic.ptr())};
  for (const auto& [x, y] : pairs) {
    const auto px = x->named_parameters(), py = y->named_parameters();
    ASSERT_EQ(px.size(), py.size());
    for (size_t i = 0; i < px.size(); ++i)
      expect_allclose(px[i].value(), py[i].value(), px[i].key());
  }
  // And they did move: a comparison of two untouched models would prove nothing.
  EXPECT_FALSE(torch::equal(side_by_side.actor->named_parameters()[1].value(),
                            side_by_side.reference->named_parameters()[1].value()));
}

// Side by side only where it pays: never with one intra-op thread, and not when one model has
// far fewer matrix multiplies per token than the other (the larger alone would set the pace).
TEST(PpoTrainer, SideBySideOnlyWithTwoThreadsAndModelsOfSimilarSize) {
  {
    ThreadsForTest one(1);
    PpoSetup s(options_for_tests(), test::rewarded_token_frequency);
    EXPECT_FALSE(s.trainer->side_by_side());
  }
  ThreadsForTest two(2);
  PpoSetup similar(options_for_tests(), test::rewarded_token_frequency);
  EXPECT_TRUE(similar.trainer->side_by_side());

  ModelConfig small = test::llama_config(32, 8, 16, 1, 2, 2, 64);
  small.num_labels = 1;
  Transformer small_critic(small);
  small_critic->init_weights(4);
  ParallelAdamW critic_opt(*small_critic, OptimizerOptions{1e-3, 0.0, 0.9, 0.95, 1e-8},
                           dist::Group());
  PpoTrainer lopsided(options_for_tests(), *similar.actor, *similar.reference, *small_critic,
                      test::rewarded_token_frequency, *similar.actor_opt, critic_opt);
  EXPECT_FALSE(lopsided.side_by_side());
  // It still trains, one after the other.
  const auto r = lopsided.rollout(test::numbered_prompts(8, 5), test::episode_seeds(8, 1), 0.05);
  EXPECT_EQ(lopsided.learn(r, 1).updates, 2);
}
