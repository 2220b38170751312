// Sequences of one batch that begin alike (the chosen and rejected responses of a preference
// pair; the responses of one ranking) computed with their common beginning once: the rows of a
// group are packed into one sequence, the shared prefix and then each row's remainder in a
// segment of its own that sees the prefix and itself, never another row, at the positions it has
// in its own row (common/model/attention_mask.h: shared_prefix_mask). Every weight and every
// attention sees what it sees in the padded batch, so the hidden states are the same up to
// rounding; the prefix goes through the model once per group instead of once per row. This is
// the prefix sharing of Wang et al. 2024, "Accelerating Direct Preference Optimization with
// Prefix Sharing" (arXiv 2410.20305). GRPO's groups, G samples after one left-padded prompt,
// have their own layout (common/rollout/shared_prompt.h) on the same cost count.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/model/model_config.h"
#include "common/model/transformer.h"

namespace tiller {

// Multiply-adds of one decoder layer: per token (q, k, v, o and the three MLP projections) and
// per query-key pair that attention visits (q.k and the weighted sum of v, over every head).
struct LayerCost {
  double per_token = 0, per_pair = 0;
};
LayerCost layer_cost(const ModelConfig& config);

// The count leaves out what packing does not save (the heads, the per-op overheads) and what it
// adds (laying out the packs and their mask): GRPO's packs (common/rollout/shared_prompt.h) are
// made where they save at least a fifth of the layers' counted multiply-adds. (Measured: the
// quickstart's 64-wide model with 16-token prompts counted 7% fewer and trained 14% slower;
// llama-15m's shape with 162-token prompts counted 58% fewer and trained 1.5x faster.)
constexpr double kLeastCountedShare = 0.8;

// Pair and ranking batches (hidden_sharing_prefixes) pack where the layers count at least a
// twentieth fewer multiply-adds. Measured on llama-15m's shape (288 wide) with 65-token prompts
// before 191-token responses: 8% fewer counted, and reward training ran 6% and DPO 9% faster
// packed. (Not measured on models as narrow as the GRPO case above.)
constexpr double kLeastPackedShare = 0.95;

// Rows of a batch whose first `prefix` tokens are equal (prefix >= 1, at most the shortest row).
struct PrefixGroup {
  std::vector<int64_t> rows;
  int64_t prefix = 0;
};

// The groups among `candidates` (lists of rows that may begin alike: a pair's two rows, a
// ranking's rows) with their longest common prefix; candidates whose rows share no first token,
// or that have one row, are left out.
std::vector<PrefixGroup> common_prefix_groups(
    const std::vector<const std::vector<int64_t>*>& sequences,
    const std::vector<std::vector<int64_t>>& candidates);

// common_prefix_groups of a pair batch's rows: chosen rows first, then rejected (row i and row
// P + i are pair i's).
std::vector<PrefixGroup> pair_prefix_groups(
    const std::vector<const std::vector<int64_t>*>& sequences);

// model.hidden of a right-padded batch (ids, mask: [n, T]; positions counted from 0, causal
// attention over the real tokens), [n, T, C] on the model's device, with each group's rows
// packed as above (prefix_packed_rows) where that counts at least a twentieth fewer multiply-adds
// in the layers (kLeastPackedShare), else the padded batch itself (without groups, padded on either
// side). The states at padding positions are unspecified. `packed`, when given, says which it was.
// With output_positions [n, K] int64 (positions of the batch's rows), only the states there, [n, K,
// C], the last layer computing them alone (TransformerImpl::hidden). Autograd and autocast follow
// the caller's modes.
torch::Tensor hidden_sharing_prefixes(TransformerImpl& model, const torch::Tensor& ids,
                                      const torch::Tensor& mask,
                                      const std::vector<PrefixGroup>& groups,
                                      bool* packed = nullptr,
                                      const torch::Tensor& output_positions = {});

// Output positions for packed rows (TransformerImpl::hidden): the wanted states are slots
// (packed row * length + column, [N] int64) of `rows` rows of `length`. positions [rows, K]: each
// row's distinct wanted columns, padded with its last (0 in a row with none); landing [N]: where
// each wanted slot's state lies among the [rows * K] states at those positions. On the host.
struct PackedOutputs {
  torch::Tensor positions, landing;
};
PackedOutputs packed_outputs(const torch::Tensor& slots, int64_t rows, int64_t length);

// A stage's line on what sharing prefixes did in its first step: `packed` of `batches`
// micro-batches packed (none: the rows begin alike for too few tokens to pay).
std::string prefix_sharing_note(const std::string& stage, int64_t packed, int64_t batches);

// How many rows hidden_sharing_prefixes packs this batch into (0: it does not pack it), from the
// rows' lengths. Each group is one pack (its prefix, then each row's remainder); a row in no
// group is a pack of its own; packs lie side by side in rows as long as the batch's longest row
// (or the longest pack), longest first, each in the first row with room.
int64_t prefix_packed_rows(const ModelConfig& config, const std::vector<int64_t>& row_lengths,
                           const std::vector<PrefixGroup>& groups);

}  // namespace tiller
