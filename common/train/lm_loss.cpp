#include "common/train/lm_loss.h"

#include "common/model/attention_mask.h"
#include "common/model/shared_prefix.h"
#include "common/model/to_device.h"
#include "common/train/token_log_probs.h"

namespace tiller {

namespace {

// Whether the LM head skips untargeted positions (target_log_probs): at least an eighth of them
// have no target, and some do.
bool skips_untargeted(int64_t targeted, int64_t positions) {
  return targeted > 0 && (positions - targeted) * 8 >= positions;
}

// Each row's targeted positions, the rows' lists padded to the longest with a copy of their last
// entry whose target is -100: the positions [B, K] and their targets [B, K]. On the host.
struct TargetedPositions {
  torch::Tensor positions, targets;
};

TargetedPositions targeted_positions(const torch::Tensor& targets) {
  const auto flat = targets.to(torch::kCPU, torch::kLong).reshape({-1});
  const auto slots = flat.ne(-100).nonzero().squeeze(1);  // row * T + position, in order
  const PackedOutputs wanted = packed_outputs(slots, targets.size(0), targets.size(1));
  const auto picked = torch::full({wanted.positions.numel()}, int64_t{-100}, torch::kLong)
                          .index_copy_(0, wanted.landing, flat.index_select(0, slots))
                          .view(wanted.positions.sizes());
  return {wanted.positions, picked};
}

}  // namespace

torch::Tensor row_target_log_probs(
    TransformerImpl& model, const torch::Tensor& targets,
    const std::function<torch::Tensor(const torch::Tensor&)>& hidden_at) {
  const auto device = model.parameters().front().device();
  // Where the LM head skips the untargeted positions, so does the last layer: its states are
  // read nowhere else (keys and values aside, which it still computes everywhere).
  if (skips_untargeted(targets.ne(-100).sum().item<int64_t>(), targets.numel())) {
    const TargetedPositions targeted = targeted_positions(targets);
    return target_log_probs(model, hidden_at(to_device(targeted.positions, device)),
                            to_device(targeted.targets, device));
  }
  return target_log_probs(model, hidden_at(torch::Tensor()), to_device(targets, device));
}

torch::Tensor lm_loss_sum(TransformerImpl& model, const TokenBatch& batch) {
  const auto device = model.parameters().front().device();
  const auto ids = to_device(batch.input_ids, device);
  const auto segments = to_device(batch.segment_ids, device);
  const auto positions = positions_from_segments(segments);
  const auto allowed = segment_causal_mask(segments);
  return -row_target_log_probs(model, batch.targets, [&](const torch::Tensor& outputs) {
            return model.hidden(ids, positions, allowed, nullptr, outputs);
          }).sum();
}

torch::Tensor target_log_probs(TransformerImpl& model, const torch::Tensor& hidden,
                               const torch::Tensor& targets) {
  const auto flat_targets = targets.reshape({-1});
  const auto targeted = flat_targets.ne(-100).nonzero().squeeze(1);
  // No target at all (the loss is then 0, with the graph kept), or fewer than an eighth of the
  // positions without one (packed pretraining loses one a document): the LM head over every
  // position. Skipping a few saves little, and pretraining's arithmetic, and so its runs, stay
  // bit for bit those of the head over every position.
  if (!skips_untargeted(targeted.numel(), flat_targets.numel()))
    return token_log_probs(model.logits(hidden).to(torch::kFloat), targets);
  const auto rows = hidden.reshape({-1, hidden.size(-1)}).index_select(0, targeted);
  const auto picked =
      token_log_probs(model.logits(rows).to(torch::kFloat), flat_targets.index_select(0, targeted));
  return torch::zeros({flat_targets.numel()}, picked.options())
      .index_copy(0, targeted, picked)
      .view(targets.sizes());
}

}  // namespace tiller
