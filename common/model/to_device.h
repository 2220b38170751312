// Host batches onto the run's device: on a GPU through pinned memory without blocking the host
// (the copy is ordered on the current stream before the kernels that read it); elsewhere a plain
// `to`, which returns the tensor itself when it is already there.
#pragma once
#include <torch/torch.h>

namespace tiller {

inline torch::Tensor to_device(const torch::Tensor& host, const torch::Device& device) {
  if (device.is_cuda() && host.device().is_cpu())
    return host.pin_memory().to(device, /*non_blocking=*/true);
  return host.to(device);
}

}  // namespace tiller
