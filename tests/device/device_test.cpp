// The same computation on the CPU and on the device under test (env TILLER_TEST_DEVICE: cpu,
// cuda or cuda:N; cuda when unset): one SFT step, one reward-model step and one PPO iteration
// agree within fp32 tolerance, and bf16 autocast on the device stays close to fp32. With
// TILLER_TEST_DEVICE=cpu the CPU is compared with itself: the harness's dry run, on any machine.
//
// Built only on request (TILLER_DEVICE_TESTS=ON, tests/device/run.sh), apart from tiller_tests.
// A device that is not there skips every test with the reason, unless TILLER_TEST_DEVICE_REQUIRED
// is set (run.sh sets it on the GPU machine: a skip there would read as a pass).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "common/data/batching.h"
#include "common/data/preference_data.h"
#include "common/dist/process_group.h"
#include "common/model/reward_model.h"
#include "common/torch_compat.h"
#include "common/train/lm_loss.h"
#include "common/train/optimizer.h"
#include "common/train/pairwise_reward.h"
#include "common/train/parallel_adamw.h"
#include "rlhf/ppo_trainer.h"
#include "tests/ppo_fixtures.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

// ---------------------------------------------------------------------------------------------
// The device under test

// fp32 on two devices differs by summation order and by kernel (cuBLAS against OpenBLAS or
// oneDNN, scaled_dot_product_attention against the fused CPU attention): about 1e-6 relative per
// op. Every comparison below allows 1e-4 of the compared tensor's largest magnitude, room for the
// rounding of the few hundred ops of a step, while a wrong mask, position, index or dtype moves
// results by 1e-2 or more. (TF32 matmuls, were they switched on, would exceed it: 1e-3.)
constexpr double kFp32Tolerance = 1e-4;
// bf16 autocast against fp32 on the same device: bf16 keeps 8 bits of mantissa (0.4% per
// rounding); the loss of a whole forward stays within 1%.
constexpr double kBf16LossTolerance = 1e-2;

struct DeviceUnderTest {
  std::optional<torch::Device> device;
  std::string why_not;     // when there is no device: why, for the skip message
  bool malformed = false;  // TILLER_TEST_DEVICE names no device: a mistake, never a skip
};

DeviceUnderTest device_under_test() {
  const char* env = std::getenv("TILLER_TEST_DEVICE");
  const std::string text = env != nullptr && *env != '\0' ? env : "cuda";
  std::optional<torch::Device> device;
  try {
    device = torch::Device(text);
  } catch (const c10::Error&) {
  }
  if (!device || !(device->is_cpu() || device->is_cuda()))
    return {std::nullopt, "TILLER_TEST_DEVICE=" + text + " is not cpu, cuda or cuda:N", true};
  if (device->is_cuda()) {
    if (!compat::cuda_available())
      return {std::nullopt, "TILLER_TEST_DEVICE=" + text +
                                ": no CUDA GPU is visible (a LibTorch without CUDA, or no GPU "
                                "on this machine)"};
    const int64_t gpus = static_cast<int64_t>(torch::cuda::device_count());
    if (device->has_index() && device->index() >= gpus)
      return {std::nullopt,
              "TILLER_TEST_DEVICE=" + text + ": there are " + std::to_string(gpus) + " GPUs"};
  }
  return {device, ""};
}

bool device_required() {
  const char* env = std::getenv("TILLER_TEST_DEVICE_REQUIRED");
  return env != nullptr && *env != '\0' && std::string(env) != "0";
}

// The device under test as `var`, or the test skipped with the reason (failed where
// TILLER_TEST_DEVICE_REQUIRED is set, or where TILLER_TEST_DEVICE names no device at all).
#define TILLER_DEVICE_UNDER_TEST(var)                                              \
  const DeviceUnderTest var##_found = device_under_test();                         \
  if (!var##_found.device) {                                                       \
    if (var##_found.malformed || device_required()) FAIL() << var##_found.why_not; \
    GTEST_SKIP() << "skipped: " << var##_found.why_not;                            \
  }                                                                                \
  const torch::Device var = *var##_found.device;                                   \
  std::printf("[ device   ] %s against the CPU\n", var.str().c_str())

// ---------------------------------------------------------------------------------------------
// Comparisons

// "cuda" (the current GPU) is the same device as "cuda:0" when that is the current one.
bool same_device(const torch::Device& a, const torch::Device& b) {
  return a.type() == b.type() && (!a.has_index() || !b.has_index() || a.index() == b.index());
}

// max |got - want| / max |want|, got brought to the CPU; infinity where got is not finite.
double relative_difference(const torch::Tensor& got, const torch::Tensor& want) {
  const auto g = got.detach().to(torch::kCPU, torch::kDouble);
  const auto w = want.detach().to(torch::kCPU, torch::kDouble);
  if (g.sizes() != w.sizes() || !torch::isfinite(g).all().item<bool>())
    return std::numeric_limits<double>::infinity();
  const double scale = std::max(w.abs().max().item<double>(), 1e-30);
  return (g - w).abs().max().item<double>() / scale;
}

// The largest difference a test has seen so far (its fraction of the tolerance's scale), which
// the fixture records as the test's `worst_relative_difference` property in the JSON output: the
// figure of CPU-against-device agreement.
double worst_difference = 0;

void expect_agree(const torch::Tensor& device_value, const torch::Tensor& cpu_value,
                  const std::string& what) {
  const double difference = relative_difference(device_value, cpu_value);
  worst_difference = std::max(worst_difference, difference);
  EXPECT_LE(difference, kFp32Tolerance)
      << what << ": the device's differs from the CPU's by " << difference << " of its scale";
}

// Scalars that may sit near 0 (a whitened advantage's mean): within the tolerance of max(1, |x|).
void expect_agree(double device_value, double cpu_value, const std::string& what) {
  const double difference = std::abs(device_value - cpu_value) / std::max(1.0, std::abs(cpu_value));
  worst_difference = std::max(worst_difference, difference);
  EXPECT_LE(difference, kFp32Tolerance)
      << what << ": device " << device_value << ", CPU " << cpu_value;
}

void expect_parameters_agree(TransformerImpl& on_device, TransformerImpl& on_cpu,
                             const std::string& what) {
  const auto device_params = on_device.named_parameters();
  const auto cpu_params = on_cpu.named_parameters();
  ASSERT_EQ(device_params.size(), cpu_params.size());
  for (size_t i = 0; i < cpu_params.size(); ++i)
    expect_agree(device_params[i].value(), cpu_params[i].value(), what + " " + cpu_params[i].key());
}

void expect_gradients_agree(TransformerImpl& on_device, TransformerImpl& on_cpu,
                            const std::string& what) {
  const auto device_params = on_device.named_parameters();
  const auto cpu_params = on_cpu.named_parameters();
  for (size_t i = 0; i < cpu_params.size(); ++i) {
    const auto& want = cpu_params[i].value().grad();
    const auto& got = device_params[i].value().grad();
    ASSERT_EQ(got.defined(), want.defined()) << what << " " << cpu_params[i].key();
    if (!want.defined()) continue;
    EXPECT_TRUE(same_device(got.device(), device_params[i].value().device()))
        << cpu_params[i].key();
    expect_agree(got, want, what + " " + cpu_params[i].key());
  }
}

// ---------------------------------------------------------------------------------------------
// Models, data and optimizers

// The same weights twice: one model on the CPU, one on `device`.
struct ModelPair {
  Transformer cpu{nullptr}, device{nullptr};
};

ModelPair model_pair(const ModelConfig& config, uint64_t seed, const torch::Device& device) {
  ModelPair pair{Transformer(config), Transformer(config)};
  pair.cpu->init_weights(seed);
  pair.device->init_weights(seed);
  pair.device->to(device);
  return pair;
}

ModelConfig tiny_llama(int64_t num_labels = 0) {
  ModelConfig c = test::llama_config(96, 64, 128, 2, 4, 2, 64);
  c.tie_word_embeddings = false;
  c.num_labels = num_labels;
  return c;
}

// AdamW as the stages build it. eps 1e-3 bounds an update's sensitivity to its gradient at
// lr / eps = 1: the weights after a step differ by no more than the gradients do. With eps 1e-8
// an element whose gradient is ~1e-9 takes a full lr step whose sign is rounding's choice.
std::unique_ptr<ParallelAdamW> adamw(TransformerImpl& model) {
  return std::make_unique<ParallelAdamW>(model, OptimizerOptions{1e-3, 0.1, 0.9, 0.95, 1e-3},
                                         dist::Group());
}

// Examples of 5 to 16 tokens, BOS first, the second half trainable: packed rows with several
// documents, padding and ignored targets.
std::vector<Example> random_examples(int count, uint64_t seed, int64_t vocab) {
  auto generator = compat::make_cpu_generator(seed);
  std::vector<Example> out;
  for (int i = 0; i < count; ++i) {
    const int64_t length = 5 + (i * 7) % 12;
    const auto ids = torch::randint(3, vocab, {length}, generator, torch::kLong);
    Example e;
    for (int64_t t = 0; t < length; ++t) {
      e.tokens.push_back(t == 0 ? 1 : ids[t].item<int64_t>());
      e.trainable.push_back(t >= length / 2 ? 1 : 0);
    }
    out.push_back(e);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// SFT

// The SFT stage's step (sft/sft_stage.cpp): the LM loss over the batch's targets, backward, the
// gradients clipped to norm 1, AdamW. Returns the loss and the norm before clipping.
std::pair<double, double> sft_step(TransformerImpl& model, ParallelAdamW& optimizer,
                                   const TokenBatch& batch, bool bf16) {
  optimizer.zero_grad();
  torch::Tensor loss;
  {
    compat::AutocastGuard cast(bf16, model.parameters().front().device());
    loss = lm_loss_sum(model, batch) / static_cast<double>(batch.target_count);
  }
  loss.backward();
  const double norm = optimizer.reduce_gradients_and_clip(1.0);
  optimizer.step();
  return {loss.item<double>(), norm};
}

TokenBatch sft_batch() {
  const auto examples = random_examples(10, 3, tiny_llama().vocab_size);
  BatchingOptions batching;
  batching.max_seq_len = 32;
  const auto rows = plan_in_order(examples, batching);
  return make_batch(examples, rows, 0, static_cast<int64_t>(rows.size()), batching, 0);
}

// ---------------------------------------------------------------------------------------------
// Reward model

std::vector<PreferencePair> random_pairs(int count, uint64_t seed, int64_t vocab) {
  auto generator = compat::make_cpu_generator(seed);
  std::vector<PreferencePair> pairs;
  for (int i = 0; i < count; ++i) {
    PreferencePair p;
    for (auto* sequence : {&p.chosen, &p.rejected}) {
      const int64_t length = 4 + (i * 5 + static_cast<int>(sequence == &p.rejected) * 3) % 11;
      const auto ids = torch::randint(3, vocab, {length}, generator, torch::kLong);
      sequence->push_back(1);
      for (int64_t t = 1; t < length; ++t) sequence->push_back(ids[t].item<int64_t>());
      sequence->push_back(2);  // EOS: the reward is read there
    }
    p.margin = 0.25 * (i % 3);
    pairs.push_back(p);
  }
  return pairs;
}

// The reward stage's step (reward/reward_stage.cpp): scores on the model's device, brought to the
// CPU, the Bradley-Terry loss with a centring term, backward, clip, AdamW. Returns the loss and
// the scores.
std::pair<double, torch::Tensor> reward_step(TransformerImpl& model, ParallelAdamW& optimizer,
                                             const ComparisonBatch& batch) {
  optimizer.zero_grad();
  const auto scores = raw_scores(model, batch.rows).cpu();
  const auto loss = pairwise_loss_sum(scores.index_select(0, batch.better),
                                      scores.index_select(0, batch.worse), batch.margin, 0.01) /
                    static_cast<double>(batch.better.size(0));
  loss.backward();
  optimizer.reduce_gradients_and_clip(1.0);
  optimizer.step();
  return {loss.item<double>(), scores.detach()};
}

// ---------------------------------------------------------------------------------------------
// PPO

// Actor, reference (the actor's weights), critic, their optimizers and the trainer, on one
// device.
struct PpoSide {
  Transformer actor{nullptr}, reference{nullptr}, critic{nullptr};
  std::unique_ptr<ParallelAdamW> actor_optimizer, critic_optimizer;
  std::unique_ptr<PpoTrainer> trainer;
};

void set_up_ppo(PpoSide& side, Transformer actor, Transformer reference, Transformer critic) {
  side.actor = actor;
  side.reference = reference;
  side.critic = critic;
  side.actor_optimizer = adamw(*side.actor);
  side.critic_optimizer = adamw(*side.critic);
  PpoOptions o;
  o.sampling.max_new_tokens = 8;
  o.sampling.temperature = 1.0;
  o.sampling.eos_id = 2;
  o.sampling.pad_id = 0;
  o.missing_eos_penalty = -1.0;
  o.epochs = 2;
  o.mini_batch_size = 8;
  o.micro_batch_size = 4;
  side.trainer = std::make_unique<PpoTrainer>(o, *side.actor, *side.reference, *side.critic,
                                              test::rewarded_token_frequency, *side.actor_optimizer,
                                              *side.critic_optimizer);
}

// Each test's worst difference, in the JSON output beside its result.
class DeviceAgreement : public ::testing::Test {
 protected:
  void SetUp() override { worst_difference = 0; }
  void TearDown() override {
    char text[32];
    std::snprintf(text, sizeof(text), "%.3g", worst_difference);
    RecordProperty("worst_relative_difference", text);
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------

TEST_F(DeviceAgreement, SftStepsGiveTheCpusLossGradientsAndWeights) {
  TILLER_DEVICE_UNDER_TEST(device);
  const TokenBatch batch = sft_batch();
  ASSERT_GT(batch.rows(), 1);
  ModelPair models = model_pair(tiny_llama(), 11, device);
  auto cpu_optimizer = adamw(*models.cpu), device_optimizer = adamw(*models.device);

  // Two steps: the second takes AdamW's moments from the first.
  for (int step = 0; step < 2; ++step) {
    const auto [cpu_loss, cpu_norm] = sft_step(*models.cpu, *cpu_optimizer, batch, false);
    const auto [device_loss, device_norm] =
        sft_step(*models.device, *device_optimizer, batch, false);
    const std::string at = "step " + std::to_string(step);
    expect_agree(device_loss, cpu_loss, at + " loss");
    expect_agree(device_norm, cpu_norm, at + " gradient norm");
    expect_gradients_agree(*models.device, *models.cpu, at + " gradient of");
  }
  expect_parameters_agree(*models.device, *models.cpu, "after two steps");
  for (const auto& p : models.device->parameters()) ASSERT_TRUE(same_device(p.device(), device));
}

TEST_F(DeviceAgreement, RewardModelStepGivesTheCpusScoresLossAndWeights) {
  TILLER_DEVICE_UNDER_TEST(device);
  const auto pairs = random_pairs(6, 5, tiny_llama().vocab_size);
  std::vector<int64_t> order;
  for (int64_t i = 0; i < static_cast<int64_t>(pairs.size()); ++i) order.push_back(i);
  const ComparisonBatch batch = make_pair_batch(pairs, order, 0, pairs.size(), /*pad_id=*/0,
                                                /*use_margin=*/true);
  ModelPair models = model_pair(tiny_llama(/*num_labels=*/1), 13, device);
  auto cpu_optimizer = adamw(*models.cpu), device_optimizer = adamw(*models.device);

  const auto [cpu_loss, cpu_scores] = reward_step(*models.cpu, *cpu_optimizer, batch);
  const auto [device_loss, device_scores] = reward_step(*models.device, *device_optimizer, batch);
  expect_agree(device_scores, cpu_scores, "scores (each read at its row's last real token)");
  expect_agree(device_loss, cpu_loss, "pairwise loss");
  expect_gradients_agree(*models.device, *models.cpu, "gradient of");
  expect_parameters_agree(*models.device, *models.cpu, "after the step");
}

TEST_F(DeviceAgreement, PpoIterationGivesTheCpusRolloutLossesAndWeights) {
  TILLER_DEVICE_UNDER_TEST(device);
  ModelPair actors = model_pair(tiny_llama(), 21, device);
  // A reference other than the actor: the KL in the rewards is not 0.
  ModelPair references = model_pair(tiny_llama(), 23, device);
  ModelPair critics = model_pair(tiny_llama(/*num_labels=*/1), 22, device);
  PpoSide cpu, on_device;
  set_up_ppo(cpu, actors.cpu, references.cpu, critics.cpu);
  set_up_ppo(on_device, actors.device, references.device, critics.device);

  const auto prompts = test::numbered_prompts(16, 5);
  const auto seeds = test::episode_seeds(16, 1);
  const Rollout want = cpu.trainer->rollout(prompts, seeds, /*beta=*/0.05);
  const Rollout got = on_device.trainer->rollout(prompts, seeds, /*beta=*/0.05);

  // The rollout lives on the device (but what the scorer said, which the trainer keeps on the
  // CPU as the scorer returned it).
  for (const auto& [name, tensor] : rollout_tensors(got)) {
    if (name != "scorer_scores") {
      EXPECT_TRUE(same_device(tensor.device(), device)) << name;
    }
  }
  // Both sides draw each token with the same per-episode uniforms from the CPU, so the sampled
  // responses are the same unless a uniform falls within rounding of a step of the CDF.
  ASSERT_TRUE(torch::equal(got.generation.response_ids.cpu(), want.generation.response_ids))
      << "the sampled responses differ: CPU\n"
      << want.generation.response_ids << "\ndevice\n"
      << got.generation.response_ids.cpu();
  const auto got_tensors = rollout_tensors(got), want_tensors = rollout_tensors(want);
  ASSERT_EQ(got_tensors.size(), want_tensors.size());
  for (size_t i = 0; i < want_tensors.size(); ++i) {
    const auto& [name, tensor] = want_tensors[i];
    if (tensor.is_floating_point())
      expect_agree(got_tensors[i].second, tensor, "rollout " + name);
    else
      EXPECT_TRUE(torch::equal(got_tensors[i].second.cpu(), tensor)) << "rollout " << name;
  }
  EXPECT_GT(want.kl.abs().max().item<double>(), 0.0);

  const LearnStats cpu_stats = cpu.trainer->learn(want, /*shuffle_seed=*/3);
  const LearnStats device_stats = on_device.trainer->learn(got, /*shuffle_seed=*/3);
  EXPECT_EQ(device_stats.updates, cpu_stats.updates);
  EXPECT_EQ(cpu_stats.updates, 4);  // 2 epochs x 16 episodes / minibatches of 8
  expect_agree(device_stats.policy_loss, cpu_stats.policy_loss, "policy loss");
  expect_agree(device_stats.value_loss, cpu_stats.value_loss, "value loss");
  expect_agree(device_stats.approx_kl, cpu_stats.approx_kl, "approx KL");
  expect_agree(device_stats.actor_grad_norm, cpu_stats.actor_grad_norm, "actor gradient norm");
  expect_agree(device_stats.critic_grad_norm, cpu_stats.critic_grad_norm, "critic gradient norm");
  // The rollout's log-probs are the training pass's (ratio 1 in the first minibatch) on the
  // device as on the CPU.
  EXPECT_LT(device_stats.first_ratio_max_deviation, 1e-5);
  expect_parameters_agree(*on_device.actor, *cpu.actor, "actor after learning:");
  expect_parameters_agree(*on_device.critic, *cpu.critic, "critic after learning:");
}

TEST_F(DeviceAgreement, Bf16AutocastOnTheDeviceStaysCloseToFp32) {
  TILLER_DEVICE_UNDER_TEST(device);
  const TokenBatch batch = sft_batch();
  ModelPair fp32 = model_pair(tiny_llama(), 31, device);
  ModelPair bf16 = model_pair(tiny_llama(), 31, device);
  auto fp32_optimizer = adamw(*fp32.device), bf16_optimizer = adamw(*bf16.device);
  const auto [fp32_loss, fp32_norm] = sft_step(*fp32.device, *fp32_optimizer, batch, false);
  const auto [bf16_loss, bf16_norm] = sft_step(*bf16.device, *bf16_optimizer, batch, true);
  worst_difference = std::abs(bf16_loss - fp32_loss) / std::abs(fp32_loss);
  EXPECT_LE(std::abs(bf16_loss - fp32_loss), kBf16LossTolerance * std::abs(fp32_loss))
      << "loss: bf16 " << bf16_loss << ", fp32 " << fp32_loss;
  EXPECT_GT(std::abs(bf16_loss - fp32_loss), 0.0) << "bf16 autocast computed nothing in bf16";
  // The master weights stay fp32, and the gradients point the same way.
  double dot = 0, fp32_squares = 0, bf16_squares = 0;
  const auto fp32_params = fp32.device->parameters(), bf16_params = bf16.device->parameters();
  for (size_t i = 0; i < fp32_params.size(); ++i) {
    ASSERT_EQ(bf16_params[i].scalar_type(), torch::kFloat);
    const auto a = fp32_params[i].grad().to(torch::kDouble),
               b = bf16_params[i].grad().to(torch::kDouble);
    dot += (a * b).sum().item<double>();
    fp32_squares += a.pow(2).sum().item<double>();
    bf16_squares += b.pow(2).sum().item<double>();
  }
  EXPECT_GT(dot / std::sqrt(fp32_squares * bf16_squares), 0.99) << "gradient cosine similarity";
  EXPECT_LE(std::abs(bf16_norm - fp32_norm), 0.05 * fp32_norm) << "gradient norm";
}
