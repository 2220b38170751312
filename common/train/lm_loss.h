// The language-model loss over a TokenBatch (SFT and pretraining).
#pragma once
#include <torch/torch.h>

#include "common/data/batching.h"
#include "common/model/transformer.h"

namespace tiller {

// Sum (not mean) of the token cross-entropies over the batch's targets, in fp32: [] scalar.
// Packed rows attend only within their own example, with positions restarting per example.
// The caller divides by the target count of the whole (accumulated) batch, so micro-batching
// gives the same update as one large batch.
torch::Tensor lm_loss_sum(TransformerImpl& model, const TokenBatch& batch);

}  // namespace tiller
