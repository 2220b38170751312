#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "bench/bench.h"
#include "common/train/precision.h"
#include "common/util/error.h"
#include "common/util/runtime.h"

namespace tiller::bench {

namespace {

// The fastest of `repeats` runs of f, after one untimed run (first-touch, oneDNN's kernel choice).
template <typename F>
double best_seconds(int repeats, F f) {
  f();
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    Stopwatch watch;
    f();
    best = std::min(best, watch.seconds());
  }
  return best;
}

}  // namespace

void apply_threads(int threads) {
  check(threads >= 0, "bench: --threads must be >= 0");
  if (threads > 0) set_threads(threads);
}

double measure_matmul_gflops(int64_t size, bool bf16, int repeats) {
  torch::NoGradGuard no_grad;
  // Without AVX-512 BF16 or AMX a bf16 matmul runs ~100x slower than fp32 (1.2 GFLOP/s here):
  // a 2048 one would take 14 s a run, and 512 measures that rate as well.
  if (bf16 && !bf16_supported(torch::Device(torch::kCPU))) size = std::min<int64_t>(size, 512);
  const auto dtype = bf16 ? torch::kBFloat16 : torch::kFloat;
  auto a = torch::randn({size, size}).to(dtype);
  auto b = torch::randn({size, size}).to(dtype);
  auto c = torch::empty({size, size}, a.options());
  const double seconds = best_seconds(repeats, [&] { torch::mm_out(c, a, b); });
  return 2.0 * static_cast<double>(size * size * size) / seconds / 1e9;
}

double measure_copy_gbps(int repeats) {
  torch::NoGradGuard no_grad;
  // 256 MiB each way: far beyond the caches, so this is the memory's own bandwidth.
  auto source = torch::ones({64 << 20}, torch::kFloat);
  auto target = torch::empty_like(source);
  const double seconds = best_seconds(repeats, [&] { target.copy_(source); });
  return 2.0 * static_cast<double>(source.nbytes()) / seconds / 1e9;
}

void run_gemm(const GemmOptions& o) {
  check(o.size >= 16, "bench gemm: --size must be at least 16");
  check(o.repeats >= 1, "bench gemm: --repeats must be at least 1");
  apply_threads(o.threads);
  Peak peak;
  peak.fp32_gflops = measure_matmul_gflops(o.size, /*bf16=*/false, o.repeats);
  peak.bf16_gflops = measure_matmul_gflops(o.size, /*bf16=*/true, o.repeats);
  peak.copy_gbps = measure_copy_gbps(o.repeats);
  const bool bf16_fast = bf16_supported(torch::Device(torch::kCPU));
  if (o.json) {
    nlohmann::json doc = {{"bench", "gemm"},
                          {"size", o.size},
                          {"threads", torch::get_num_threads()},
                          {"fp32_gflops", peak.fp32_gflops},
                          {"bf16_gflops", peak.bf16_gflops},
                          {"bf16_supported", bf16_fast},
                          {"copy_gbps", peak.copy_gbps}};
    std::printf("%s\n", doc.dump(2).c_str());
    return;
  }
  std::printf("matmul %lldx%lld, %d threads (best of %d)\n", (long long)o.size, (long long)o.size,
              torch::get_num_threads(), o.repeats);
  std::printf("  fp32  %8.1f GFLOP/s\n", peak.fp32_gflops);
  std::printf("  bf16  %8.1f GFLOP/s%s\n", peak.bf16_gflops,
              bf16_fast ? "" : "  (no AVX-512 BF16 / AMX here: a slow path, measured at 512)");
  std::printf("copy    %8.1f GB/s (read + write)\n", peak.copy_gbps);
}

}  // namespace tiller::bench
