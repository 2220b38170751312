#include "common/util/device.h"

#include <torch/cuda.h>

#include <cstdlib>

#include "common/torch_compat.h"

namespace tiller {

namespace {

// "cuda:N" -> N; -1 for "cuda" (and for any other name).
int cuda_index(const std::string& name) {
  if (name.rfind("cuda:", 0) != 0) return -1;
  return std::atoi(name.c_str() + 5);
}

// "1 GPU" / "2 GPUs (cuda:0 to cuda:1)".
std::string gpus_seen(int gpus) {
  if (gpus == 1) return "1 GPU (cuda:0)";
  return std::to_string(gpus) + " GPUs (cuda:0 to cuda:" + std::to_string(gpus - 1) + ")";
}

}  // namespace

bool is_device_name(const std::string& name) {
  if (name == "cpu" || name == "cuda") return true;
  if (name.rfind("cuda:", 0) != 0 || name.size() == 5 || name.size() > 9) return false;
  for (size_t i = 5; i < name.size(); ++i)
    if (name[i] < '0' || name[i] > '9') return false;
  return true;
}

CudaMachine this_cuda_machine() {
  CudaMachine machine;
#if defined(TILLER_WITH_CUDA)
  machine.built_with_cuda = true;
#endif
  machine.gpus = static_cast<int>(torch::cuda::device_count());
  machine.torch_version = compat::torch_version();
  return machine;
}

std::string device_problem(const std::string& device, int local_processes,
                           const CudaMachine& machine) {
  if (!is_device_name(device)) return "'" + device + "' is not a device: use cpu, cuda or cuda:N";
  if (device == "cpu") return "";
  const std::string value = "'" + device + "'";
  if (!machine.built_with_cuda)
    return value + ", but this tiller is built against LibTorch " + machine.torch_version +
           " for the CPU only: build the CUDA configuration (scripts/setup.sh --cuda, then "
           "scripts/build.sh --cuda, into build-cuda/) or set run.device=cpu";
  if (machine.gpus == 0)
    return value +
           ", but CUDA sees no GPU on this machine (no driver, or CUDA_VISIBLE_DEVICES hides "
           "them): run where a GPU is, or set run.device=cpu";
  const int index = cuda_index(device);
  if (index >= machine.gpus)
    return value + ", but CUDA sees " + gpus_seen(machine.gpus) +
           " on this machine: pick one of those, or set run.device=cuda";
  if (local_processes > 1 && index >= 0)
    return value + " would put all " + std::to_string(local_processes) +
           " processes of this machine on one GPU: set run.device=cuda (each process then takes "
           "cuda:LOCAL_RANK)";
  if (local_processes > machine.gpus)
    return value + " gives each process of this machine the GPU of its LOCAL_RANK, up to cuda:" +
           std::to_string(local_processes - 1) + ", but CUDA sees " + gpus_seen(machine.gpus) +
           ": start at most " + std::to_string(machine.gpus) +
           " processes a machine (torchrun --nproc-per-node=" + std::to_string(machine.gpus) +
           ") or set run.device=cpu";
  return "";
}

}  // namespace tiller
