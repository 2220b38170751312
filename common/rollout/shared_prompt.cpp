#include "common/rollout/shared_prompt.h"

#include <algorithm>
#include <map>

#include "common/model/attention_mask.h"
#include "common/model/shared_prefix.h"
#include "common/rollout/generator.h"
#include "common/util/error.h"

namespace tiller {

namespace {

// One pack of m responses after a prompt of p tokens: the prompt's causal triangle, and each
// segment's queries over the prompt and every segment before it. The fused kernel now skips the
// earlier segments' keys (none of a block's queries sees them), so the real count is lower; this
// one is kept because the measurements behind kLeastCountedShare (shared_prefix.h) were made
// under it, and no narrow model has been measured under the lower count.
double pack_cost(const LayerCost& cost, double p, double r, double m) {
  const double pairs = p * p / 2 + m * r * p + m * m * r * r / 2;
  return (p + m * r) * cost.per_token + pairs * cost.per_pair;
}

// Rows grouped by equal prompts, in the order of each prompt's first row, with the columns of the
// prompt's real tokens.
struct PromptGroup {
  std::vector<int64_t> columns;  // real prompt tokens, in order
  std::vector<int64_t> rows;
};

std::vector<PromptGroup> group_rows_by_prompt(const torch::Tensor& prompt_ids,
                                              const torch::Tensor& prompt_mask) {
  const auto ids = prompt_ids.accessor<int64_t, 2>();
  const auto mask = prompt_mask.accessor<bool, 2>();
  std::map<std::vector<int64_t>, size_t> group_of;
  std::vector<PromptGroup> groups;
  for (int64_t row = 0; row < ids.size(0); ++row) {
    std::vector<int64_t> key(static_cast<size_t>(ids.size(1)));
    for (int64_t c = 0; c < ids.size(1); ++c)
      key[static_cast<size_t>(c)] = mask[row][c] ? ids[row][c] : -1;
    const auto [at, added] = group_of.emplace(std::move(key), groups.size());
    if (added) {
      PromptGroup group;
      for (int64_t c = 0; c < ids.size(1); ++c)
        if (mask[row][c]) group.columns.push_back(c);
      groups.push_back(std::move(group));
    }
    groups[at->second].rows.push_back(row);
  }
  return groups;
}

// Where each packed slot's token comes from, and which response logits read which hidden state.
struct PackedLayout {
  torch::Tensor source;   // [N, L] int64: row * width + column of the batch, -1 on padding
  torch::Tensor segment;  // [N, L] int64: shared_prefix_mask's segments (0 the prompt, -1 pad)
  torch::Tensor head;     // [B * R] int64: the packed slot (n * L + slot) predicting each token
};

PackedLayout lay_out_packs(const std::vector<PromptGroup>& groups, int64_t longest_prompt,
                           int64_t pack_size, int64_t rows, int64_t prompt_len,
                           int64_t response_len) {
  const int64_t width = prompt_len + response_len;
  int64_t packs = 0;
  for (const PromptGroup& g : groups)
    packs += (static_cast<int64_t>(g.rows.size()) + pack_size - 1) / pack_size;
  const int64_t length = longest_prompt + pack_size * response_len;
  PackedLayout layout;
  layout.source = torch::full({packs, length}, -1, torch::kLong);
  layout.segment = torch::full({packs, length}, -1, torch::kLong);
  layout.head = torch::empty({rows * response_len}, torch::kLong);
  auto source = layout.source.accessor<int64_t, 2>();
  auto segment = layout.segment.accessor<int64_t, 2>();
  auto head = layout.head.accessor<int64_t, 1>();
  int64_t pack = 0;
  for (const PromptGroup& g : groups) {
    for (size_t first = 0; first < g.rows.size(); first += static_cast<size_t>(pack_size), ++pack) {
      int64_t slot = 0;
      for (int64_t column : g.columns) {
        source[pack][slot] = g.rows[first] * width + column;
        segment[pack][slot++] = 0;
      }
      const int64_t last_prompt_slot = pack * length + slot - 1;
      const size_t end = std::min(g.rows.size(), first + static_cast<size_t>(pack_size));
      for (size_t member = first; member < end; ++member) {
        const int64_t row = g.rows[member];
        for (int64_t t = 0; t < response_len; ++t) {
          source[pack][slot + t] = row * width + prompt_len + t;
          segment[pack][slot + t] = static_cast<int64_t>(member - first) + 1;
          // Token t is predicted by the state before it: the prompt's last for t = 0.
          head[row * response_len + t] = t == 0 ? last_prompt_slot : pack * length + slot + t - 1;
        }
        slot += response_len;
      }
    }
  }
  return layout;
}

}  // namespace

int64_t shared_prompt_pack_size(const ModelConfig& config, int64_t prompt_tokens,
                                int64_t response_len, const std::vector<int64_t>& rows_per_prompt) {
  check(prompt_tokens >= 1 && response_len >= 1,
        "shared_prompt_pack_size: empty prompt or response");
  const LayerCost cost = layer_cost(config);
  const int64_t most = rows_per_prompt.empty()
                           ? 1
                           : *std::max_element(rows_per_prompt.begin(), rows_per_prompt.end());
  const auto total_cost = [&](int64_t m) {
    double total = 0;
    for (int64_t rows : rows_per_prompt)
      total += static_cast<double>((rows + m - 1) / m) *
               pack_cost(cost, static_cast<double>(prompt_tokens),
                         static_cast<double>(response_len), static_cast<double>(m));
    return total;
  };
  const double one_row_each = total_cost(1);
  int64_t best = 1;
  double best_cost = one_row_each;
  for (int64_t m = 2; m <= most; ++m) {
    const double total = total_cost(m);
    if (total < best_cost) {
      best = m;
      best_cost = total;
    }
  }
  return best_cost <= kLeastCountedShare * one_row_each ? best : 1;
}

torch::Tensor response_logits_sharing_prompts(TransformerImpl& model,
                                              const torch::Tensor& sequence_ids,
                                              const torch::Tensor& sequence_mask,
                                              int64_t prompt_len, double temperature) {
  const int64_t rows = sequence_ids.size(0), width = sequence_ids.size(1);
  const int64_t response_len = width - prompt_len;
  check(prompt_len >= 1 && response_len >= 1,
        "response_logits_sharing_prompts: empty prompt or response");
  const auto unshared = [&] {
    return response_logits(model, sequence_ids, sequence_mask, prompt_len, temperature);
  };
  const auto prompt_mask = sequence_mask.narrow(1, 0, prompt_len).to(torch::kCPU, torch::kBool);
  // The first response token is predicted by the state at the prompt's last column, which a pack
  // holds only when that column is a real token (left-padded prompts, as generation lays them).
  if (!prompt_mask.select(1, prompt_len - 1).all().item<bool>()) return unshared();
  const std::vector<PromptGroup> groups = group_rows_by_prompt(
      sequence_ids.narrow(1, 0, prompt_len).to(torch::kCPU).contiguous(), prompt_mask.contiguous());
  std::vector<int64_t> rows_per_prompt;
  int64_t longest_prompt = 0;
  for (const PromptGroup& g : groups) {
    rows_per_prompt.push_back(static_cast<int64_t>(g.rows.size()));
    longest_prompt = std::max(longest_prompt, static_cast<int64_t>(g.columns.size()));
  }
  const int64_t pack_size =
      shared_prompt_pack_size(model.config, longest_prompt, response_len, rows_per_prompt);
  if (pack_size == 1) return unshared();

  const auto device = sequence_ids.device();
  const PackedLayout cpu_layout =
      lay_out_packs(groups, longest_prompt, pack_size, rows, prompt_len, response_len);
  const auto source = cpu_layout.source.to(device);
  const auto segment = cpu_layout.segment.to(device);
  const int64_t packs = source.size(0), length = source.size(1);
  const auto from = source.clamp_min(0).view(-1);
  const auto is_token = source.ge(0);
  const auto ids = sequence_ids.reshape(-1).index_select(0, from).view({packs, length});
  // Each token keeps the position it has in its own row (pads: 0, as positions_from_mask).
  const auto positions =
      positions_from_mask(sequence_mask).reshape(-1).index_select(0, from).view({packs, length}) *
      is_token.to(torch::kLong);
  const auto key_valid =
      sequence_mask.to(torch::kBool).reshape(-1).index_select(0, from).view({packs, length}) &
      is_token;
  // Only the states that predict a response token leave the last layer.
  const PackedOutputs outputs = packed_outputs(cpu_layout.head, packs, length);
  const auto hidden = model.hidden(ids, positions, shared_prefix_mask(segment, key_valid), nullptr,
                                   outputs.positions.to(device));
  const auto predicting = hidden.reshape({-1, hidden.size(2)})
                              .index_select(0, outputs.landing.to(device))
                              .view({rows, response_len, -1});
  return at_temperature(model.logits(predicting), temperature);
}

}  // namespace tiller
