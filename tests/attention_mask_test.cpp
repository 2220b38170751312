// Attention masks and positions on hand examples, and what they promise the model: padding on
// either side, and packed rows, give the logits and scores of each sequence run alone.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/model/attention_mask.h"
#include "common/model/transformer.h"
#include "common/torch_compat.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

torch::Tensor longs(std::vector<std::vector<int64_t>> rows) {
  std::vector<torch::Tensor> out;
  for (auto& r : rows) out.push_back(torch::tensor(r, torch::kLong));
  return torch::stack(out);
}

torch::Tensor bools(std::vector<std::vector<int64_t>> rows) {
  return longs(rows).to(torch::kBool);
}

// A tiny random Llama (GQA); weights at N(0, 0.2) so attention is far from uniform.
Transformer tiny_model(int64_t num_labels, uint64_t seed) {
  ModelConfig c = test::llama_config(50, 32, 64, 2, 4, 2, 32);
  c.num_labels = num_labels;
  return test::sharp_random_model(c, seed);
}

// Random token sequences of the given lengths (ids 3.., so never a plausible pad id).
std::vector<torch::Tensor> sequences(const std::vector<int64_t>& lengths, uint64_t seed) {
  auto gen = compat::make_cpu_generator(seed);
  std::vector<torch::Tensor> out;
  for (int64_t n : lengths) out.push_back(torch::randint(3, 50, {n}, gen, torch::kLong));
  return out;
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Hand examples

TEST(AttentionMask, PositionsFromMask) {
  auto mask = longs({{0, 0, 1, 1, 1}, {1, 1, 1, 0, 0}, {1, 1, 1, 1, 1}, {0, 1, 0, 1, 0}});
  auto expected = longs({{0, 0, 0, 1, 2}, {0, 1, 2, 0, 0}, {0, 1, 2, 3, 4}, {0, 0, 0, 1, 0}});
  EXPECT_TRUE(torch::equal(positions_from_mask(mask), expected));
  EXPECT_TRUE(torch::equal(positions_from_mask(mask.to(torch::kBool)), expected));
}

TEST(AttentionMask, CausalMaskOverCachedKeys) {
  // Two queries in slots 2 and 3 of four; slot 2 of row 0 and slot 0 of row 1 are pads.
  auto allowed = causal_mask(bools({{1, 1, 0, 1}, {0, 1, 1, 1}}), 2);
  ASSERT_EQ(allowed.sizes(), (std::vector<int64_t>{2, 1, 2, 4}));
  auto expected = bools({{1, 1, 1, 0},    // row 0, query in slot 2 (a pad: sees itself)
                         {1, 1, 0, 1},    // row 0, query in slot 3
                         {0, 1, 1, 0},    // row 1, query in slot 2
                         {0, 1, 1, 1}});  // row 1, query in slot 3
  EXPECT_TRUE(torch::equal(allowed.view({4, 4}), expected));

  // Square: plain lower-triangular causality; a left pad attends only to itself.
  auto square = causal_mask(bools({{0, 1, 1}}), 3).view({3, 3});
  EXPECT_TRUE(torch::equal(square, bools({{1, 0, 0}, {0, 1, 0}, {0, 1, 1}})));
}

TEST(AttentionMask, SegmentCausalMask) {
  auto allowed = segment_causal_mask(longs({{0, 0, 1, 1, 1, -1}}));
  ASSERT_EQ(allowed.sizes(), (std::vector<int64_t>{1, 1, 6, 6}));
  auto expected = bools({{1, 0, 0, 0, 0, 0},
                         {1, 1, 0, 0, 0, 0},
                         {0, 0, 1, 0, 0, 0},
                         {0, 0, 1, 1, 0, 0},
                         {0, 0, 1, 1, 1, 0},
                         {0, 0, 0, 0, 0, 1}});
  EXPECT_TRUE(torch::equal(allowed.view({6, 6}), expected));
}

TEST(AttentionMask, SharedPrefixMask) {
  // A prefix of two tokens, two continuations (the first with an invalid last key), a pad.
  auto allowed =
      shared_prefix_mask(longs({{0, 0, 1, 1, 2, 2, -1}}), bools({{1, 1, 1, 0, 1, 1, 0}}));
  ASSERT_EQ(allowed.sizes(), (std::vector<int64_t>{1, 1, 7, 7}));
  auto expected = bools({{1, 0, 0, 0, 0, 0, 0},
                         {1, 1, 0, 0, 0, 0, 0},
                         {1, 1, 1, 0, 0, 0, 0},
                         {1, 1, 1, 1, 0, 0, 0},
                         {1, 1, 0, 0, 1, 0, 0},
                         {1, 1, 0, 0, 1, 1, 0},
                         {1, 1, 0, 0, 0, 0, 1}});
  EXPECT_TRUE(torch::equal(allowed.view({7, 7}), expected));
}

TEST(AttentionMask, PositionsFromSegments) {
  auto segments = longs({{0, 0, 0, 1, 1, -1, -1}, {5, 5, 2, 2, 2, 2, -1}, {0, 1, 2, 3, 3, 3, 3}});
  auto expected = longs({{0, 1, 2, 0, 1, 0, 0}, {0, 1, 0, 1, 2, 3, 0}, {0, 0, 0, 0, 1, 2, 3}});
  EXPECT_TRUE(torch::equal(positions_from_segments(segments), expected));
}

TEST(AttentionMask, LastTokenIndex) {
  auto mask = longs({{0, 0, 1, 1, 1}, {1, 1, 1, 0, 0}, {1, 0, 0, 0, 0}, {0, 1, 1, 0, 0}});
  EXPECT_TRUE(torch::equal(last_token_index(mask), torch::tensor({4, 2, 0, 2}, torch::kLong)));
  EXPECT_TRUE(torch::equal(last_token_index(mask.to(torch::kBool)),
                           torch::tensor({4, 2, 0, 2}, torch::kLong)));
}

// ---------------------------------------------------------------------------------------------
// The model under padding and packing

TEST(AttentionMask, PaddingDoesNotChangeLogits) {
  auto model = tiny_model(0, 1);
  auto seqs = sequences({4, 7, 2}, 10);
  const int64_t width = 7;
  torch::NoGradGuard no_grad;
  for (bool left : {true, false}) {
    // Pads hold junk tokens: a leak through the mask would change the logits.
    auto ids = torch::randint(3, 50, {3, width}, torch::kLong);
    auto mask = torch::zeros({3, width}, torch::kLong);
    for (int64_t b = 0; b < 3; ++b) {
      const int64_t n = seqs[b].size(0), start = left ? width - n : 0;
      ids[b].narrow(0, start, n).copy_(seqs[b]);
      mask[b].narrow(0, start, n).fill_(1);
    }
    auto logits = model->forward(ids, mask);
    for (int64_t b = 0; b < 3; ++b) {
      const int64_t n = seqs[b].size(0), start = left ? width - n : 0;
      auto alone = model->forward(seqs[b].unsqueeze(0), torch::ones({1, n}, torch::kLong))[0];
      EXPECT_LT(max_diff(logits[b].narrow(0, start, n), alone), 1e-5)
          << (left ? "left" : "right") << " row " << b;
    }
  }
}

TEST(AttentionMask, SequenceScoresReadTheLastTokenWhateverThePadding) {
  auto model = tiny_model(1, 2);
  auto seqs = sequences({3, 6, 5, 1}, 20);
  const int64_t B = 4, width = 6;
  torch::NoGradGuard no_grad;
  auto padded = [&](bool left) {
    auto ids = torch::randint(3, 50, {B, width}, torch::kLong);  // junk in the pads
    auto mask = torch::zeros({B, width}, torch::kLong);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n = seqs[b].size(0), start = left ? width - n : 0;
      ids[b].narrow(0, start, n).copy_(seqs[b]);
      mask[b].narrow(0, start, n).fill_(1);
    }
    return model->sequence_scores(ids, mask);
  };
  auto left = padded(true), right = padded(false);
  ASSERT_EQ(left.sizes(), (std::vector<int64_t>{B}));
  EXPECT_LT(max_diff(left, right), 1e-5) << left << right;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = seqs[b].size(0);
    auto alone = model->sequence_scores(seqs[b].unsqueeze(0), torch::ones({1, n}, torch::kLong));
    EXPECT_LT(std::abs(left[b].item<double>() - alone[0].item<double>()), 1e-5) << "row " << b;
    // The score is the head at the last token, not at any other.
    auto h = model->hidden(seqs[b].unsqueeze(0), torch::arange(n).unsqueeze(0),
                           causal_mask(torch::ones({1, n}, torch::kBool), n));
    auto per_token = model->scores(h)[0].squeeze(-1);  // [n]
    EXPECT_LT(std::abs(per_token[n - 1].item<double>() - alone[0].item<double>()), 1e-5);
  }
  // Different sequences, different scores: the test is not comparing constants.
  EXPECT_GT((left - left[0]).abs().max().item<double>(), 1e-3);
}

TEST(AttentionMask, PackedRowsGiveTheLogitsOfEachSequenceAlone) {
  auto model = tiny_model(0, 3);
  auto seqs = sequences({5, 3, 6, 4, 2}, 30);
  // Row 0: seq 0, seq 1, two pads. Row 1: seq 2, seq 3. Row 2: seq 4, eight pads.
  const std::vector<std::vector<int64_t>> layout = {{0, 1}, {2, 3}, {4}};
  const int64_t width = 10;
  auto ids = torch::randint(3, 50, {3, width}, torch::kLong);  // junk in the pads
  auto segments = torch::full({3, width}, -1, torch::kLong);
  for (int64_t row = 0; row < 3; ++row) {
    int64_t at = 0, segment = 0;
    for (int64_t s : layout[row]) {
      const int64_t n = seqs[s].size(0);
      ids[row].narrow(0, at, n).copy_(seqs[s]);
      segments[row].narrow(0, at, n).fill_(segment++);
      at += n;
    }
  }
  torch::NoGradGuard no_grad;
  auto logits = model->logits(
      model->hidden(ids, positions_from_segments(segments), segment_causal_mask(segments)));
  for (int64_t row = 0; row < 3; ++row) {
    int64_t at = 0;
    for (int64_t s : layout[row]) {
      const int64_t n = seqs[s].size(0);
      auto alone = model->forward(seqs[s].unsqueeze(0), torch::ones({1, n}, torch::kLong))[0];
      EXPECT_LT(max_diff(logits[row].narrow(0, at, n), alone), 1e-5) << "sequence " << s;
      at += n;
    }
  }
  // Without the segment mask, the second sequence of a row would see the first: not equal.
  auto leaky =
      model->logits(model->hidden(ids, positions_from_segments(segments),
                                  causal_mask(torch::ones({3, width}, torch::kBool), width)));
  auto alone1 = model->forward(seqs[1].unsqueeze(0), torch::ones({1, 3}, torch::kLong))[0];
  EXPECT_GT(max_diff(leaky[0].narrow(0, 5, 3), alone1), 1e-3);
}
