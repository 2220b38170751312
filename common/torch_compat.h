// Every LibTorch call whose spelling differs between 1.13 (Debian) and 2.x (CUDA builds).
#pragma once
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>

namespace c10d {
class ProcessGroup;
class Backend;
}  // namespace c10d

namespace tiller::compat {

// What a c10d collective implementation (Gloo, NCCL) derives from: ProcessGroup in 1.13, Backend
// from 2.0 on (where ProcessGroup became a dispatcher over backends).
#if TORCH_VERSION_MAJOR >= 2
using CollectiveBackend = c10d::Backend;
#else
using CollectiveBackend = c10d::ProcessGroup;
#endif

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
  // A fully masked row (a padding query) attends to every key instead, and its output is zeroed:
  // as below, without the NaN that the backward pass would carry into every gradient.
  const auto row_masked = allowed.logical_not().all(-1, /*keepdim=*/true);
  return at::scaled_dot_product_attention(q, k, v, allowed.logical_or(row_masked))
      .masked_fill(row_masked, 0.0);
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

// The key of a parameter in an optimizer's state map: a string of the TensorImpl's address in
// 1.13, the address itself in later versions.
template <typename StateMap>
typename StateMap::key_type optimizer_state_key(const StateMap&, const at::Tensor& param) {
  using Key = typename StateMap::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream address;  // what 1.13's c10::guts::to_string (gone in 2.x) printed
    address << param.unsafeGetTensorImpl();
    return address.str();
  } else {
    return static_cast<Key>(param.unsafeGetTensorImpl());
  }
}

inline bool cuda_available() {
  return torch::cuda::is_available();
}

}  // namespace tiller::compat

#include <ATen/autocast_mode.h>

namespace tiller::compat {

// Enables bf16 autocast for `device` while alive (fp32 master weights stay as they are).
class AutocastGuard {
 public:
  AutocastGuard(bool enabled, const torch::Device& device)
      : enabled_(enabled), cuda_(device.is_cuda()) {
    if (!enabled_) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    const auto type = cuda_ ? at::kCUDA : at::kCPU;
    previous_ = at::autocast::is_autocast_enabled(type);
    at::autocast::set_autocast_dtype(type, at::kBFloat16);
    at::autocast::set_autocast_enabled(type, true);
#else
    if (cuda_) {
      previous_ = at::autocast::is_enabled();
      at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
      at::autocast::set_enabled(true);
    } else {
      previous_ = at::autocast::is_cpu_enabled();
      at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
      at::autocast::set_cpu_enabled(true);
    }
#endif
    at::autocast::increment_nesting();
  }
  ~AutocastGuard() {
    if (!enabled_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_enabled(cuda_ ? at::kCUDA : at::kCPU, previous_);
#else
    if (cuda_)
      at::autocast::set_enabled(previous_);
    else
      at::autocast::set_cpu_enabled(previous_);
#endif
  }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool enabled_, cuda_, previous_ = false;
};

// Whether autocast is on for CPU in this thread (used to replay it in recomputation).
inline bool cpu_autocast_enabled() {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  return at::autocast::is_autocast_enabled(at::kCPU);
#else
  return at::autocast::is_cpu_enabled();
#endif
}

// Whether autocast is on for CPU in this thread and lowers to bf16 (the dtype AutocastGuard sets).
inline bool cpu_autocast_bf16() {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  return cpu_autocast_enabled() && at::autocast::get_autocast_dtype(at::kCPU) == at::kBFloat16;
#else
  return cpu_autocast_enabled() && at::autocast::get_autocast_cpu_dtype() == at::kBFloat16;
#endif
}

// Whether autocast is on for `device`'s type in this thread.
inline bool autocast_enabled(const torch::Device& device) {
  if (!device.is_cuda()) return cpu_autocast_enabled();
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  return at::autocast::is_autocast_enabled(at::kCUDA);
#else
  return at::autocast::is_enabled();
#endif
}

}  // namespace tiller::compat
