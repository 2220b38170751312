#include "common/train/precision.h"

#if defined(TILLER_WITH_CUDA)
#include <ATen/cuda/CUDAContext.h>
#endif

#include "common/model/bf16_matmul.h"
#include "common/util/error.h"

namespace tiller {

namespace {

// A CUDA device's name and compute capability, e.g. "cuda:0 (Tesla V100-SXM2-16GB, compute
// capability 7.0)"; its major version through `major`.
std::string describe_cuda_device(const torch::Device& device, int* major) {
  *major = 0;
  std::string text = device.str();
#if defined(TILLER_WITH_CUDA)
  const auto* properties = at::cuda::getDeviceProperties(
      device.has_index() ? device.index() : at::cuda::current_device());
  *major = properties->major;
  text += std::string(" (") + properties->name + ", compute capability " +
          std::to_string(properties->major) + "." + std::to_string(properties->minor) + ")";
#endif
  return text;
}

}  // namespace

bool bf16_supported(const torch::Device& device) {
  if (!device.is_cuda()) return cpu_has_fast_bf16();
  int major = 0;
  describe_cuda_device(device, &major);
  return major >= 8;
}

bool use_bf16(const std::string& precision, const torch::Device& device) {
  if (precision == "fp32") return false;
  const bool supported = bf16_supported(device);
  if (precision == "auto") return supported;
  check(precision == "bf16", "precision must be fp32, bf16 or auto, got '" + precision + "'");
  if (device.is_cuda()) {
    int major = 0;
    check(supported, "precision bf16: " + describe_cuda_device(device, &major) +
                         " has no bf16 tensor cores (compute capability 8.0, Ampere, or later "
                         "has them); use fp32 or auto");
  }
  check(supported, "precision bf16: this CPU has neither AVX-512 BF16 nor AMX (use fp32 or auto)");
  return true;
}

}  // namespace tiller
