// Precision: whether bf16 autocast pays on this device, and the recipe's choice resolved.
#pragma once
#include <torch/torch.h>

#include <string>

namespace tiller {

// True on CPUs with AVX-512 BF16 or AMX (oneDNN runs bf16 matmuls ~2x fp32 there) and on CUDA
// GPUs of compute capability 8.0 (Ampere) or later, whose tensor cores take bf16 (earlier ones
// emulate it slowly, or not at all).
bool bf16_supported(const torch::Device& device);

// "fp32", "bf16" or "auto" (bf16 where supported) -> whether to autocast to bf16.
// "bf16" where unsupported is a tiller::Error (one line naming the CPU or the GPU).
bool use_bf16(const std::string& precision, const torch::Device& device);

}  // namespace tiller
