#include "common/rollout/batch_layout.h"

#include <algorithm>

#include "common/util/error.h"

namespace tiller {

torch::Tensor pad_to(const torch::Tensor& t, int64_t dim, int64_t size, double value, bool left) {
  if (t.size(dim) == size) return t;
  auto shape = t.sizes().vec();
  shape[static_cast<size_t>(dim)] = size - t.size(dim);
  auto fill = torch::full(shape, value, t.options());
  return left ? torch::cat({fill, t}, dim) : torch::cat({t, fill}, dim);
}

void widen(GenerationBatch& g, int64_t prompt_len, int64_t response_len, int64_t pad_id) {
  const double pad = static_cast<double>(pad_id);
  g.prompt_ids = pad_to(g.prompt_ids, 1, prompt_len, pad, /*left=*/true);
  g.prompt_mask = pad_to(g.prompt_mask, 1, prompt_len, 0, /*left=*/true);
  g.response_ids = pad_to(g.response_ids, 1, response_len, pad, /*left=*/false);
  g.response_mask = pad_to(g.response_mask, 1, response_len, 0, /*left=*/false);
  if (g.logprobs.defined()) g.logprobs = pad_to(g.logprobs, 1, response_len, 0, /*left=*/false);
}

std::vector<double> row_token_counts(const torch::Tensor& mask) {
  const auto counts = mask.sum(1).to(torch::kCPU, torch::kDouble).contiguous();
  return {counts.data_ptr<double>(), counts.data_ptr<double>() + counts.numel()};
}

namespace {

double tokens_of(const std::vector<int64_t>& rows, const std::vector<double>& row_tokens) {
  double tokens = 0;
  for (int64_t row : rows) tokens += row_tokens.at(static_cast<size_t>(row));
  return tokens;
}

}  // namespace

double minibatch_tokens(const std::vector<int64_t>& minibatch,
                        const std::vector<double>& row_tokens) {
  return std::max(1.0, tokens_of(minibatch, row_tokens));
}

std::vector<MicroBatchRows> micro_batch_rows(const std::vector<int64_t>& minibatch,
                                             const std::vector<double>& row_tokens, int64_t begin,
                                             int64_t count, int64_t micro_batch_size,
                                             const torch::Device& device) {
  check(begin >= 0 && count >= 0 && begin + count <= static_cast<int64_t>(minibatch.size()) &&
            micro_batch_size >= 1,
        "micro_batch_rows: rows [" + std::to_string(begin) + ", " + std::to_string(begin + count) +
            ") of a minibatch of " + std::to_string(minibatch.size()));
  const double tokens = minibatch_tokens(minibatch, row_tokens);
  std::vector<MicroBatchRows> out;
  for (int64_t first = begin; first < begin + count; first += micro_batch_size) {
    const std::vector<int64_t> rows(
        minibatch.begin() + first,
        minibatch.begin() + std::min(begin + count, first + micro_batch_size));
    MicroBatchRows m;
    m.rows = row_index(rows, device);
    m.weight = tokens_of(rows, row_tokens) / tokens;
    out.push_back(std::move(m));
  }
  return out;
}

GenerationBatch concat_rows(std::vector<GenerationBatch> batches,
                            const std::vector<std::vector<int64_t>>& rows, int64_t pad_id) {
  check(!batches.empty() && batches.size() == rows.size(),
        "concat_rows: one row list per batch is needed");
  int64_t prompt_len = 0, response_len = 0;
  for (const auto& b : batches) {
    prompt_len = std::max(prompt_len, b.prompt_ids.size(1));
    response_len = std::max(response_len, b.response_ids.size(1));
  }
  const bool logprobs = std::all_of(batches.begin(), batches.end(),
                                    [](const GenerationBatch& b) { return b.logprobs.defined(); });
  std::vector<torch::Tensor> prompt_ids, prompt_mask, response_ids, response_mask, lp, eos;
  for (size_t i = 0; i < batches.size(); ++i) {
    GenerationBatch& b = batches[i];
    widen(b, prompt_len, response_len, pad_id);
    const auto index = torch::tensor(rows[i], torch::kLong).to(b.prompt_ids.device());
    prompt_ids.push_back(b.prompt_ids.index_select(0, index));
    prompt_mask.push_back(b.prompt_mask.index_select(0, index));
    response_ids.push_back(b.response_ids.index_select(0, index));
    response_mask.push_back(b.response_mask.index_select(0, index));
    eos.push_back(b.ended_with_eos.index_select(0, index));
    if (logprobs) lp.push_back(b.logprobs.index_select(0, index));
  }
  GenerationBatch out;
  out.prompt_ids = torch::cat(prompt_ids, 0);
  out.prompt_mask = torch::cat(prompt_mask, 0);
  out.response_ids = torch::cat(response_ids, 0);
  out.response_mask = torch::cat(response_mask, 0);
  out.ended_with_eos = torch::cat(eos, 0);
  if (logprobs) out.logprobs = torch::cat(lp, 0);
  return out;
}

}  // namespace tiller
