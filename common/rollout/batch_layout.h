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

// Runs `pass` over rows [0, n) in chunks of `chunk` and concatenates the results along dim 0.
// The row indices are made on `device`, beside the tensors they select from.
template <typename Pass>
torch::Tensor in_chunks(int64_t n, int64_t chunk, const torch::Device& device, Pass pass) {
  std::vector<torch::Tensor> parts;
  for (int64_t begin = 0; begin < n; begin += chunk)
    parts.push_back(pass(torch::arange(begin, std::min(n, begin + chunk),
                                       torch::dtype(torch::kLong).device(device))));
  return torch::cat(parts, 0);
}

// Rows rows[i] of batches[i], in that order, at the widest prompt and response among them.
GenerationBatch concat_rows(std::vector<GenerationBatch> batches,
                            const std::vector<std::vector<int64_t>>& rows, int64_t pad_id);

}  // namespace tiller
