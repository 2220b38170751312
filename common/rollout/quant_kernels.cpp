#include "common/rollout/quant_kernels.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "common/util/error.h"
#include "common/util/vec_avx2.h"

namespace tiller::quant_kernels {

namespace {

// ---------------------------------------------------------------------------------------------
// Portable loops: sums in 8 interleaved lanes, as decode_kernels::dot, so the compiler vectorises.

float dot_f32_portable(const float* a, const float* b, int64_t n) {
  float lanes[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int64_t j = 0; j < 8; ++j) lanes[j] += a[i + j] * b[i + j];
  for (; i < n; ++i) lanes[i % 8] += a[i] * b[i];
  return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) +
         ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
}

float dot_i8_portable(const int8_t* q, const float* x, int64_t n) {
  float lanes[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int64_t j = 0; j < 8; ++j) lanes[j] += static_cast<float>(q[i + j]) * x[i + j];
  for (; i < n; ++i) lanes[i % 8] += static_cast<float>(q[i]) * x[i];
  return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) +
         ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
}

// One group of 4-bit codes: byte i holds column i (low bits) and column i + half (high bits).
float dot_u4_portable(const uint8_t* q, const float* x, int64_t half) {
  float low = 0, high = 0;
  for (int64_t i = 0; i < half; ++i) {
    low += static_cast<float>(q[i] & 15) * x[i];
    high += static_cast<float>(q[i] >> 4) * x[i + half];
  }
  return low + high;
}

#ifdef TILLER_HAVE_AVX2_KERNELS
using vec::avx2::sum8;

TILLER_AVX2 float dot_f32_avx2(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  float sum = sum8(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

TILLER_AVX2 inline __m256 widen8_i8(const int8_t* q) {
  return _mm256_cvtepi32_ps(
      _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q))));
}

TILLER_AVX2 float dot_i8_avx2(const int8_t* q, const float* x, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(widen8_i8(q + i), _mm256_loadu_ps(x + i), acc0);
    acc1 = _mm256_fmadd_ps(widen8_i8(q + i + 8), _mm256_loadu_ps(x + i + 8), acc1);
  }
  float sum = sum8(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) sum += static_cast<float>(q[i]) * x[i];
  return sum;
}

// A whole 4-bit row (groups of 2 * half columns, half a multiple of 8): each group's products
// summed in a vector, scaled into one accumulator, reduced once at the end.
TILLER_AVX2 float row_u4_avx2(const uint8_t* codes, const float* scales, const float* mins,
                              const float* group_sums, int64_t groups, int64_t half,
                              const float* x) {
  const __m128i nibble = _mm_set1_epi8(15);
  __m256 acc = _mm256_setzero_ps();
  float from_mins = 0;
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* q = codes + g * half;
    const float* xg = x + g * 2 * half;
    __m256 part0 = _mm256_setzero_ps(), part1 = _mm256_setzero_ps();
    for (int64_t i = 0; i < half; i += 8) {
      const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + i));
      const __m128i low = _mm_and_si128(bytes, nibble);
      const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble);
      part0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(low)),
                              _mm256_loadu_ps(xg + i), part0);
      part1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(high)),
                              _mm256_loadu_ps(xg + half + i), part1);
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(scales[g]), _mm256_add_ps(part0, part1), acc);
    from_mins += mins[g] * group_sums[g];
  }
  return sum8(acc) + from_mins;
}

// w[i] = q[i] * scale, n a multiple of 8.
TILLER_AVX2 void dequantize_i8_avx2(const int8_t* q, float scale, int64_t n, float* w) {
  const __m256 s = _mm256_set1_ps(scale);
  for (int64_t i = 0; i < n; i += 8) _mm256_storeu_ps(w + i, _mm256_mul_ps(widen8_i8(q + i), s));
}

// One group of 4-bit codes (half a multiple of 8) as floats: q * scale + min.
TILLER_AVX2 void dequantize_u4_avx2(const uint8_t* q, float scale, float min, int64_t half,
                                    float* w) {
  const __m128i nibble = _mm_set1_epi8(15);
  const __m256 s = _mm256_set1_ps(scale), m = _mm256_set1_ps(min);
  for (int64_t i = 0; i < half; i += 8) {
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + i));
    const __m128i low = _mm_and_si128(bytes, nibble);
    const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble);
    _mm256_storeu_ps(w + i, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(low)), s, m));
    _mm256_storeu_ps(w + half + i,
                     _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(high)), s, m));
  }
}

#define TILLER_AVX512 __attribute__((target("avx512f,avx512bw,avx2,fma")))
// GCC 12's avx512fintrin.h starts conversions and reductions from _mm512_undefined_*(), which
// -Wuninitialized reports at every use; the values are never read.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return has;
}

TILLER_AVX512 float dot_f32_avx512(const float* a, const float* b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

TILLER_AVX512 inline __m512 widen16_i8(const int8_t* q) {
  return _mm512_cvtepi32_ps(
      _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q))));
}

TILLER_AVX512 float dot_i8_avx512(const int8_t* q, const float* x, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(widen16_i8(q + i), _mm512_loadu_ps(x + i), acc0);
    acc1 = _mm512_fmadd_ps(widen16_i8(q + i + 16), _mm512_loadu_ps(x + i + 16), acc1);
  }
  float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  for (; i < n; ++i) sum += static_cast<float>(q[i]) * x[i];
  return sum;
}

// As row_u4_avx2, half a multiple of 16.
TILLER_AVX512 float row_u4_avx512(const uint8_t* codes, const float* scales, const float* mins,
                                  const float* group_sums, int64_t groups, int64_t half,
                                  const float* x) {
  const __m128i nibble = _mm_set1_epi8(15);
  __m512 acc = _mm512_setzero_ps();
  float from_mins = 0;
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* q = codes + g * half;
    const float* xg = x + g * 2 * half;
    __m512 part0 = _mm512_setzero_ps(), part1 = _mm512_setzero_ps();
    for (int64_t i = 0; i < half; i += 16) {
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i));
      const __m128i low = _mm_and_si128(bytes, nibble);
      const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble);
      part0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(low)),
                              _mm512_loadu_ps(xg + i), part0);
      part1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(high)),
                              _mm512_loadu_ps(xg + half + i), part1);
    }
    acc = _mm512_fmadd_ps(_mm512_set1_ps(scales[g]), _mm512_add_ps(part0, part1), acc);
    from_mins += mins[g] * group_sums[g];
  }
  return _mm512_reduce_add_ps(acc) + from_mins;
}
#pragma GCC diagnostic pop
#endif

float dot_f32(Isa isa, const float* a, const float* b, int64_t n) {
#ifdef TILLER_HAVE_AVX2_KERNELS
  if (isa == Isa::avx512) return dot_f32_avx512(a, b, n);
  if (isa == Isa::avx2) return dot_f32_avx2(a, b, n);
#endif
  (void)isa;
  return dot_f32_portable(a, b, n);
}

float dot_i8(Isa isa, const int8_t* q, const float* x, int64_t n) {
#ifdef TILLER_HAVE_AVX2_KERNELS
  if (isa == Isa::avx512) return dot_i8_avx512(q, x, n);
  if (isa == Isa::avx2) return dot_i8_avx2(q, x, n);
#endif
  (void)isa;
  return dot_i8_portable(q, x, n);
}

// ---------------------------------------------------------------------------------------------
// One output column: row j of the matrix against the input rows.

// The matrix's data, read once per product instead of once per row (data_ptr checks its type).
struct Packed {
  const QuantizedMatrix& m;
  const int8_t* int8 = nullptr;
  const uint8_t* int4 = nullptr;
  const float* scales = nullptr;
  const float* mins = nullptr;

  explicit Packed(const QuantizedMatrix& matrix)
      : m(matrix), scales(matrix.scales.data_ptr<float>()) {
    if (m.bits == 8) {
      int8 = m.packed.data_ptr<int8_t>();
    } else {
      int4 = m.packed.data_ptr<uint8_t>();
      mins = m.mins.data_ptr<float>();
    }
  }
};

// Row j times one input row. group_sums: the input's sum over each group (int4).
float row_times_one(Isa isa, const Packed& p, int64_t j, const float* x, const float* group_sums) {
  const QuantizedMatrix& m = p.m;
  const float* scales = p.scales + j * m.groups();
  if (m.bits == 8) return scales[0] * dot_i8(isa, p.int8 + j * m.cols, x, m.cols);
  const float* mins = p.mins + j * m.groups();
  const uint8_t* codes = p.int4 + j * (m.cols / 2);
  const int64_t half = m.group_size / 2;
#ifdef TILLER_HAVE_AVX2_KERNELS
  if (isa == Isa::avx512 && half % 16 == 0)
    return row_u4_avx512(codes, scales, mins, group_sums, m.groups(), half, x);
  if (isa != Isa::portable && half % 8 == 0)
    return row_u4_avx2(codes, scales, mins, group_sums, m.groups(), half, x);
#endif
  float sum = 0;
  for (int64_t g = 0; g < m.groups(); ++g)
    sum += scales[g] * dot_u4_portable(codes + g * half, x + g * m.group_size, half) +
           mins[g] * group_sums[g];
  return sum;
}

// Row j as floats into w[m.cols]: the same values whatever the set (one multiply, or one fused
// multiply-add, a value).
void dequantize_row(Isa isa, const Packed& p, int64_t j, float* w) {
  const QuantizedMatrix& m = p.m;
  const float* scales = p.scales + j * m.groups();
  if (m.bits == 8) {
    const int8_t* q = p.int8 + j * m.cols;
#ifdef TILLER_HAVE_AVX2_KERNELS
    if (isa != Isa::portable && m.cols % 8 == 0) return dequantize_i8_avx2(q, scales[0], m.cols, w);
#endif
    for (int64_t i = 0; i < m.cols; ++i) w[i] = static_cast<float>(q[i]) * scales[0];
    return;
  }
  const float* mins = p.mins + j * m.groups();
  const uint8_t* codes = p.int4 + j * (m.cols / 2);
  const int64_t half = m.group_size / 2;
  for (int64_t g = 0; g < m.groups(); ++g) {
    const uint8_t* q = codes + g * half;
    float* out = w + g * m.group_size;
#ifdef TILLER_HAVE_AVX2_KERNELS
    if (isa != Isa::portable && half % 8 == 0) {
      dequantize_u4_avx2(q, scales[g], mins[g], half, out);
      continue;
    }
#endif
    for (int64_t i = 0; i < half; ++i) {
      out[i] = std::fma(static_cast<float>(q[i] & 15), scales[g], mins[g]);
      out[i + half] = std::fma(static_cast<float>(q[i] >> 4), scales[g], mins[g]);
    }
  }
}

// The input's sum over each group of columns (int4's minimums multiply it): [groups].
std::vector<float> group_sums_of(const QuantizedMatrix& m, const float* x) {
  std::vector<float> sums(m.groups());
  for (int64_t g = 0; g < m.groups(); ++g)
    for (int64_t i = 0; i < m.group_size; ++i) sums[g] += x[g * m.group_size + i];
  return sums;
}

}  // namespace

bool supported(Isa isa) {
#ifdef TILLER_HAVE_AVX2_KERNELS
  if (isa == Isa::avx512) return cpu_has_avx512() && vec::avx2::cpu_has_avx2_fma();
  if (isa == Isa::avx2) return vec::avx2::cpu_has_avx2_fma();
#endif
  return isa == Isa::portable;
}

Isa best_isa() {
  if (supported(Isa::avx512)) return Isa::avx512;
  if (supported(Isa::avx2)) return Isa::avx2;
  return Isa::portable;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      return "avx512";
    case Isa::avx2:
      return "avx2";
    case Isa::portable:
      break;
  }
  return "portable";
}

void matmul(Isa isa, const QuantizedMatrix& m, const float* in, int64_t rows, const float* bias,
            float* out, bool accumulate) {
  check(supported(isa), "quant_kernels::matmul: this CPU lacks the instructions asked for");
  const Packed packed(m);
  const std::vector<float> group_sums =
      m.bits == 4 && rows == 1 ? group_sums_of(m, in) : std::vector<float>();
  auto columns = [&](int64_t begin, int64_t end) {
    std::vector<float> w;  // one dequantised row, for several input rows
    if (rows > 1) w.resize(m.cols);
    for (int64_t j = begin; j < end; ++j) {
      if (rows > 1) dequantize_row(isa, packed, j, w.data());
      for (int64_t r = 0; r < rows; ++r) {
        const float* x = in + r * m.cols;
        float y = rows > 1 ? dot_f32(isa, w.data(), x, m.cols)
                           : row_times_one(isa, packed, j, x, group_sums.data());
        if (bias != nullptr) y += bias[j];
        float& target = out[r * m.rows + j];
        target = accumulate ? target + y : y;
      }
    }
  };
  // Tiller runs libgomp's threads with OMP_WAIT_POLICY=passive (common/util/runtime.h), so each
  // parallel region pays for waking them (tens of microseconds): below about a million weights
  // one thread is faster (llama-15m at batch 1: 1,219 tokens/s on one thread against 469 with
  // every matrix split over two), as the fp32 step leaves such matrices to one thread too.
  constexpr int64_t kParallelWeights = int64_t{1} << 20;
  if (m.rows * m.cols < kParallelWeights) return columns(0, m.rows);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / m.cols);
  at::parallel_for(0, m.rows, grain, columns);
}

}  // namespace tiller::quant_kernels
