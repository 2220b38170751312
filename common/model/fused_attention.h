// Masked softmax attention, softmax(q k^T / sqrt(d) + mask) v, as one operator forward and one
// backward on the CPU in fp32. Per (batch, head), split over the intra-op threads by heads, the
// queries go in blocks of 64, and each block multiplies (single-threaded BLAS) only the span of
// keys some query of it may see: a causal mask skips ~40% of the work at 256 tokens, packed
// segments more; a run of 32 or more keys inside that span that no query of the block sees (the
// first response, to a shared prefix's second) is skipped too. The softmax and its adjoint run on
// those spans (vec_math's exp). LibTorch's formula is seven operators forward and about eight
// autograd nodes backward per layer (compat::attention on 1.13); this is one each.
//
// q: [B, H, T, D]; k, v: [B, H, S, D] (grouped-query heads already repeated); any strides with the
// last one 1. allowed: [B, 1, T, S] bool. A query that may see no key (a padding row) gets zeros,
// as compat::attention gives. Other dtypes and devices take compat::attention, which the tests hold
// this to (outputs and the three gradients within 1e-5).
#pragma once
#include <torch/torch.h>

namespace tiller {

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& allowed);

}  // namespace tiller
