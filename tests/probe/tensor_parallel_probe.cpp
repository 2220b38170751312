// tiller_tp_probe OUT.safetensors [HEADS]: one rank of a tensor-parallel job (RANK, WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT from the environment, Gloo on the CPU) sharding the probe model over
// every rank; rank 0 writes tensor_parallel_probe()'s tensors to OUT. A tiller::Error goes to
// stderr with exit status 1.
// tiller_tp_probe --thread-throws system_error|runtime_error: after joining, rank 1 lets that
// exception escape a thread of its own, as LibTorch 1.13's store threads do when the store's
// host dies; rank 0 waits a few seconds and ends.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <system_error>
#include <thread>

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
    if (std::strcmp(argv[1], "--thread-throws") == 0) {
      const bool system = argc > 2 && std::strcmp(argv[2], "system_error") == 0;
      if (launch.rank == 1)
        std::thread([system] {
          if (system) throw std::system_error(ECONNRESET, std::system_category());
          throw std::runtime_error("not a connection error");
        }).detach();
      std::this_thread::sleep_for(std::chrono::seconds(5));
      std::_Exit(0);
    }
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
