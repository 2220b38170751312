// The fused rotary embedding against LibTorch's formula: outputs and the gradient reaching the
// projection's output through the q/k views, with positions that differ per row; the formula
// where the fused path does not apply.
#include "common/model/fused_rotary.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tests/test_util.h"

#include "common/model/transformer.h"

using namespace tiller;

namespace {

void expect_close(const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
  test::expect_close_to_scale(got, want, 1e-5, what);
}

// q as the model takes it: a [B, H, T, hd] view (narrow, view, transpose) of a fused projection.
torch::Tensor q_view(const torch::Tensor& projection, int64_t heads, int64_t head_dim) {
  const int64_t b = projection.size(0), t = projection.size(1);
  return projection.narrow(2, heads * head_dim, heads * head_dim)
      .view({b, t, heads, head_dim})
      .transpose(1, 2);
}

}  // namespace

TEST(FusedRotary, EqualsTheFormulaForwardAndBackward) {
  torch::manual_seed(8);
  for (const auto& [heads, head_dim] : {std::make_pair(4, 16), std::make_pair(3, 6)}) {
    SCOPED_TRACE("heads " + std::to_string(heads) + ", head_dim " + std::to_string(head_dim));
    const int64_t batch = 3, length = 7;
    // Left padding shifts each row's positions differently.
    auto positions = torch::arange(length).unsqueeze(0).repeat({batch, 1}) -
                     torch::tensor({0, 2, 5}).unsqueeze(1);
    positions = positions.clamp_min(0);
    Rotary rotary(head_dim, 10000.0);
    const auto [cos, sin] = rotary.tables(positions);
    const auto base0 = torch::randn({batch, length, 3 * heads * head_dim});
    const auto upstream = torch::randn({batch, heads, length, head_dim});

    auto base = base0.clone().requires_grad_();
    const auto y = apply_rotary(q_view(base, heads, head_dim), cos, sin);
    (y * upstream).sum().backward();
    auto base_ref = base0.clone().requires_grad_();
    const auto y_ref = apply_rotary_reference(q_view(base_ref, heads, head_dim), cos, sin);
    (y_ref * upstream).sum().backward();

    EXPECT_EQ(y.sizes(), y_ref.sizes());
    expect_close(y, y_ref, "output");
    expect_close(base.grad(), base_ref.grad(), "gradient of the projection");
    EXPECT_NE(y.grad_fn()->name().find("RotaryFunction"), std::string::npos) << y.grad_fn()->name();
    // The parts of the projection that are not q get no gradient.
    EXPECT_EQ(base.grad().narrow(2, 0, heads * head_dim).abs().max().item<double>(), 0.0);
  }
}

TEST(FusedRotary, OtherDtypesTakeTheFormula) {
  Rotary rotary(8, 10000.0);
  const auto [cos, sin] = rotary.tables(torch::arange(5).unsqueeze(0));
  const auto x = torch::randn({1, 2, 5, 8}).to(torch::kBFloat16);
  EXPECT_TRUE(torch::equal(apply_rotary(x, cos, sin), apply_rotary_reference(x, cos, sin)));
}
