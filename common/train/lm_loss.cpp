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
  return -target_log_probs(model, hidden, targets).sum();
}

torch::Tensor target_log_probs(TransformerImpl& model, const torch::Tensor& hidden,
                               const torch::Tensor& targets) {
  const auto flat_targets = targets.reshape({-1});
  const auto targeted = flat_targets.ne(-100).nonzero().squeeze(1);
  // No target at all (the loss is then 0, with the graph kept), or fewer than an eighth of the
  // positions without one (packed pretraining loses one a document): the LM head over every
  // position. Skipping a few saves little, and pretraining's arithmetic, and so its runs, stay
  // bit for bit those of the head over every position.
  const int64_t untargeted = flat_targets.numel() - targeted.numel();
  if (targeted.numel() == 0 || untargeted * 8 < flat_targets.numel())
    return token_log_probs(model.logits(hidden).to(torch::kFloat), targets);
  const auto rows = hidden.reshape({-1, hidden.size(-1)}).index_select(0, targeted);
  const auto picked =
      token_log_probs(model.logits(rows).to(torch::kFloat), flat_targets.index_select(0, targeted));
  return torch::zeros({flat_targets.numel()}, picked.options())
      .index_copy(0, targeted, picked)
      .view(targets.sizes());
}

}  // namespace tiller
