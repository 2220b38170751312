#include "common/train/lm_loss.h"

#include "common/model/attention_mask.h"

namespace tiller {

torch::Tensor lm_loss_sum(TransformerImpl& model, const TokenBatch& batch) {
  auto device = model.parameters().front().device();
  auto ids = batch.input_ids.to(device);
  auto segments = batch.segment_ids.to(device);
  auto targets = batch.targets.to(device);
  auto hidden = model.hidden(ids, positions_from_segments(segments), segment_causal_mask(segments));
  auto logits = model.logits(hidden).to(torch::kFloat);  // [B, T, V]
  return torch::nn::functional::cross_entropy(
      logits.view({-1, logits.size(-1)}), targets.view({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
}

}  // namespace tiller
