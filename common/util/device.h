// The run's device (`cpu`, `cuda`, `cuda:N`): its spelling, and whether this build and machine
// can run on it, said in one line before anything is written.
#pragma once
#include <string>

namespace tiller {

// cpu, cuda or cuda:N (N a non-negative integer): the spellings run.device takes.
bool is_device_name(const std::string& name);

// What CUDA offers this process.
struct CudaMachine {
  bool built_with_cuda = false;  // the LibTorch linked has CUDA
  int gpus = 0;                  // the GPUs it sees (CUDA_VISIBLE_DEVICES applied)
  std::string torch_version;     // "1.13.1", for the message
};

// This process's: torch::cuda::device_count() and how LibTorch was built.
CudaMachine this_cuda_machine();

// Why `device` cannot run here, as the rest of one line that starts with the setting's name
// ("run.device: " + this): the value, what is missing and what to do. Empty when it can.
// `local_processes`: the processes of the job on this machine (1 for a single process); with
// `cuda` each takes cuda:LOCAL_RANK, so they need as many GPUs; with `cuda:N` they would share one.
std::string device_problem(const std::string& device, int local_processes,
                           const CudaMachine& machine);

}  // namespace tiller
