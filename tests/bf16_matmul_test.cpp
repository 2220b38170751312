// bf16 products summed in fp32 (common/model/bf16_matmul.h) and project() under bf16 autocast
// (common/model/fused_linear.h): each checked against the same product written here in double
// from the bf16-rounded operands, never against another path of the op itself. They run where the
// CPU has fast bf16 (AVX-512 BF16 or AMX) and skip with a message elsewhere.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/model/bf16_matmul.h"
#include "common/model/fused_linear.h"
#include "common/model/transformer.h"
#include "common/torch_compat.h"
#include "tests/test_util.h"

namespace tiller {
namespace {

#define TILLER_REQUIRE_BF16_MATMUL()                                                      \
  if (!bf16_matmul_available())                                                           \
  GTEST_SKIP() << "skipped: this CPU has no fast bf16 (AVX-512 BF16 or AMX), or neither " \
                  "oneDNN's nor MKL's gemm_bf16bf16f32 is loaded"

// The value a bf16 rounding of t holds, in double.
torch::Tensor rounded(const torch::Tensor& t) {
  return t.detach().to(torch::kBFloat16).to(torch::kDouble);
}

// max |got - want| over max |want|.
double relative_difference(const torch::Tensor& got, const torch::Tensor& want) {
  const auto want_d = want.to(torch::kDouble);
  const double scale = std::max(want_d.abs().max().item<double>(), 1e-30);
  return (got.to(torch::kDouble) - want_d).abs().max().item<double>() / scale;
}

TEST(Bf16Matmul, EveryTransposeGivesTheProductOfTheBf16OperandsSummedInFp32) {
  TILLER_REQUIRE_BF16_MATMUL();
  torch::manual_seed(1);
  const int64_t m = 37, k = 300, n = 45;  // odd sizes: no kernel's block divides them
  for (const bool transpose_a : {false, true}) {
    for (const bool transpose_b : {false, true}) {
      const auto a =
          (transpose_a ? torch::randn({k, m}) : torch::randn({m, k})).to(torch::kBFloat16);
      const auto b =
          (transpose_b ? torch::randn({n, k}) : torch::randn({k, n})).to(torch::kBFloat16);
      const auto got = bf16_matmul(a, transpose_a, b, transpose_b);
      ASSERT_EQ(got.scalar_type(), torch::kFloat);
      ASSERT_EQ(got.sizes(), (std::vector<int64_t>{m, n}));
      const auto a_d = transpose_a ? rounded(a).t() : rounded(a);
      const auto b_d = transpose_b ? rounded(b).t() : rounded(b);
      // fp32 sums of 300 products of unit-scale values: within ~1e-6 of the exact product's
      // scale; a bf16-rounded result would be off by ~4e-3.
      EXPECT_LT(relative_difference(got, a_d.mm(b_d)), 1e-5)
          << "transpose_a " << transpose_a << " transpose_b " << transpose_b;
    }
  }
  EXPECT_EQ(bf16_matmul(torch::zeros({3, 0}, torch::kBFloat16), false,
                        torch::zeros({0, 4}, torch::kBFloat16), false)
                .abs()
                .sum()
                .item<double>(),
            0.0);
  EXPECT_THROW(bf16_matmul(torch::zeros({3, 4}), false, torch::zeros({4, 2}), false), c10::Error);
}

// project() under bf16 autocast with q/k/v-like weights back to back and biases: fp32 outputs
// equal to x_bf16 W_bf16^T + b summed exactly, and gradients equal to the output gradient rounded
// to bf16 times the bf16 operands (input: dY W, weights: dY^T X, biases: the fp32 sums of dY).
TEST(Bf16Matmul, AutocastProjectMultipliesBf16OperandsAndReturnsFp32ForwardAndBackward) {
  TILLER_REQUIRE_BF16_MATMUL();
  torch::manual_seed(2);
  std::vector<torch::Tensor> weights = {torch::randn({24, 40}), torch::randn({8, 40}),
                                        torch::randn({8, 40})};
  std::vector<torch::Tensor> biases = {torch::randn({24}), torch::randn({8}), torch::randn({8})};
  for (auto& t : weights) t.requires_grad_(true);
  for (auto& t : biases) t.requires_grad_(true);
  fuse_parameter_storage(weights);
  fuse_parameter_storage(biases);
  const auto input = torch::randn({3, 7, 40}).requires_grad_(true);
  std::vector<torch::Tensor> out;
  {
    compat::AutocastGuard cast(true, torch::kCPU);
    out = project(input, weights, biases);
  }
  ASSERT_EQ(out.size(), 3u);
  const auto x = rounded(input).reshape({-1, 40});
  torch::Tensor loss = torch::zeros({});
  std::vector<torch::Tensor> directions;
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(out[i].scalar_type(), torch::kFloat) << "output " << i;
    const auto want = x.mm(rounded(weights[i]).t()) + biases[i].detach().to(torch::kDouble);
    EXPECT_LT(relative_difference(out[i].reshape({-1, want.size(1)}), want), 1e-5) << i;
    directions.push_back(torch::randn(out[i].sizes()));
    loss = loss + (out[i] * directions[i]).sum();
  }
  loss.backward();
  torch::Tensor input_grad = torch::zeros({21, 40}, torch::kDouble);
  for (size_t i = 0; i < 3; ++i) {
    const auto dy = rounded(directions[i]).reshape({21, -1});
    input_grad += dy.mm(rounded(weights[i]));
    EXPECT_LT(relative_difference(weights[i].grad(), dy.t().mm(x)), 1e-5) << "weight " << i;
    EXPECT_EQ(weights[i].grad().scalar_type(), torch::kFloat);
    const auto bias_grad = directions[i].reshape({21, -1}).to(torch::kDouble).sum(0);
    EXPECT_LT(relative_difference(biases[i].grad(), bias_grad), 1e-5) << "bias " << i;
  }
  EXPECT_LT(relative_difference(input.grad().reshape({21, 40}), input_grad), 1e-5);
}

// Weights that are not back to back (each in its own storage) are joined for the multiply; frozen
// ones get no gradient; without autograd the same values come out.
TEST(Bf16Matmul, AutocastProjectJoinsSeparateWeightsAndLeavesFrozenOnesWithoutGradient) {
  TILLER_REQUIRE_BF16_MATMUL();
  torch::manual_seed(3);
  const std::vector<torch::Tensor> weights = {torch::randn({6, 16}), torch::randn({10, 16})};
  ASSERT_FALSE(stored_back_to_back(weights));
  const auto input = torch::randn({5, 16}).requires_grad_(true);
  compat::AutocastGuard cast(true, torch::kCPU);
  const auto out = project(input, weights, {});
  torch::Tensor untracked;
  {
    torch::NoGradGuard no_grad;
    untracked = project(input, weights, {})[1];
  }
  EXPECT_TRUE(torch::equal(out[1].detach(), untracked));
  EXPECT_LT(relative_difference(out[1], rounded(input).mm(rounded(weights[1]).t())), 1e-5);
  (out[0].sum() + 2 * out[1].sum()).backward();
  for (const auto& w : weights) EXPECT_FALSE(w.grad().defined());
  const auto want = torch::ones({5, 6}, torch::kDouble).mm(rounded(weights[0])) +
                    torch::full({5, 10}, 2.0, torch::kDouble).mm(rounded(weights[1]));
  EXPECT_LT(relative_difference(input.grad(), want), 1e-5);
}

// A whole model under bf16 autocast: every gradient within bf16's rounding of fp32's, and not
// equal to it (the multiplies really ran on bf16 operands).
TEST(Bf16Matmul, AutocastModelGradientsStayWithinBf16RoundingOfFp32) {
  TILLER_REQUIRE_BF16_MATMUL();
  const auto config = test::llama_config(64, 32, 48, 2, 4, 2, 16);
  auto model = test::sharp_random_model(config, 5);
  // Seeded: from the global generator (seeded differently in each process) the largest of the
  // gradients' differences was over 0.05 for about one draw in 30.
  const auto ids = torch::randint(0, 64, {2, 12}, compat::make_cpu_generator(5), torch::kLong);
  const auto mask = torch::ones({2, 12}, torch::kLong);
  const auto gradients = [&](bool bf16) {
    model->zero_grad();
    torch::Tensor logits;
    {
      compat::AutocastGuard cast(bf16, torch::kCPU);
      logits = model->forward(ids, mask);
    }
    EXPECT_EQ(logits.scalar_type(), torch::kFloat);
    torch::nn::functional::cross_entropy(logits.reshape({-1, 64}), ids.reshape({-1})).backward();
    std::map<std::string, torch::Tensor> out;
    for (const auto& item : model->named_parameters())
      out[item.key()] = item.value().grad().clone();
    return out;
  };
  const auto fp32 = gradients(false);
  const auto bf16 = gradients(true);
  for (const auto& [name, want] : fp32) {
    const double difference = relative_difference(bf16.at(name), want);
    EXPECT_LT(difference, 5e-2) << name;
    EXPECT_GT(difference, 0.0) << name;
  }
}

}  // namespace
}  // namespace tiller
