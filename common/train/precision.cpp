#include "common/train/precision.h"

#include <fstream>

#include "common/util/error.h"

namespace tiller {

bool bf16_supported(const torch::Device& device) {
  if (device.is_cuda()) return true;
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    return line.find(" avx512_bf16") != std::string::npos ||
           line.find(" amx_bf16") != std::string::npos;
  }
  return false;
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
