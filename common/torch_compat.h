// Every LibTorch call whose spelling differs between 1.13 (Debian) and 2.x (CUDA builds).
#pragma once
#include <torch/torch.h>
#include <torch/version.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cstdint>
#include <string>

namespace tiller::compat {

inline constexpr bool kTorch2 = TORCH_VERSION_MAJOR >= 2;

inline std::string torch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

// A seeded CPU random generator, independent of the global one.
inline at::Generator make_cpu_generator(uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

// Attention: softmax(q k^T / sqrt(d) + mask) v.
// q: [B, H, T, D], k/v: [B, H, S, D], allowed: [B, 1, T, S] bool (true = may attend).
inline torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& allowed) {
#if TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(q, k, v, allowed);
#else
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  auto scores = torch::matmul(q, k.transpose(-2, -1)) * scale;
  scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
  auto probs = torch::softmax(scores, -1);
  // A fully masked row (a padding query) gives NaN; make it zero instead.
  probs = torch::nan_to_num(probs, 0.0);
  return torch::matmul(probs, v);
#endif
}

inline bool cuda_available() { return torch::cuda::is_available(); }

}  // namespace tiller::compat
