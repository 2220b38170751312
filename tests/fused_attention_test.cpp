// The fused attention against compat::attention (LibTorch's formula): outputs and the gradients of
// q, k and v within 1e-5, through strided views like the model's, with causal and padding masks
// that leave some queries seeing nothing (zeros, not NaN).
#include "common/model/fused_attention.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tests/test_util.h"

#include "common/model/attention_mask.h"
#include "common/torch_compat.h"

using namespace tiller;

namespace {

// [B, H, L, D] views of one [B, L, 3 * H * D] projection, as the model takes q, k and v.
std::vector<torch::Tensor> views_of(const torch::Tensor& projection, int64_t heads, int64_t dim) {
  const int64_t b = projection.size(0), l = projection.size(1);
  std::vector<torch::Tensor> out;
  for (int64_t i = 0; i < 3; ++i)
    out.push_back(projection.narrow(2, i * heads * dim, heads * dim)
                      .view({b, l, heads, dim})
                      .transpose(1, 2));
  return out;
}

// Attention over the views of a copy of base0, fused and by the formula: outputs and the
// gradients of the projection within 1e-5 for the upstream gradient given. Returns the fused
// output.
torch::Tensor expect_fused_equals_formula(const torch::Tensor& base0, int64_t heads, int64_t dim,
                                          const torch::Tensor& mask,
                                          const torch::Tensor& upstream) {
  auto base = base0.clone().requires_grad_();
  auto parts = views_of(base, heads, dim);
  const auto y = attention(parts[0], parts[1], parts[2], mask);
  (y * upstream).sum().backward();
  auto base_ref = base0.clone().requires_grad_();
  auto ref = views_of(base_ref, heads, dim);
  const auto y_ref = compat::attention(ref[0], ref[1], ref[2], mask);
  (y_ref * upstream).sum().backward();
  test::expect_kernel_close(y, y_ref, "output");
  test::expect_kernel_close(base.grad(), base_ref.grad(), "gradient of q, k and v");
  return y;
}

}  // namespace

TEST(FusedAttention, EqualsTheFormulaForwardAndBackward) {
  torch::manual_seed(9);
  for (const auto& [heads, dim] : {std::make_pair(4, 16), std::make_pair(2, 5)}) {
    SCOPED_TRACE("heads " + std::to_string(heads) + ", dim " + std::to_string(dim));
    const int64_t batch = 3, length = 9;
    // Row 1 is left-padded by 3 (its first queries see only themselves), row 2 is all padding but
    // its last 4 slots.
    auto valid = torch::ones({batch, length}, torch::kBool);
    valid[1].narrow(0, 0, 3).fill_(false);
    valid[2].narrow(0, 0, 5).fill_(false);
    const auto allowed = causal_mask(valid, length);
    // Make some queries see nothing at all, as segment masks of padding can.
    auto blind = allowed.clone();
    blind[2][0].narrow(0, 0, 2).fill_(false);

    const auto base0 = torch::randn({batch, length, 3 * heads * dim}) * 2;
    const auto upstream = torch::randn({batch, heads, length, dim});
    for (const auto& mask : {allowed, blind}) {
      const auto y = expect_fused_equals_formula(base0, heads, dim, mask, upstream);
      EXPECT_NE(y.grad_fn()->name().find("AttentionFunction"), std::string::npos);
    }
    // A query that sees nothing gets zeros.
    auto parts = views_of(base0, heads, dim);
    const auto y = attention(parts[0], parts[1], parts[2], blind);
    EXPECT_EQ(y[2].select(1, 0).abs().max().item<double>(), 0.0);
  }
}

// Queries run in blocks, each multiplying only the keys some query of it may see: sequences of
// several blocks, under causal, packed-segment and irregular masks (keys allowed with holes, so a
// query's span is not all allowed), and under causal with many queries over a longer cache.
TEST(FusedAttention, BlocksOfQueriesSeeOnlyTheirKeysUnderEveryMask) {
  torch::manual_seed(21);
  const int64_t batch = 2, heads = 2, dim = 8, length = 300;
  auto segments = torch::zeros({batch, length}, torch::kLong);
  segments[0].narrow(0, 90, 150).fill_(1);  // three packed examples in row 0
  segments[0].narrow(0, 240, 60).fill_(2);
  segments[1].narrow(0, 0, 200).fill_(-1);  // nothing in row 1 but 100 trailing tokens
  segments[1].narrow(0, 200, 100).fill_(0);
  auto irregular = torch::rand({batch, 1, length, length}) < 0.7;
  irregular[0][0][5].fill_(false);  // one query sees nothing
  // Shared prefixes: row 0 a 40-token prefix before continuations of 100, 90 and 70 (each later
  // one's blocks skip the keys of those before it); row 1 a 10-token prefix before one of 20
  // (too short to skip) and one of 150, then padding.
  auto continuations = torch::zeros({batch, length}, torch::kLong);
  continuations[0].narrow(0, 40, 100).fill_(1);
  continuations[0].narrow(0, 140, 90).fill_(2);
  continuations[0].narrow(0, 230, 70).fill_(3);
  continuations[1].narrow(0, 10, 20).fill_(1);
  continuations[1].narrow(0, 30, 150).fill_(2);
  continuations[1].narrow(0, 180, 120).fill_(-1);
  const std::vector<std::pair<std::string, torch::Tensor>> masks = {
      {"causal", causal_mask(torch::ones({batch, length}, torch::kBool), length)},
      {"segments", segment_causal_mask(segments)},
      {"irregular", irregular},
      {"shared prefixes", shared_prefix_mask(continuations, continuations.ge(0))}};
  const auto base0 = torch::randn({batch, length, 3 * heads * dim});
  const auto upstream = torch::randn({batch, heads, length, dim});
  for (const auto& [name, mask] : masks) {
    SCOPED_TRACE(name);
    expect_fused_equals_formula(base0, heads, dim, mask, upstream);
  }
  // A cache: 200 new queries over 260 keys, each seeing the first 60 and the new ones up to itself.
  const auto q = torch::randn({batch, heads, 200, dim}).requires_grad_();
  const auto k = torch::randn({batch, heads, 260, dim}).requires_grad_();
  const auto v = torch::randn({batch, heads, 260, dim}).requires_grad_();
  const auto allowed = causal_mask(torch::ones({batch, 260}, torch::kBool), 200);
  const auto y = attention(q, k, v, allowed);
  const auto grads = torch::autograd::grad({(y * y).sum()}, {q, k, v});
  const auto y_ref = compat::attention(q, k, v, allowed);
  const auto grads_ref = torch::autograd::grad({(y_ref * y_ref).sum()}, {q, k, v});
  test::expect_kernel_close(y, y_ref, "cached output");
  for (size_t i = 0; i < 3; ++i)
    test::expect_kernel_close(grads[i], grads_ref[i], "cached gradient");
}

TEST(FusedAttention, KeysLongerThanQueriesAsWithACache) {
  torch::manual_seed(10);
  const int64_t batch = 2, heads = 3, dim = 8, queries = 2, keys = 6;
  const auto q = torch::randn({batch, heads, queries, dim});
  const auto k = torch::randn({batch, heads, keys, dim});
  const auto v = torch::randn({batch, heads, keys, dim});
  const auto allowed = causal_mask(torch::ones({batch, keys}, torch::kBool), queries);
  ASSERT_EQ(allowed.sizes(), torch::IntArrayRef({batch, 1, queries, keys}));
  torch::NoGradGuard no_grad;
  test::expect_kernel_close(attention(q, k, v, allowed), compat::attention(q, k, v, allowed),
                            "output");
}

TEST(FusedAttention, OtherDtypesTakeTheFormula) {
  torch::manual_seed(3);
  const auto q = torch::randn({1, 2, 4, 8}).to(torch::kBFloat16);
  const auto k = torch::randn({1, 2, 4, 8}).to(torch::kBFloat16);
  const auto v = torch::randn({1, 2, 4, 8}).to(torch::kBFloat16);
  const auto allowed = causal_mask(torch::ones({1, 4}, torch::kBool), 4);
  // softmax(q k^T / sqrt(d)) v over the allowed keys, written here in double.
  const auto qd = q.to(torch::kDouble), kd = k.to(torch::kDouble), vd = v.to(torch::kDouble);
  const auto scores = torch::matmul(qd, kd.transpose(2, 3)) / std::sqrt(8.0);
  const auto want =
      torch::matmul(torch::softmax(scores.masked_fill(allowed.logical_not(), -INFINITY), -1), vd);
  const auto got = attention(q, k, v, allowed);
  ASSERT_EQ(got.scalar_type(), torch::kBFloat16);
  test::expect_close_to_scale(got.to(torch::kDouble), want, 3e-2, "bf16 attention");
}
