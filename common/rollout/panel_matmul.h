// PanelMatrix: a weight matrix copied once into the layout a decode step multiplies fastest, for
// products of a few rows (a rollout's batch) by a large weight, many times over unchanged weights.
//
// Through sgemm, each such product repacks the whole weight (OpenBLAS's sgemm_incopy: 12% of a
// GRPO iteration at llama-15m, batch 32), and a weight read once per product is then read three
// times. Packed once per generate() call, each step reads the panels once, 8 rows at a time from
// registers. `tiller bench decode`, fp32 CPU, batch 32: docs/bench.md has the figures.
//
// The product runs on AVX-512F (`available()`); elsewhere FastDecoder keeps sgemm.
#pragma once
#include <cstdint>
#include <vector>

namespace tiller {

class SpinTeam;

class PanelMatrix {
 public:
  // Outputs a panel holds: two 16-float vectors.
  static constexpr int64_t kWidth = 32;

  // Whether this CPU runs multiply() (AVX-512F).
  static bool available();

  // Copies `weight` ([n, k] row-major, torch::nn::Linear's layout) into ceil(n / 32) panels.
  PanelMatrix(const float* weight, int64_t n, int64_t k);

  // out[rows, n] = in[rows, k] · weightᵀ + bias (bias may be null), or += that when
  // `accumulate`. Splits the panels and 8-row tiles over `team`'s threads. Each output is the sum
  // over k in order (one fused multiply-add a term), so it is the same whatever the thread count.
  // Requires available().
  void multiply(const float* in, int64_t rows, const float* bias, float* out, bool accumulate,
                SpinTeam& team) const;

  int64_t n() const { return n_; }
  int64_t k() const { return k_; }

 private:
  int64_t n_, k_;
  // Panel p holds outputs [32p, 32p + 32): element (i, j) at p * k * 32 + i * 32 + j is
  // weight[32p + j][i], zero past n.
  std::vector<float> panels_;
};

}  // namespace tiller
