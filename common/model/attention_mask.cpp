#include "common/model/attention_mask.h"

namespace tiller {

torch::Tensor positions_from_mask(const torch::Tensor& attention_mask) {
  auto mask = attention_mask.to(torch::kLong);
  return (mask.cumsum(1) - 1).clamp_min(0) * mask;
}

torch::Tensor causal_mask(const torch::Tensor& key_valid, int64_t num_queries) {
  const int64_t batch = key_valid.size(0), keys = key_valid.size(1);
  auto device = key_valid.device();
  // query t sits at slot keys - num_queries + t
  auto query_slot =
      torch::arange(keys - num_queries, keys, torch::dtype(torch::kLong).device(device))
          .view({-1, 1});
  auto key_slot = torch::arange(keys, torch::dtype(torch::kLong).device(device)).view({1, -1});
  auto causal = key_slot.le(query_slot);  // [T, S]
  auto self = key_slot.eq(query_slot);
  auto allowed = causal.view({1, num_queries, keys}).logical_and(key_valid.view({batch, 1, keys}));
  return allowed.logical_or(self.view({1, num_queries, keys})).view({batch, 1, num_queries, keys});
}

torch::Tensor segment_causal_mask(const torch::Tensor& segment_ids) {
  const int64_t batch = segment_ids.size(0), length = segment_ids.size(1);
  auto device = segment_ids.device();
  auto idx = torch::arange(length, torch::dtype(torch::kLong).device(device));
  auto causal = idx.view({1, -1}).le(idx.view({-1, 1}));              // [T, T]: key <= query
  auto same = segment_ids.unsqueeze(2).eq(segment_ids.unsqueeze(1));  // [B, T, T]
  auto valid = segment_ids.ge(0).unsqueeze(1);                        // keys that are tokens
  auto self = idx.view({1, -1}).eq(idx.view({-1, 1}));
  auto allowed = same.logical_and(valid).logical_and(causal).logical_or(self);
  return allowed.view({batch, 1, length, length});
}

torch::Tensor shared_prefix_mask(const torch::Tensor& segment_ids, const torch::Tensor& key_valid) {
  return grouped_prefix_mask(torch::zeros_like(segment_ids), segment_ids, key_valid);
}

torch::Tensor grouped_prefix_mask(const torch::Tensor& group_ids, const torch::Tensor& segment_ids,
                                  const torch::Tensor& key_valid) {
  const int64_t batch = segment_ids.size(0), length = segment_ids.size(1);
  auto idx = torch::arange(length, torch::dtype(torch::kLong).device(segment_ids.device()));
  auto causal = idx.view({1, -1}).le(idx.view({-1, 1}));  // [T, T]: key <= query
  auto key_segment = segment_ids.unsqueeze(1), query_segment = segment_ids.unsqueeze(2);
  auto visible = key_segment.eq(0).logical_or(key_segment.eq(query_segment));
  visible = visible.logical_and(group_ids.unsqueeze(1).eq(group_ids.unsqueeze(2)));
  auto self = idx.view({1, -1}).eq(idx.view({-1, 1}));
  auto allowed = visible.logical_and(key_valid.unsqueeze(1)).logical_and(causal).logical_or(self);
  return allowed.view({batch, 1, length, length});
}

torch::Tensor positions_from_segments(const torch::Tensor& segment_ids) {
  const int64_t length = segment_ids.size(1);
  auto idx = torch::arange(length, torch::dtype(torch::kLong).device(segment_ids.device()))
                 .expand_as(segment_ids);
  // A segment starts where its id differs from the previous token's.
  auto previous = torch::cat(
      {torch::full_like(segment_ids.narrow(1, 0, 1), -2), segment_ids.narrow(1, 0, length - 1)}, 1);
  auto start = segment_ids.ne(previous);
  auto start_index = torch::where(start, idx, torch::zeros_like(idx));
  start_index = std::get<0>(start_index.cummax(1));
  return (idx - start_index) * segment_ids.ge(0).to(torch::kLong);
}

torch::Tensor last_token_index(const torch::Tensor& attention_mask) {
  const int64_t length = attention_mask.size(1);
  auto idx = torch::arange(length, torch::dtype(torch::kLong).device(attention_mask.device()));
  auto masked = torch::where(attention_mask.to(torch::kBool), idx.expand_as(attention_mask),
                             torch::full_like(idx, -1).expand_as(attention_mask));
  return std::get<0>(masked.max(1)).clamp_min(0);
}

}  // namespace tiller
