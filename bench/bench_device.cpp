// The device a benchmark runs on (--device cpu | cuda | cuda:N), waiting for it before a clock is
// read, and the GPU's name and published peak for the fraction of peak.
#include <dlfcn.h>  // dlopen: NVML, the driver's library, for the GPU's name

#include "bench/bench.h"
#include "common/util/device.h"
#include "common/util/error.h"

namespace tiller::bench {

torch::Device bench_device(const std::string& text, const std::string& command) {
  // run.device's spellings and facts (common/util/device.h), in the benchmarks' own words.
  check(is_device_name(text),
        command + ": --device must be cpu, cuda or cuda:N, got '" + text + "'");
  const torch::Device device(text);
  if (device.is_cpu()) return device;
  const CudaMachine machine = this_cuda_machine();
  check(machine.built_with_cuda, command + ": --device " + text +
                                     ": this tiller is built against a LibTorch without CUDA (the "
                                     "CUDA build is scripts/build.sh --cuda)");
  check(machine.gpus > 0,
        command + ": --device " + text + ": no CUDA GPU is visible to this process");
  check(!device.has_index() || device.index() < machine.gpus,
        command + ": --device " + text + ": there are " + std::to_string(machine.gpus) +
            " CUDA GPUs here (cuda:0 to cuda:" + std::to_string(machine.gpus - 1) + ")");
  return device;
}

void synchronize(const torch::Device& device) {
  // CUDA kernels run after their launch returns: a clock read without this times the launches.
  if (device.is_cuda()) torch::cuda::synchronize(device.has_index() ? device.index() : -1);
}

namespace {

// NVML's C API as far as the name goes (nvml.h; its handles are opaque pointers and its results
// ints, 0 for success). Loaded at run time: no header or library is needed to build, and a machine
// without the driver library names no GPU.
using NvmlInit = int (*)();
using NvmlHandleByIndex = int (*)(unsigned int, void**);
using NvmlName = int (*)(void*, char*, unsigned int);

std::string nvml_gpu_name(int64_t index) {
  void* library = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) return "";
  std::string name;
  const auto init = reinterpret_cast<NvmlInit>(dlsym(library, "nvmlInit_v2"));
  const auto handle_by_index =
      reinterpret_cast<NvmlHandleByIndex>(dlsym(library, "nvmlDeviceGetHandleByIndex_v2"));
  const auto get_name = reinterpret_cast<NvmlName>(dlsym(library, "nvmlDeviceGetName"));
  const auto shutdown = reinterpret_cast<NvmlInit>(dlsym(library, "nvmlShutdown"));
  void* handle = nullptr;
  char buffer[256] = {};
  if (init != nullptr && handle_by_index != nullptr && get_name != nullptr && init() == 0) {
    if (handle_by_index(static_cast<unsigned int>(index), &handle) == 0 &&
        get_name(handle, buffer, sizeof(buffer)) == 0)
      name = buffer;
    if (shutdown != nullptr) shutdown();
  }
  dlclose(library);
  return name;
}

}  // namespace

std::string device_name(const torch::Device& device) {
  if (!device.is_cuda()) return "cpu";
  // NVML counts the GPUs in PCI order and ignores CUDA_VISIBLE_DEVICES: with one GPU, or several
  // of one model, that is the GPU this process runs on.
  const std::string name = nvml_gpu_name(device.has_index() ? device.index() : 0);
  return name.empty() ? "unknown CUDA GPU" : name;
}

GpuPeak published_peak(const std::string& gpu_name) {
  // NVIDIA's data sheets, dense (without 2:4 sparsity), TFLOP/s. fp32 is the CUDA cores' rate:
  // LibTorch multiplies fp32 matrices without TF32 unless told to.
  struct Entry {
    const char* part;  // a substring of the name NVML reports
    GpuPeak peak;
  };
  static const Entry table[] = {
      {"H200 NVL", {835.0, 60.0, "NVIDIA H200 NVL data sheet"}},
      {"H100 NVL", {835.0, 60.0, "NVIDIA H100 NVL data sheet"}},
      {"H100 PCIe", {756.0, 51.0, "NVIDIA H100 PCIe data sheet"}},
      {"H200", {989.0, 67.0, "NVIDIA H200 SXM data sheet"}},
      {"H100", {989.0, 67.0, "NVIDIA H100 SXM data sheet"}},
      {"A100", {312.0, 19.5, "NVIDIA A100 data sheet"}},
  };
  for (const Entry& e : table)
    if (gpu_name.find(e.part) != std::string::npos) return e.peak;
  return {};
}

}  // namespace tiller::bench
