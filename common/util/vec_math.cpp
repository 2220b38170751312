#include "common/util/vec_math.h"

#include <cmath>
#include <limits>

#include "common/util/vec_avx2.h"

namespace tiller::vec {

namespace {

#ifdef TILLER_HAVE_AVX2_KERNELS
using avx2::kLowestExponent;
#else
constexpr float kLowestExponent = -87.3365478515625f;  // ln(FLT_MIN), as the AVX2 exp's
#endif

float exp_flushed(float x) {
  return x < kLowestExponent ? 0.0f : std::exp(x);
}

float max_portable(const float* x, int64_t n) {
  float best = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) best = best < x[i] ? x[i] : best;  // a NaN compares false
  return best;
}

float exp_sum_portable(const float* x, float shift, int64_t n, float* out) {
  float sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float e = exp_flushed(x[i] - shift);
    if (out != nullptr) out[i] = e;
    sum += e;
  }
  return sum;
}

float exp_sum_weighted_portable(const float* x, float shift, int64_t n, float* weighted) {
  float sum = 0, dot = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float d = x[i] - shift, e = exp_flushed(d);
    sum += e;
    dot += e == 0.0f ? 0.0f : e * d;  // a term that underflowed adds nothing, even at -inf
  }
  *weighted = dot;
  return sum;
}

void scaled_exp_portable(const float* x, float shift, float scale, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = scale * exp_flushed(x[i] - shift);
}

#ifdef TILLER_HAVE_AVX2_KERNELS

using avx2::exp8;
using avx2::max8;
using avx2::sum8;

TILLER_AVX2 float max_avx2(const float* x, int64_t n) {
  __m256 best = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) best = _mm256_max_ps(_mm256_loadu_ps(x + i), best);  // skips NaN
  const float result = max8(best);
  const float tail = max_portable(x + i, n - i);
  return result < tail ? tail : result;
}

TILLER_AVX2 float exp_sum_avx2(const float* x, float shift, int64_t n, float* out) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256 sum0 = _mm256_setzero_ps(), sum1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
    const __m256 e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), s));
    if (out != nullptr) {
      _mm256_storeu_ps(out + i, e0);
      _mm256_storeu_ps(out + i + 8, e1);
    }
    sum0 = _mm256_add_ps(sum0, e0);
    sum1 = _mm256_add_ps(sum1, e1);
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
    if (out != nullptr) _mm256_storeu_ps(out + i, e);
    sum0 = _mm256_add_ps(sum0, e);
  }
  return sum8(_mm256_add_ps(sum0, sum1)) +
         exp_sum_portable(x + i, shift, n - i, out == nullptr ? nullptr : out + i);
}

// e * d, and 0 where e underflowed to 0: d may be -inf there, and 0 * -inf is NaN.
TILLER_AVX2 inline __m256 weighted_term(__m256 e, __m256 d) {
  const __m256 zero = _mm256_setzero_ps();
  return _mm256_blendv_ps(_mm256_mul_ps(e, d), zero, _mm256_cmp_ps(e, zero, _CMP_EQ_OQ));
}

TILLER_AVX2 float exp_sum_weighted_avx2(const float* x, float shift, int64_t n, float* weighted) {
  const __m256 s = _mm256_set1_ps(shift);
  // The sum in exactly exp_sum_avx2's order, so that log-probabilities computed with the entropy
  // and without it are the same bits (PPO's first ratio is exactly 1).
  __m256 sum0 = _mm256_setzero_ps(), sum1 = _mm256_setzero_ps(), dot = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + i), s);
    const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 8), s);
    const __m256 e0 = exp8(d0), e1 = exp8(d1);
    sum0 = _mm256_add_ps(sum0, e0);
    sum1 = _mm256_add_ps(sum1, e1);
    dot = _mm256_add_ps(dot, _mm256_add_ps(weighted_term(e0, d0), weighted_term(e1, d1)));
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), s);
    const __m256 e = exp8(d);
    sum0 = _mm256_add_ps(sum0, e);
    dot = _mm256_add_ps(dot, weighted_term(e, d));
  }
  float tail_dot = 0;
  const float tail = exp_sum_weighted_portable(x + i, shift, n - i, &tail_dot);
  *weighted = sum8(dot) + tail_dot;
  return sum8(_mm256_add_ps(sum0, sum1)) + tail;
}

TILLER_AVX2 void scaled_exp_avx2(const float* x, float shift, float scale, int64_t n, float* out) {
  const __m256 s = _mm256_set1_ps(shift), k = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(k, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s))));
  scaled_exp_portable(x + i, shift, scale, n - i, out + i);
}

#endif

}  // namespace

bool supported(Isa isa) {
  switch (isa) {
    case Isa::portable:
      return true;
    case Isa::avx2_fma:
#ifdef TILLER_HAVE_AVX2_KERNELS
      return avx2::cpu_has_avx2_fma();
#else
      return false;
#endif
  }
  return false;
}

Isa best_isa() {
  return supported(Isa::avx2_fma) ? Isa::avx2_fma : Isa::portable;
}

float max(Isa isa, const float* x, int64_t n) {
#ifdef TILLER_HAVE_AVX2_KERNELS
  if (isa == Isa::avx2_fma) return max_avx2(x, n);
#endif
  (void)isa;
  return max_portable(x, n);
}

float exp_sum(Isa isa, const float* x, float shift, int64_t n, float* out) {
#ifdef TILLER_HAVE_AVX2_KERNELS
  if (isa == Isa::avx2_fma) return exp_sum_avx2(x, shift, n, out);
#endif
  (void)isa;
  return exp_sum_portable(x, shift, n, out);
}

float exp_sum_weighted(Isa isa, const float* x, float shift, int64_t n, float* weighted) {
#ifdef TILLER_HAVE_AVX2_KERNELS
  if (isa == Isa::avx2_fma) return exp_sum_weighted_avx2(x, shift, n, weighted);
#endif
  (void)isa;
  return exp_sum_weighted_portable(x, shift, n, weighted);
}

void scaled_exp(Isa isa, const float* x, float shift, float scale, int64_t n, float* out) {
#ifdef TILLER_HAVE_AVX2_KERNELS
  if (isa == Isa::avx2_fma) return scaled_exp_avx2(x, shift, scale, n, out);
#endif
  (void)isa;
  scaled_exp_portable(x, shift, scale, n, out);
}

}  // namespace tiller::vec
