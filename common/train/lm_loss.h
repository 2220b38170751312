// The language-model loss over a TokenBatch (SFT and pretraining), and the targeted tokens'
// log-probabilities it is made of (DPO sums them per sequence).
#pragma once
#include <torch/torch.h>

#include <functional>

#include "common/data/batching.h"
#include "common/model/transformer.h"

namespace tiller {

// The log-probabilities of each row's targets (targets: [B, T], -100 = none), [B, K] fp32 with 0
// where there is no target, in an order within each row that only sums may rely on (per row or
// over all). hidden_at(output_positions) returns the model's final hidden states of the batch:
// [B, T, C] when output_positions is undefined, else [B, K, C] at those [B, K] positions of each
// row (TransformerImpl::hidden's output_positions). Where target_log_probs would skip untargeted
// positions, it asks for the targeted ones only, so that the last layer computes its outputs
// there alone too.
torch::Tensor row_target_log_probs(
    TransformerImpl& model, const torch::Tensor& targets,
    const std::function<torch::Tensor(const torch::Tensor&)>& hidden_at);

// Sum (not mean) of the token cross-entropies over the batch's targets, in fp32: [] scalar.
// Packed rows attend only within their own example, with positions restarting per example.
// The caller divides by the target count of the whole (accumulated) batch, so micro-batching
// gives the same update as one large batch. Through row_target_log_probs.
torch::Tensor lm_loss_sum(TransformerImpl& model, const TokenBatch& batch);

// log p(targets[b][t]) from the hidden states [B, T, C] where the target [B, T] is not -100, and
// 0 (with no gradient) where it is: [B, T] fp32. Where at least an eighth of the positions have
// no target (an SFT or DPO prompt predicts nothing), the LM head runs only at the targeted ones:
// at a 32,000-token vocabulary it is a fifth of a 124M model's work and over half of a 15M one's.
torch::Tensor target_log_probs(TransformerImpl& model, const torch::Tensor& hidden,
                               const torch::Tensor& targets);

}  // namespace tiller
