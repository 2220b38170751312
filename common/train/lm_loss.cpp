#include "common/train/lm_loss.h"

#include "common/model/attention_mask.h"
#include "common/model/to_device.h"
#include "common/train/token_log_probs.h"

namespace tiller {

torch::Tensor lm_loss_sum(TransformerImpl& model, const TokenBatch& batch) {
  auto device = model.parameters().front().device();
  auto ids = to_device(batch.input_ids, device);
  auto segments = to_device(batch.segment_ids, device);
  auto targets = to_device(batch.targets, device);
  auto hidden = model.hidden(ids, positions_from_segments(segments), segment_causal_mask(segments));
  auto logits = model.logits(hidden).to(torch::kFloat);  // [B, T, V]
  return -token_log_probs(logits, targets).sum();
}

}  // namespace tiller
