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

// The fastest of `repeats` runs of f on `device`, after one untimed run (first-touch, oneDNN's
// or cuBLAS's kernel choice).
template <typename F>
double best_seconds(int repeats, const torch::Device& device, F f) {
  f();
  synchronize(device);
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    Stopwatch watch;
    f();
    synchronize(device);
    best = std::min(best, watch.seconds());
  }
  return best;
}

}  // namespace

void apply_threads(int threads) {
  check(threads >= 0, "bench: --threads must be >= 0");
  if (threads > 0) set_threads(threads);
}

double measure_matmul_gflops(int64_t size, bool bf16, int repeats, const torch::Device& device) {
  torch::NoGradGuard no_grad;
  // Without AVX-512 BF16 or AMX a bf16 matmul runs ~100x slower than fp32 (1.2 GFLOP/s here):
  // a 2048 one would take 14 s a run, and 512 measures that rate as well.
  if (bf16 && !bf16_supported(device)) size = std::min<int64_t>(size, 512);
  const auto dtype = bf16 ? torch::kBFloat16 : torch::kFloat;
  const auto made = torch::dtype(torch::kFloat).device(device);  // drawn where they are used
  auto a = torch::randn({size, size}, made).to(dtype);
  auto b = torch::randn({size, size}, made).to(dtype);
  auto c = torch::empty({size, size}, a.options());
  const double seconds = best_seconds(repeats, device, [&] { torch::mm_out(c, a, b); });
  return 2.0 * static_cast<double>(size * size * size) / seconds / 1e9;
}

double measure_copy_gbps(int repeats, const torch::Device& device) {
  torch::NoGradGuard no_grad;
  // 256 MiB each way: far beyond the caches (a GPU's L2 too), so this is the memory's own
  // bandwidth.
  auto source = torch::ones({64 << 20}, torch::dtype(torch::kFloat).device(device));
  auto target = torch::empty_like(source);
  const double seconds = best_seconds(repeats, device, [&] { target.copy_(source); });
  return 2.0 * static_cast<double>(source.nbytes()) / seconds / 1e9;
}

void run_gemm(const GemmOptions& o) {
  check(o.size >= 16, "bench gemm: --size must be at least 16");
  check(o.repeats >= 1, "bench gemm: --repeats must be at least 1");
  const torch::Device device = bench_device(o.device, "bench gemm");
  apply_threads(o.threads);
  Peak peak;
  peak.fp32_gflops = measure_matmul_gflops(o.size, /*bf16=*/false, o.repeats, device);
  peak.bf16_gflops = measure_matmul_gflops(o.size, /*bf16=*/true, o.repeats, device);
  peak.copy_gbps = measure_copy_gbps(o.repeats, device);
  const bool bf16_fast = bf16_supported(device);
  const std::string name = device_name(device);
  const GpuPeak published = published_peak(name);
  if (o.json) {
    nlohmann::json doc = {{"bench", "gemm"},
                          {"device", device.str()},
                          {"device_name", name},
                          {"size", o.size},
                          {"threads", torch::get_num_threads()},
                          {"fp32_gflops", peak.fp32_gflops},
                          {"bf16_gflops", peak.bf16_gflops},
                          {"bf16_supported", bf16_fast},
                          {"copy_gbps", peak.copy_gbps}};
    if (published.bf16_tflops > 0) {
      doc["published_bf16_gflops"] = published.bf16_tflops * 1e3;
      doc["published_fp32_gflops"] = published.fp32_tflops * 1e3;
      doc["published_source"] = published.source;
    }
    std::printf("%s\n", doc.dump(2).c_str());
    return;
  }
  if (device.is_cuda()) std::printf("device: %s (%s)\n", device.str().c_str(), name.c_str());
  std::printf("matmul %lldx%lld, %d threads (best of %d)\n", (long long)o.size, (long long)o.size,
              torch::get_num_threads(), o.repeats);
  std::printf("  fp32  %8.1f GFLOP/s\n", peak.fp32_gflops);
  std::printf("  bf16  %8.1f GFLOP/s%s\n", peak.bf16_gflops,
              bf16_fast ? "" : "  (no AVX-512 BF16 / AMX here: a slow path, measured at 512)");
  std::printf("copy    %8.1f GB/s (read + write)\n", peak.copy_gbps);
  if (published.bf16_tflops > 0)
    std::printf("published dense peaks: bf16 %.0f, fp32 %.1f TFLOP/s (%s)\n", published.bf16_tflops,
                published.fp32_tflops, published.source.c_str());
}

}  // namespace tiller::bench
