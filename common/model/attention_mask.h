// Attention masks and rotary positions for padded, cached and packed batches.
#pragma once
#include <torch/torch.h>

namespace tiller {

// For a padded batch (left or right padding), attention_mask: [B, T] (1 = token, 0 = pad).
// Returns positions [B, T] int64 counting real tokens from 0 (pads get 0).
torch::Tensor positions_from_mask(const torch::Tensor& attention_mask);

// Causal mask over keys [0, S) for T queries occupying slots [S - T, S).
// key_valid: [B, S] bool. Returns allowed: [B, 1, T, S] bool. A query always sees its own slot,
// so no row is empty (pads attend to themselves and nothing reads their output).
torch::Tensor causal_mask(const torch::Tensor& key_valid, int64_t num_queries);

// Packed sequences: segment_ids [B, T] (>= 0 example index, -1 pad). Attention is causal within
// one segment and never crosses segments. Returns allowed [B, 1, T, T].
torch::Tensor segment_causal_mask(const torch::Tensor& segment_ids);
// A shared prefix and its continuations packed in one row: segment_ids [B, T] (0 the prefix,
// s >= 1 the s-th continuation, -1 pad), key_valid [B, T] bool. A query sees the earlier valid
// keys of the prefix and of its own segment (never another continuation), and itself. Returns
// allowed [B, 1, T, T].
torch::Tensor shared_prefix_mask(const torch::Tensor& segment_ids, const torch::Tensor& key_valid);
// Several such packs side by side in one row: group_ids [B, T] (the pack each slot belongs to),
// segment_ids and key_valid as above. A query sees what shared_prefix_mask lets it see within its
// own group, never another group. Returns allowed [B, 1, T, T].
torch::Tensor grouped_prefix_mask(const torch::Tensor& group_ids, const torch::Tensor& segment_ids,
                                  const torch::Tensor& key_valid);
// Positions restarting at 0 at each segment start: [B, T] int64.
torch::Tensor positions_from_segments(const torch::Tensor& segment_ids);

// Index of the last real token of each row: [B] int64 (works for left or right padding).
torch::Tensor last_token_index(const torch::Tensor& attention_mask);

}  // namespace tiller
