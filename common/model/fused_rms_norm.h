// RMSNorm, y = w * x / sqrt(mean(x^2) + eps) over the last dimension, as one operator forward and
// one backward on the CPU in fp32.
//
// Written out in LibTorch it is five operators forward and about ten autograd nodes backward; at
// the widths RLHF runs on a few cores (64 to 288) each costs more in dispatch than in arithmetic,
// and a 4-layer model has nine norms. The fused path takes fp32 CPU tensors (under autocast too:
// the norm's input is the fp32 residual stream); anything else (bf16, CUDA) takes the LibTorch
// formula, which is also the reference the tests hold the fused one to (1e-5, outputs and both
// gradients).
#pragma once
#include <torch/torch.h>

namespace tiller {

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// The LibTorch formula (what rms_norm computes where it does not fuse).
torch::Tensor rms_norm_reference(const torch::Tensor& x, const torch::Tensor& weight, double eps);

}  // namespace tiller
