// The fused RMSNorm against LibTorch's formula: outputs and the gradients of input and weight
// within 1e-5, on widths with and without a vector tail and on leading dimensions of any rank;
// the formula itself where the fused path does not apply.
#include "common/model/fused_rms_norm.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "tests/test_util.h"

using namespace tiller;

TEST(FusedRmsNorm, EqualsTheFormulaForwardAndBackward) {
  torch::manual_seed(5);
  for (const auto& shape :
       std::vector<std::vector<int64_t>>{{3, 5, 64}, {2, 7, 48}, {1, 1, 13}, {4, 288}}) {
    SCOPED_TRACE("shape [" + std::to_string(shape.front()) + ", ..., " +
                 std::to_string(shape.back()) + "]");
    const int64_t width = shape.back();
    const auto x0 = torch::randn(shape) * 3 + 0.5;
    const auto w0 = torch::randn({width});
    const auto upstream = torch::randn(shape);

    auto x = x0.clone().requires_grad_(), w = w0.clone().requires_grad_();
    const auto y = rms_norm(x, w, 1e-5);
    (y * upstream).sum().backward();

    auto xr = x0.clone().requires_grad_(), wr = w0.clone().requires_grad_();
    const auto yr = rms_norm_reference(xr, wr, 1e-5);
    (yr * upstream).sum().backward();

    EXPECT_EQ(y.sizes(), yr.sizes());
    test::expect_kernel_close(y, yr, "output");
    test::expect_kernel_close(x.grad(), xr.grad(), "input gradient");
    test::expect_kernel_close(w.grad(), wr.grad(), "weight gradient");
    // The fused path ran: one autograd node where the formula has a chain of them.
    EXPECT_NE(y.grad_fn()->name().find("RmsNormFunction"), std::string::npos)
        << y.grad_fn()->name();
  }
}

TEST(FusedRmsNorm, AccumulatesIntoExistingGradientsAndWorksWithoutAutograd) {
  torch::manual_seed(6);
  const auto x0 = torch::randn({6, 32});
  auto w = torch::randn({32}).requires_grad_();
  rms_norm(x0, w, 1e-6).sum().backward();
  const auto once = w.grad().clone();
  rms_norm(x0, w, 1e-6).sum().backward();
  test::expect_kernel_close(w.grad(), 2 * once, "accumulated weight gradient");
  torch::NoGradGuard no_grad;
  test::expect_kernel_close(rms_norm(x0, w, 1e-6), rms_norm_reference(x0, w, 1e-6),
                            "no-grad output");
}

// bf16 takes the formula, not the fused fp32 path: checked against the formula written here in
// double (never against the fallback the op itself returns), to bf16's rounding.
TEST(FusedRmsNorm, OtherDtypesTakeTheFormula) {
  torch::manual_seed(7);
  const auto x = torch::randn({4, 16}).to(torch::kBFloat16);
  const auto w = torch::randn({16});
  const auto xd = x.to(torch::kDouble);
  const auto want = w.to(torch::kDouble) * xd * torch::rsqrt(xd.pow(2).mean(-1, true) + 1e-5);
  const auto got = rms_norm(x, w, 1e-5);
  ASSERT_EQ(got.sizes(), x.sizes());
  test::expect_close_to_scale(got.to(torch::kDouble), want, 2e-2, "bf16 RMSNorm");
}
