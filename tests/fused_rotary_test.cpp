// The fused rotary embedding against LibTorch's formula: outputs and the gradient reaching the
// projection's output through the q/k views, with positions that differ per row; the formula
// where the fused path does not apply.
#include "common/model/fused_rotary.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "common/model/attention_mask.h"
#include "common/model/transformer.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

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
    test::expect_kernel_close(y, y_ref, "output");
    test::expect_kernel_close(base.grad(), base_ref.grad(), "gradient of the projection");
    EXPECT_NE(y.grad_fn()->name().find("RotaryFunction"), std::string::npos) << y.grad_fn()->name();
    // The parts of the projection that are not q get no gradient.
    EXPECT_EQ(base.grad().narrow(2, 0, heads * head_dim).abs().max().item<double>(), 0.0);
  }
}

TEST(FusedRotary, OtherDtypesTakeTheFormula) {
  Rotary rotary(8, 10000.0);
  const auto [cos, sin] = rotary.tables(torch::arange(5).unsqueeze(0));
  const auto x = torch::randn({1, 2, 5, 8}).to(torch::kBFloat16);
  // rotate_half written here in double: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).
  const auto xd = x.to(torch::kDouble);
  const auto rotated = torch::cat({-xd.narrow(-1, 4, 4), xd.narrow(-1, 0, 4)}, -1);
  const auto want = xd * cos.to(torch::kDouble) + rotated * sin.to(torch::kDouble);
  const auto got = apply_rotary(x, cos, sin);
  ASSERT_EQ(got.scalar_type(), torch::kBFloat16);
  test::expect_close_to_scale(got.to(torch::kDouble), want, 2e-2, "bf16 rotary");
}

TEST(RopeScaling, LinearStretchesPositionsByItsFactor) {
  RopeScaling linear;
  linear.type = "linear";
  linear.factor = 2.0;
  const Rotary plain(16, 10000.0), scaled(16, 10000.0, linear);
  EXPECT_TRUE(torch::equal(scaled.inv_freq, plain.inv_freq / 2));

  // A model with factor 2 at positions 0, 2, 4, ... computes what the same weights without
  // scaling compute at 0, 1, 2, ...: the whole forward pass, not only the tables.
  ModelConfig config = test::llama_config(64, 32, 48, 2, 4, 2, 64);
  Transformer base(config);
  base->init_weights(3);
  config.rope_scaling = linear;
  Transformer stretched(config);
  torch::NoGradGuard no_grad;
  auto targets = stretched->named_parameters();
  for (const auto& item : base->named_parameters()) targets[item.key()].copy_(item.value());
  const auto ids = torch::randint(0, 64, {2, 9});
  const auto positions = torch::arange(9).unsqueeze(0).repeat({2, 1});
  const auto allowed = causal_mask(torch::ones({2, 9}, torch::kBool), 9);
  const auto want = base->hidden(ids, positions, allowed);
  EXPECT_TRUE(torch::equal(stretched->hidden(ids, positions * 2, allowed), want));
  EXPECT_FALSE(torch::allclose(stretched->hidden(ids, positions, allowed), want));
}

TEST(RopeScaling, Llama3KeepsHighFrequenciesStretchesLowOnesAndBlendsBetween) {
  RopeScaling llama3;
  llama3.type = "llama3";
  llama3.factor = 8.0;
  llama3.low_freq_factor = 1.0;
  llama3.high_freq_factor = 4.0;
  llama3.original_max_position_embeddings = 8192;
  const int64_t head_dim = 128;
  const double theta = 500000.0;
  const Rotary plain(head_dim, theta), scaled(head_dim, theta, llama3);
  int kept = 0, stretched = 0, blended = 0;
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    // Meta's apply_scaling (llama/model.py of Llama 3.1), one frequency at a time, in double.
    const double freq = plain.inv_freq[i].item<double>();
    const double wavelength = 2 * M_PI / freq;
    double want;
    if (wavelength < 8192.0 / 4.0) {
      want = freq;
      ++kept;
    } else if (wavelength > 8192.0 / 1.0) {
      want = freq / 8.0;
      ++stretched;
    } else {
      const double smooth = (8192.0 / wavelength - 1.0) / (4.0 - 1.0);
      want = (1 - smooth) * freq / 8.0 + smooth * freq;
      ++blended;
    }
    EXPECT_NEAR(scaled.inv_freq[i].item<double>(), want, 1e-6 * want) << "frequency " << i;
  }
  // Llama 3.1 8B's 64 frequencies fall in all three bands.
  EXPECT_GT(kept, 0);
  EXPECT_GT(stretched, 0);
  EXPECT_GT(blended, 0);
}
