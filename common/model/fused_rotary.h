// Rotary embedding in Hugging Face's rotate_half layout, y = x * cos + rotate_half(x) * sin with
// rotate_half(x) = (-x[half:], x[:half]), as one operator forward and one backward on the CPU in
// fp32 (LibTorch's formula is six operators forward and about ten autograd nodes backward, per
// query and key, per layer: at RLHF's widths that dispatch costs more than the arithmetic).
//
// x: [B, H, T, head_dim], any strides with the last one 1 (the q/k views of the fused projection);
// cos, sin: [B, 1, T, head_dim] (Rotary::tables). Returns a contiguous [B, H, T, head_dim]. Other
// dtypes, devices or shapes take the formula, which the tests hold the fused path to.
#pragma once
#include <torch/torch.h>

namespace tiller {

torch::Tensor apply_rotary(const torch::Tensor& x, const torch::Tensor& cos,
                           const torch::Tensor& sin);

// LibTorch's formula (what apply_rotary computes where it does not fuse).
torch::Tensor apply_rotary_reference(const torch::Tensor& x, const torch::Tensor& cos,
                                     const torch::Tensor& sin);

}  // namespace tiller
