// SwiGLU, silu(gate) * up, as one operator forward and one backward on the CPU in fp32, from the
// gate and up projections side by side in one tensor (project_joined in fused_linear.h).
//
// Written out it is silu, a multiply, and backward silu's backward, two multiplies and the join
// of the gate's and up's gradients into the projection's: six passes over [tokens, 2 x hidden],
// which at llama-124m's shape cost 4% of a bf16 training step once the matmuls ran in bf16. The
// fused one reads the input once each way, keeps only it for backward (not silu(gate) as well),
// and writes the gradient of the joined tensor directly. Anything but fp32 CPU tensors takes the
// formula (swiglu_reference), which the tests do not use as the reference.
#pragma once
#include <torch/torch.h>

namespace tiller {

// gate_up: [..., 2H], the gate's H columns then up's -> [..., H].
torch::Tensor swiglu(const torch::Tensor& gate_up);

// The LibTorch formula (what swiglu computes where it does not fuse).
torch::Tensor swiglu_reference(const torch::Tensor& gate_up);

}  // namespace tiller
