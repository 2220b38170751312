#include "common/rollout/panel_matmul.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <string>

#include "common/util/error.h"
#include "common/util/spin_team.h"

namespace tiller {

namespace {

#define TILLER_AVX512F __attribute__((target("avx512f")))

constexpr int64_t kTileRows = 8;  // 16 accumulators of the 32 vector registers

// out[r, :cols] (+)= in[r] · panelᵀ + bias for the R rows of one tile against one panel. R rows ×
// 32 outputs in registers; each step of k loads the panel's 32 weights once for all R rows.
template <int R>
TILLER_AVX512F void panel_tile(const float* in, int64_t k, const float* panel, const float* bias,
                               float* out, int64_t out_stride, int64_t cols, bool accumulate) {
  __m512 acc[R][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; ++i) {
    const __m512 w0 = _mm512_loadu_ps(panel + i * PanelMatrix::kWidth);
    const __m512 w1 = _mm512_loadu_ps(panel + i * PanelMatrix::kWidth + 16);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 x = _mm512_set1_ps(in[r * k + i]);
      acc[r][0] = _mm512_fmadd_ps(x, w0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(x, w1, acc[r][1]);
    }
  }
  // The last panel's outputs past n are neither read nor written, and where it has 16 or fewer
  // no pointer is made past them.
  const auto lanes = [](int64_t count) {
    return static_cast<__mmask16>(count >= 16 ? 0xFFFF : (1u << std::max<int64_t>(count, 0)) - 1);
  };
  const __mmask16 low = lanes(cols), high = lanes(cols - 16);
  const bool two = cols > 16;
  const __m512 zero = _mm512_setzero_ps();
  const __m512 bias0 = bias != nullptr ? _mm512_maskz_loadu_ps(low, bias) : zero;
  const __m512 bias1 = bias != nullptr && two ? _mm512_maskz_loadu_ps(high, bias + 16) : zero;
  for (int r = 0; r < R; ++r) {
    float* o = out + r * out_stride;
    __m512 y0 = _mm512_add_ps(acc[r][0], bias0), y1 = _mm512_add_ps(acc[r][1], bias1);
    if (accumulate) {
      y0 = _mm512_add_ps(y0, _mm512_maskz_loadu_ps(low, o));
      if (two) y1 = _mm512_add_ps(y1, _mm512_maskz_loadu_ps(high, o + 16));
    }
    _mm512_mask_storeu_ps(o, low, y0);
    if (two) _mm512_mask_storeu_ps(o + 16, high, y1);
  }
}

using TileFunction = void (*)(const float*, int64_t, const float*, const float*, float*, int64_t,
                              int64_t, bool);
constexpr TileFunction kTiles[kTileRows] = {panel_tile<1>, panel_tile<2>, panel_tile<3>,
                                            panel_tile<4>, panel_tile<5>, panel_tile<6>,
                                            panel_tile<7>, panel_tile<8>};

}  // namespace

bool PanelMatrix::available() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}

PanelMatrix::PanelMatrix(const float* weight, int64_t n, int64_t k)
    : n_(n), k_(k), panels_(static_cast<size_t>((n + kWidth - 1) / kWidth * kWidth * k), 0.0f) {
  check(n > 0 && k > 0, "PanelMatrix: a weight of " + std::to_string(n) + " x " +
                            std::to_string(k) + " has nothing to multiply");
  const int64_t panel_count = (n + kWidth - 1) / kWidth;
  at::parallel_for(0, panel_count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      float* panel = panels_.data() + p * k * kWidth;
      for (int64_t j = 0; j < kWidth && p * kWidth + j < n; ++j) {
        const float* row = weight + (p * kWidth + j) * k;
        for (int64_t i = 0; i < k; ++i) panel[i * kWidth + j] = row[i];
      }
    }
  });
}

void PanelMatrix::multiply(const float* in, int64_t rows, const float* bias, float* out,
                           bool accumulate, SpinTeam& team) const {
  check(available(), "PanelMatrix: this CPU lacks AVX-512F");
  const int64_t panel_count = (n_ + kWidth - 1) / kWidth;
  const int64_t tiles = (rows + kTileRows - 1) / kTileRows;
  // Work items panel by panel, a panel's tiles next to each other: a thread's run of items
  // reads each panel from memory once. An item is 256·k multiply-adds; a thread gets 2^17 at least.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 17) / (kTileRows * kWidth * k_));
  team.parallel_for(panel_count * tiles, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t p = item / tiles, first_row = item % tiles * kTileRows;
      const int64_t tile_rows = std::min(kTileRows, rows - first_row);
      const int64_t column = p * kWidth;
      kTiles[tile_rows - 1](in + first_row * k_, k_, panels_.data() + p * k_ * kWidth,
                            bias != nullptr ? bias + column : nullptr,
                            out + first_row * n_ + column, n_, std::min(kWidth, n_ - column),
                            accumulate);
    }
  });
}

}  // namespace tiller
