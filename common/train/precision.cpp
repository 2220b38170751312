#include "common/train/precision.h"

#include "common/model/bf16_matmul.h"
#include "common/util/error.h"

namespace tiller {

bool bf16_supported(const torch::Device& device) {
  return device.is_cuda() || cpu_has_fast_bf16();
}

bool use_bf16(const std::string& precision, const torch::Device& device) {
  if (precision == "fp32") return false;
  const bool supported = bf16_supported(device);
  if (precision == "auto") return supported;
  check(precision == "bf16", "precision must be fp32, bf16 or auto, got '" + precision + "'");
  check(supported, "precision bf16: this CPU has neither AVX-512 BF16 nor AMX (use fp32 or auto)");
  return true;
}

}  // namespace tiller
