// Where this process sits in a multi-process job, read from the variables the usual launchers set:
// torchrun (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), SLURM's srun
// (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE) and OpenMPI's mpirun
// (OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE).
// No variables: a single process.
#pragma once
#include <functional>
#include <string>

namespace tiller::dist {

struct Launch {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  // The processes on this machine, where the launcher says (0 where it does not: srun without
  // --ntasks-per-node); local_processes() is then a lower bound.
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string launcher = "none";  // "torchrun", "slurm", "openmpi" or "none"
  // torchrun >= 2.x runs the rendezvous store in its agent and tells workers to join it
  // (TORCHELASTIC_USE_AGENT_STORE=True); otherwise rank 0 hosts it.
  bool agent_store = false;

  bool single() const { return world_size == 1; }
  int local_processes() const {
    return local_world_size > local_rank ? local_world_size : local_rank + 1;
  }
};

using EnvironmentLookup = std::function<const char*(const char* name)>;

// Reads the launch from the environment (or from `lookup`, for tests). Throws tiller::Error naming
// the variable when one is malformed or contradicts another (RANK >= WORLD_SIZE, ...).
Launch launch_from_environment();
Launch launch_from_environment(const EnvironmentLookup& lookup);

}  // namespace tiller::dist
