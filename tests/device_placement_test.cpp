// Row indices are made on the device of the tensors they select from. PPO once built its
// minibatch rows on the CPU and index_select-ed the rollout's device tensors with them: it stopped
// at its first step on CUDA while every CPU test passed. Here PPO's and GRPO's index paths run for
// a rollout on another device, LibTorch's `meta` (shapes without data, on every build), and must
// make every index there; on the CPU, the rows and their token weights are checked by value.
#include <gtest/gtest.h>

#include <numeric>

#include "common/rollout/batch_layout.h"

using namespace tiller;

namespace {

const torch::Device kMeta(torch::kMeta);

// A 0/1 response mask [rows, width], rows of different lengths (rows 1, 3 and 8 have none).
torch::Tensor ragged_mask(int64_t rows, int64_t width) {
  auto mask = torch::zeros({rows, width}, torch::kFloat);
  for (int64_t r = 0; r < rows; ++r) mask[r].narrow(0, 0, (r * 5 + 2) % (width + 1)).fill_(1);
  mask[3].zero_();
  return mask;
}

// An order of the rows, as a minibatch of a shuffled epoch.
std::vector<int64_t> shuffled(int64_t rows) {
  std::vector<int64_t> order(static_cast<size_t>(rows));
  std::iota(order.begin(), order.end(), 0);
  for (size_t i = 0; i < order.size(); ++i) std::swap(order[i], order[(i * 7 + 3) % order.size()]);
  return order;
}

}  // namespace

TEST(DevicePlacement, RowIndicesAreMadeOnTheDeviceAsked) {
  const auto rows = row_index({4, 0, 2}, kMeta);
  EXPECT_EQ(rows.device(), kMeta);
  EXPECT_EQ(rows.scalar_type(), torch::kLong);
  EXPECT_EQ(rows.numel(), 3);
  EXPECT_TRUE(
      torch::equal(row_index({4, 0, 2}, torch::kCPU), torch::tensor({4, 0, 2}, torch::kLong)));
}

TEST(DevicePlacement, ChunkedPassesGetRowsOnTheRolloutsDevice) {
  // PPO's and GRPO's no-grad passes (log-probs, values, reference) run in_chunks over the rows.
  int64_t passes = 0, rows_seen = 0;
  const auto joined = in_chunks(10, 4, kMeta, [&](const torch::Tensor& rows) {
    EXPECT_EQ(rows.device(), kMeta);
    ++passes;
    rows_seen += rows.numel();
    return torch::zeros({rows.size(0), 3}, torch::dtype(torch::kFloat).device(kMeta));
  });
  EXPECT_EQ(passes, 3);
  EXPECT_EQ(rows_seen, 10);
  EXPECT_EQ(joined.device(), kMeta);
  EXPECT_EQ(joined.size(0), 10);
  std::vector<int64_t> got;
  in_chunks(10, 4, torch::kCPU, [&](const torch::Tensor& rows) {
    for (int64_t i = 0; i < rows.numel(); ++i) got.push_back(rows[i].item<int64_t>());
    return rows;
  });
  std::vector<int64_t> want(10);
  std::iota(want.begin(), want.end(), 0);
  EXPECT_EQ(got, want);
}

TEST(DevicePlacement, MicroBatchRowsAreMadeOnTheRolloutsDevice) {
  // PPO's learn (this rank's share of each minibatch) and GRPO's (the whole minibatch) cut their
  // minibatches here; the rows then select from every rollout tensor.
  const auto mask = ragged_mask(11, 6);
  const auto row_tokens = row_token_counts(mask);
  const auto minibatch = shuffled(11);
  for (int64_t begin : {0, 4}) {
    const auto micro = micro_batch_rows(minibatch, row_tokens, begin, 11 - begin, 3, kMeta);
    ASSERT_EQ(micro.size(), static_cast<size_t>((11 - begin + 2) / 3));
    for (const auto& m : micro) {
      EXPECT_EQ(m.rows.device(), kMeta);
      EXPECT_EQ(m.rows.scalar_type(), torch::kLong);
    }
  }
}

TEST(DevicePlacement, MicroBatchRowsCoverTheShareInOrderWithTokenWeights) {
  const auto mask = ragged_mask(11, 6);
  const auto row_tokens = row_token_counts(mask);
  ASSERT_EQ(row_tokens.size(), 11u);
  const auto minibatch = shuffled(11);
  // The weights as the trainers computed them before: sums of the mask's selected rows.
  const double total =
      std::max(1.0, mask.index_select(0, torch::tensor(minibatch)).sum().item<double>());
  EXPECT_EQ(minibatch_tokens(minibatch, row_tokens), total);
  double weights = 0;
  std::vector<int64_t> covered;
  // Two ranks' shares, [0, 6) and [6, 11), in micro-batches of 4.
  const std::vector<std::pair<int64_t, int64_t>> shares = {{0, 6}, {6, 5}};
  for (const auto& [begin, count] : shares) {
    const auto micro = micro_batch_rows(minibatch, row_tokens, begin, count, 4, torch::kCPU);
    ASSERT_EQ(micro.size(), 2u);
    for (const auto& m : micro) {
      EXPECT_LE(m.rows.numel(), 4);
      for (int64_t i = 0; i < m.rows.numel(); ++i) covered.push_back(m.rows[i].item<int64_t>());
      EXPECT_EQ(m.weight, mask.index_select(0, m.rows).sum().item<double>() / total);
      weights += m.weight;
    }
  }
  EXPECT_EQ(covered, minibatch);
  EXPECT_DOUBLE_EQ(weights, 1.0);
  // A minibatch without a response token weighs its micro-batches 0 (its tokens count as 1).
  const auto none = micro_batch_rows({3}, row_tokens, 0, 1, 4, torch::kCPU);
  ASSERT_EQ(none.size(), 1u);
  EXPECT_EQ(none[0].weight, 0.0);
  EXPECT_EQ(minibatch_tokens({3}, row_tokens), 1.0);
}

TEST(DevicePlacement, MicroBatchRowsRefuseASliceOutsideTheMinibatch) {
  const std::vector<double> row_tokens(4, 1.0);
  EXPECT_THROW(micro_batch_rows({0, 1, 2}, row_tokens, 2, 2, 1, torch::kCPU), std::exception);
  EXPECT_THROW(micro_batch_rows({0, 1, 2}, row_tokens, 0, 3, 0, torch::kCPU), std::exception);
}
