#include "common/rollout/decode_kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/util/vec_avx2.h"

namespace tiller::decode_kernels {

float dot(const float* a, const float* b, int64_t n) {
  constexpr int64_t kLanes = 8;
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) lanes[j] += a[i + j] * b[i + j];
  for (; i < n; ++i) lanes[i % kLanes] += a[i] * b[i];
  return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) +
         ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
}

namespace {

void attend_portable(const float* q, int64_t group, const float* keys, const float* values,
                     const float* mask_bias, int64_t slots, int64_t head_dim, float scale,
                     float* scratch, float* out) {
  const int64_t padded = padded_slots(slots);
  for (int64_t h = 0; h < group; ++h) {
    const float* qh = q + h * head_dim;
    float* scores = scratch + h * padded;
    float max = -std::numeric_limits<float>::infinity();
    for (int64_t s = 0; s < slots; ++s) {
      scores[s] = dot(qh, keys + s * head_dim, head_dim) * scale + mask_bias[s];
      max = std::max(max, scores[s]);
    }
    float sum = 0;
    for (int64_t s = 0; s < slots; ++s) {
      scores[s] = std::exp(scores[s] - max);
      sum += scores[s];
    }
    float* o = out + h * head_dim;
    std::fill(o, o + head_dim, 0.0f);
    for (int64_t s = 0; s < slots; ++s) {
      if (scores[s] == 0) continue;  // masked slots
      const float p = scores[s] / sum;
      for (int64_t d = 0; d < head_dim; ++d) o[d] += p * values[s * head_dim + d];
    }
  }
}

void silu_mul_portable(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

#ifdef TILLER_HAVE_AVX2_KERNELS
using vec::avx2::exp8;
using vec::avx2::max8;
using vec::avx2::sum8;

// The 8 horizontal sums of v[0..7], as one vector in that order.
TILLER_AVX2 inline __m256 sums_of_8(const __m256* v) {
  const __m256 s01 = _mm256_hadd_ps(v[0], v[1]), s23 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 s45 = _mm256_hadd_ps(v[4], v[5]), s67 = _mm256_hadd_ps(v[6], v[7]);
  // Each 128-bit half now holds a partial sum of heads 0-3 (s0123) or 4-7 (s4567).
  const __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
  return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20),
                       _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

// The query row qh against key rows [s0, s0 + 8) (those below `slots`; zeros for the rest, as
// rows past the last slot may lie outside the cache): 8 vectors of products summed over the head
// dim's chunks of 8. kChunks > 0 fixes the chunk count at compile time (then `chunks` is unused).
template <int64_t kChunks>
TILLER_AVX2 inline void key_products(const float* qh, const float* keys, int64_t s0, int64_t slots,
                                     int64_t chunks, __m256* products) {
  const int64_t n = kChunks > 0 ? kChunks : chunks, head_dim = 8 * n;
  if (s0 + kSlotBlock <= slots) {  // a whole block: its 8 sums in 8 independent chains
    for (int64_t j = 0; j < kSlotBlock; ++j) products[j] = _mm256_setzero_ps();
    const float* block = keys + s0 * head_dim;
    for (int64_t c = 0; c < n; ++c) {
      const __m256 q = _mm256_loadu_ps(qh + 8 * c);
      for (int64_t j = 0; j < kSlotBlock; ++j)
        products[j] =
            _mm256_fmadd_ps(q, _mm256_loadu_ps(block + j * head_dim + 8 * c), products[j]);
    }
    return;
  }
  for (int64_t j = 0; j < kSlotBlock; ++j) {
    __m256 acc = _mm256_setzero_ps();
    if (s0 + j < slots) {
      const float* key = keys + (s0 + j) * head_dim;
      for (int64_t c = 0; c < n; ++c)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(qh + 8 * c), _mm256_loadu_ps(key + 8 * c), acc);
    }
    products[j] = acc;
  }
}

// out[8 * c0 .. 8 * (c0 + kBlock)) of one query head = inv_sum * the sum over slots of
// scores[s] * values[s] there: kBlock chunks of 8 dims in kBlock independent chains, each value row
// read in order.
template <int64_t kBlock>
TILLER_AVX2 inline void weighted_values(const float* scores, const float* values, int64_t slots,
                                        int64_t head_dim, int64_t c0, float inv_sum, float* out) {
  __m256 acc[kBlock];
  for (int64_t c = 0; c < kBlock; ++c) acc[c] = _mm256_setzero_ps();
  const float* v = values + 8 * c0;
  for (int64_t s = 0; s < slots; ++s) {
    const __m256 p = _mm256_set1_ps(scores[s]);
    for (int64_t c = 0; c < kBlock; ++c)
      acc[c] = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + s * head_dim + 8 * c), acc[c]);
  }
  for (int64_t c = 0; c < kBlock; ++c)
    _mm256_storeu_ps(out + 8 * (c0 + c), _mm256_mul_ps(acc[c], _mm256_set1_ps(inv_sum)));
}

using WeightedValues = void (*)(const float*, const float*, int64_t, int64_t, int64_t, float,
                                float*);
constexpr WeightedValues kWeightedValues[8] = {
    weighted_values<1>, weighted_values<2>, weighted_values<3>, weighted_values<4>,
    weighted_values<5>, weighted_values<6>, weighted_values<7>, weighted_values<8>};

// attend() for head_dim a multiple of 8 (kChunks of them, or head_dim / 8 when kChunks is 0).
// Scores are made 8 slots at a time (8 key rows against the query, then one transposing sum), so
// that the mask, the max, the exp and the sum run over whole vectors; the value sum takes one
// multiply-add per slot and 8 dims, a chain per 8 dims (weighted_values).
template <int64_t kChunks>
TILLER_AVX2 void attend_avx2(const float* q, int64_t group, const float* keys, const float* values,
                             const float* mask_bias, int64_t slots, int64_t head_dim, float scale,
                             float* scratch, float* out) {
  if (kChunks > 0) head_dim = 8 * kChunks;
  const int64_t padded = padded_slots(slots), chunks = head_dim / 8;
  const __m256 vscale = _mm256_set1_ps(scale);
  for (int64_t h = 0; h < group; ++h) {
    const float* qh = q + h * head_dim;
    float* scores = scratch + h * padded;
    __m256 vmax = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t s0 = 0; s0 < padded; s0 += kSlotBlock) {
      __m256 products[kSlotBlock];
      key_products<kChunks>(qh, keys, s0, slots, chunks, products);
      const __m256 block =
          _mm256_fmadd_ps(sums_of_8(products), vscale, _mm256_loadu_ps(mask_bias + s0));
      _mm256_storeu_ps(scores + s0, block);
      vmax = _mm256_max_ps(vmax, block);
    }
    const __m256 max = _mm256_set1_ps(max8(vmax));
    __m256 vsum = _mm256_setzero_ps();
    for (int64_t s0 = 0; s0 < padded; s0 += kSlotBlock) {
      const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + s0), max));
      _mm256_storeu_ps(scores + s0, e);
      vsum = _mm256_add_ps(vsum, e);
    }
    const float inv_sum = 1.0f / sum8(vsum);
    for (int64_t c0 = 0; c0 < chunks; c0 += 8)
      kWeightedValues[std::min<int64_t>(8, chunks - c0) - 1](scores, values, slots, head_dim, c0,
                                                             inv_sum, out + h * head_dim);
  }
}

// small_matmul() in tiles of 4 rows by 2 outputs: 8 running dot products along k (each weight
// chunk loaded once for 4 rows), reduced to one vector by sums_of_8. Tiles at the edges repeat
// the last row or output instead of branching, and store only what is real.
TILLER_AVX2 void small_matmul_avx2(const float* in, int64_t rows, int64_t k, const float* weight,
                                   const float* bias, int64_t n, float* out, bool accumulate) {
  constexpr int64_t kRows = 4, kOutputs = 2;
  const int64_t whole_chunks = k / 8, tail = k % 8;
  static const int32_t kMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  const __m256i tail_mask =
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable + 8 - tail));
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const float* a[kRows];
    for (int64_t r = 0; r < kRows; ++r) a[r] = in + std::min(r0 + r, rows - 1) * k;
    for (int64_t j0 = 0; j0 < n; j0 += kOutputs) {
      const float* w0 = weight + j0 * k;
      const float* w1 = weight + std::min(j0 + 1, n - 1) * k;
      __m256 acc[kRows * kOutputs];
      for (auto& v : acc) v = _mm256_setzero_ps();
      for (int64_t c = 0; c < whole_chunks; ++c) {
        const __m256 w0v = _mm256_loadu_ps(w0 + 8 * c), w1v = _mm256_loadu_ps(w1 + 8 * c);
        for (int64_t r = 0; r < kRows; ++r) {
          const __m256 av = _mm256_loadu_ps(a[r] + 8 * c);
          acc[2 * r] = _mm256_fmadd_ps(av, w0v, acc[2 * r]);
          acc[2 * r + 1] = _mm256_fmadd_ps(av, w1v, acc[2 * r + 1]);
        }
      }
      if (tail > 0) {  // masked loads: the rest of the last row may lie past the buffer
        const int64_t at = 8 * whole_chunks;
        const __m256 w0v = _mm256_maskload_ps(w0 + at, tail_mask);
        const __m256 w1v = _mm256_maskload_ps(w1 + at, tail_mask);
        for (int64_t r = 0; r < kRows; ++r) {
          const __m256 av = _mm256_maskload_ps(a[r] + at, tail_mask);
          acc[2 * r] = _mm256_fmadd_ps(av, w0v, acc[2 * r]);
          acc[2 * r + 1] = _mm256_fmadd_ps(av, w1v, acc[2 * r + 1]);
        }
      }
      float sums[kRows * kOutputs];
      _mm256_storeu_ps(sums, sums_of_8(acc));
      for (int64_t r = 0; r < std::min(kRows, rows - r0); ++r) {
        for (int64_t o = 0; o < std::min(kOutputs, n - j0); ++o) {
          const float y = sums[kOutputs * r + o] + (bias != nullptr ? bias[j0 + o] : 0.0f);
          float& target = out[(r0 + r) * n + j0 + o];
          target = accumulate ? target + y : y;
        }
      }
    }
  }
}

TILLER_AVX2 void silu_mul_avx2(float* gate, const float* up, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 sigmoid_denominator = _mm256_add_ps(one, exp8(_mm256_sub_ps(zero, g)));
    _mm256_storeu_ps(gate + i,
                     _mm256_mul_ps(_mm256_div_ps(g, sigmoid_denominator), _mm256_loadu_ps(up + i)));
  }
  silu_mul_portable(gate + i, up + i, n - i);
}
#endif

}  // namespace

void attend(Isa isa, const float* q, int64_t group, const float* keys, const float* values,
            const float* mask_bias, int64_t slots, int64_t head_dim, float scale, float* scratch,
            float* out) {
#ifdef TILLER_HAVE_AVX2_KERNELS
  if (isa == Isa::avx2_fma && head_dim == 8)  // stories260k's: q and the key rows in one register
    return attend_avx2<1>(q, group, keys, values, mask_bias, slots, head_dim, scale, scratch, out);
  if (isa == Isa::avx2_fma && head_dim % 8 == 0)
    return attend_avx2<0>(q, group, keys, values, mask_bias, slots, head_dim, scale, scratch, out);
#endif
  attend_portable(q, group, keys, values, mask_bias, slots, head_dim, scale, scratch, out);
}

bool small_matmul(Isa isa, const float* in, int64_t rows, int64_t k, const float* weight,
                  const float* bias, int64_t n, float* out, bool accumulate) {
#ifdef TILLER_HAVE_AVX2_KERNELS
  if (isa == Isa::avx2_fma) {
    small_matmul_avx2(in, rows, k, weight, bias, n, out, accumulate);
    return true;
  }
#endif
  (void)in, (void)rows, (void)k, (void)weight, (void)bias, (void)n, (void)out, (void)accumulate;
  return false;
}

void silu_mul(Isa isa, float* gate, const float* up, int64_t n) {
#ifdef TILLER_HAVE_AVX2_KERNELS
  if (isa == Isa::avx2_fma) return silu_mul_avx2(gate, up, n);
#endif
  silu_mul_portable(gate, up, n);
}

}  // namespace tiller::decode_kernels
