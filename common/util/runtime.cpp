#include "common/util/runtime.h"

#include <malloc.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "common/util/error.h"

namespace tiller {

void ensure_passive_omp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  ::setenv("OMP_WAIT_POLICY", "passive", 1);
  ::execv("/proc/self/exe", argv);
  // exec failed (no /proc): carry on with spinning threads.
}

void tune_allocator() {
  // Both must be raised: either alone left the page faults in place (see DESIGN.md). A finite
  // trim threshold is not enough: once a step frees more than it at the heap's top (a llama-124m
  // step frees over 1 GiB of activations), glibc returns it and the next step faults every page
  // back in, ~10 us a page here: 360,000 faults, a fifth of the step. -1 turns trimming off
  // (mallopt(3)); the heap stays at its peak, as a caching allocator would.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, -1);
}

void set_threads(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(threads);
}

void warn_if_slow_blas() {
  torch::NoGradGuard no_grad;
  auto a = torch::randn({1024, 1024});
  auto b = torch::randn({1024, 1024});
  // The best of three: another process sharing the cores must not trigger the warning.
  // OpenBLAS takes ~11 ms here, the reference BLAS ~350 ms.
  double best_ms = 1e9;
  for (int i = 0; i < 3; ++i) {
    auto start = std::chrono::steady_clock::now();
    torch::mm(a, b);
    best_ms = std::min(
        best_ms, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                     .count());
    if (best_ms < 150.0) return;
  }
  std::fprintf(stderr,
               "tiller: warning: a 1024x1024 matmul took %.0f ms: the BLAS in use looks like the "
               "reference one; install libopenblas0-openmp (scripts/setup.sh does)\n",
               best_ms);
}

double physical_memory_bytes() {
  return static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
}

void check_fits_in_memory(double bytes, const std::string& what) {
  const double available = physical_memory_bytes();
  if (available <= 0 || bytes <= available) return;
  char text[160];
  std::snprintf(text, sizeof text, " needs %.1f GiB; this machine has %.1f GiB of memory",
                bytes / (1ull << 30), available / (1ull << 30));
  throw Error(what + text);
}

}  // namespace tiller
