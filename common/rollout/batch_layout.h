// Laying generated episodes out together: padding to a common width, and gathering rows of
// several generation batches (whose prompts and responses may have different widths) into one.
#pragma once
#include <torch/torch.h>

#include <algorithm>
#include <vector>

#include "common/rollout/generator.h"

namespace tiller {

// Pads dimension `dim` of t to `size` with `value`, at the end or (left) at the start.
torch::Tensor pad_to(const torch::Tensor& t, int64_t dim, int64_t size, double value, bool left);

// Lays `batch` out at prompt width `prompt_len` (left padding) and response width
// `response_len` (right padding) with pad_id. Log-probs, when defined, are padded with 0.
void widen(GenerationBatch& batch, int64_t prompt_len, int64_t response_len, int64_t pad_id);

// Row indices on the device of the tensors they select from.
inline torch::Tensor row_index(const std::vector<int64_t>& rows, const torch::Device& device) {
  return torch::tensor(rows, torch::kLong).to(device);
}

// Runs `pass` over rows [first, end) (end > first) in chunks of `chunk` and concatenates the
// results along dim 0. The row indices are made on `device`, beside the tensors they select from.
template <typename Pass>
torch::Tensor in_chunks(int64_t first, int64_t end, int64_t chunk, const torch::Device& device,
                        Pass pass) {
  std::vector<torch::Tensor> parts;
  for (int64_t begin = first; begin < end; begin += chunk)
    parts.push_back(pass(torch::arange(begin, std::min(end, begin + chunk),
                                       torch::dtype(torch::kLong).device(device))));
  return torch::cat(parts, 0);
}
// Rows [0, n).
template <typename Pass>
torch::Tensor in_chunks(int64_t n, int64_t chunk, const torch::Device& device, Pass pass) {
  return in_chunks(0, n, chunk, device, pass);
}

// Each row's response tokens: mask [N, R] summed over R, read to the host in one copy (one sync
// on a GPU, where a count per micro-batch would be one each).
std::vector<double> row_token_counts(const torch::Tensor& mask);

// A micro-batch of a minibatch: its rows, and its share of the minibatch's response tokens (each
// micro-batch's token sums divided by the minibatch's tokens add up to the minibatch's masked
// mean, whatever the split).
struct MicroBatchRows {
  torch::Tensor rows;  // [M] int64, on the device given (that of the tensors it selects from)
  double weight = 0;   // the rows' tokens / the whole minibatch's tokens (at least 1)
};

// minibatch[begin, begin + count) (one data-parallel rank's part; all of it on one process) cut
// into micro-batches of up to micro_batch_size rows, each row index made on `device`, weighted by
// row_tokens (row_token_counts of the rollout's mask). PPO's and GRPO's updates select with these.
std::vector<MicroBatchRows> micro_batch_rows(const std::vector<int64_t>& minibatch,
                                             const std::vector<double>& row_tokens, int64_t begin,
                                             int64_t count, int64_t micro_batch_size,
                                             const torch::Device& device);

// The response tokens of a minibatch's rows, at least 1: micro_batch_rows's denominator.
double minibatch_tokens(const std::vector<int64_t>& minibatch,
                        const std::vector<double>& row_tokens);

// Rows rows[i] of batches[i], in that order, at the widest prompt and response among them.
GenerationBatch concat_rows(std::vector<GenerationBatch> batches,
                            const std::vector<std::vector<int64_t>>& rows, int64_t pad_id);

}  // namespace tiller
