// tiller_tp_probe OUT.safetensors [HEADS]: one rank of a tensor-parallel job (RANK, WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT from the environment, Gloo on the CPU) sharding the probe model over
// every rank; rank 0 writes tensor_parallel_probe()'s tensors to OUT. A tiller::Error goes to
// stderr with exit status 1.
#include <cstdio>
#include <cstdlib>

#include "common/dist/launch.h"
#include "common/dist/tensor_parallel.h"
#include "common/io/safetensors.h"
#include "common/util/error.h"
#include "tests/probe/tensor_parallel_probe.h"

int main(int argc, char** argv) {
  using namespace tiller;
  if (argc < 2) {
    std::fprintf(stderr, "usage: tiller_tp_probe OUT.safetensors [HEADS]\n");
    return 2;
  }
  try {
    torch::set_num_threads(1);
    const auto launch = dist::launch_from_environment();
    dist::initialize(launch, {});
    dist::set_up_layout(launch.world_size);
    const auto results =
        test::tensor_parallel_probe(dist::layout().tensor, argc > 2 ? std::atoll(argv[2]) : 4);
    if (dist::is_main()) {
      std::vector<std::pair<std::string, torch::Tensor>> named(results.begin(), results.end());
      write_safetensors(argv[1], named);
    }
    dist::shutdown();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tiller_tp_probe: %s%s\n", dist::error_prefix().c_str(), e.what());
    // As the CLI does: returning would run static destructors while the heartbeat thread is still
    // inside the store, and c10d's destructors would wait for peers that may be gone.
    std::fflush(stderr);
    std::_Exit(1);
  }
}
