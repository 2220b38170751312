// The fused SwiGLU against silu(gate) * up written here in double (autograd for the gradient):
// output and the joined gradient within 1e-5 of their scale, on widths with and without a vector
// tail, gates far into both tails of the sigmoid, and leading dimensions of any rank.
#include "common/model/fused_swiglu.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "tests/test_util.h"

using namespace tiller;

TEST(FusedSwiglu, EqualsTheFormulaInDoubleForwardAndBackward) {
  torch::manual_seed(7);
  for (const auto& shape :
       std::vector<std::vector<int64_t>>{{3, 5, 2 * 64}, {2, 7, 2 * 13}, {1, 2}, {4, 2 * 344}}) {
    SCOPED_TRACE("shape [" + std::to_string(shape.front()) + ", ..., " +
                 std::to_string(shape.back()) + "]");
    auto x0 = torch::randn(shape) * 4;
    x0.view({-1})[0] = 95.0f;   // sigmoid 1: silu(g) = g
    x0.view({-1})[1] = -95.0f;  // sigmoid 0 (exp(-g) overflows)
    auto upstream_sizes = shape;
    upstream_sizes.back() /= 2;
    const auto upstream = torch::randn(upstream_sizes);

    auto x = x0.clone().requires_grad_();
    const auto y = swiglu(x);
    (y * upstream).sum().backward();
    ASSERT_NE(y.grad_fn()->name().find("SwigluFunction"), std::string::npos) << y.grad_fn()->name();

    auto xd = x0.to(torch::kDouble).requires_grad_();
    const int64_t width = shape.back() / 2;
    const auto gate = xd.narrow(-1, 0, width), up = xd.narrow(-1, width, width);
    const auto want = gate / (1 + torch::exp(-gate)) * up;
    (want * upstream.to(torch::kDouble)).sum().backward();

    ASSERT_EQ(y.sizes(), want.sizes());
    test::expect_close_to_scale(y.to(torch::kDouble), want.detach(), 1e-5, "output");
    ASSERT_EQ(x.grad().sizes(), x.sizes());
    test::expect_close_to_scale(x.grad().to(torch::kDouble), xd.grad(), 1e-5, "gradient");
  }
}

TEST(FusedSwiglu, WorksWithoutAutogradAndOnStridedInput) {
  torch::manual_seed(8);
  const auto x = torch::randn({20, 6}).t();  // [6, 20], not contiguous
  const auto gate = x.narrow(-1, 0, 10).to(torch::kDouble);
  const auto up = x.narrow(-1, 10, 10).to(torch::kDouble);
  torch::NoGradGuard no_grad;
  test::expect_close_to_scale(swiglu(x).to(torch::kDouble), gate / (1 + torch::exp(-gate)) * up,
                              1e-5, "strided input");
  EXPECT_THROW(swiglu(torch::randn({2, 5})), c10::Error);  // odd: not gate and up side by side
}
