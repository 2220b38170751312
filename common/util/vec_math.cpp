#include "common/util/vec_math.h"

#include <atomic>
#include <cmath>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define TILLER_HAVE_AVX2_KERNELS 1
#endif

namespace tiller::vec {

namespace {

std::atomic<bool> forced_portable{false};

// ln(FLT_MIN): below it exp is subnormal, and both kernel sets return 0.
constexpr float kLowestExponent = -87.3365478515625f;

float exp_flushed(float x) { return x < kLowestExponent ? 0.0f : std::exp(x); }

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

void scaled_exp_portable(const float* x, float shift, float scale, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = scale * exp_flushed(x[i] - shift);
}

#ifdef TILLER_HAVE_AVX2_KERNELS

#define TILLER_AVX2 __attribute__((target("avx2,fma")))

// Cephes' expf: exp(x) = 2^n exp(r), r = x - n ln2 in two parts, exp(r) by a degree-5 polynomial.
TILLER_AVX2 inline __m256 exp8(__m256 x) {
  const __m256 lowest = _mm256_set1_ps(kLowestExponent);  // 2^n stays normal
  const __m256 highest = _mm256_set1_ps(88.3762626647949f);
  const __m256 underflows = _mm256_cmp_ps(x, lowest, _CMP_LT_OQ);  // false for NaN
  // max/min return their second operand when either is NaN: x second keeps a NaN a NaN.
  x = _mm256_min_ps(highest, _mm256_max_ps(lowest, x));
  const __m256 n = _mm256_floor_ps(
      _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i exponent =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(exponent));
  return _mm256_andnot_ps(underflows, y);
}

TILLER_AVX2 inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

TILLER_AVX2 float max_avx2(const float* x, int64_t n) {
  __m256 best = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) best = _mm256_max_ps(_mm256_loadu_ps(x + i), best);  // skips NaN
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, best);
  float result = max_portable(lanes, 8);
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
  return horizontal_sum(_mm256_add_ps(sum0, sum1)) +
         exp_sum_portable(x + i, shift, n - i, out == nullptr ? nullptr : out + i);
}

TILLER_AVX2 void scaled_exp_avx2(const float* x, float shift, float scale, int64_t n, float* out) {
  const __m256 s = _mm256_set1_ps(shift), k = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(k, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s))));
  scaled_exp_portable(x + i, shift, scale, n - i, out + i);
}

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

#endif

}  // namespace

bool using_avx2() {
#ifdef TILLER_HAVE_AVX2_KERNELS
  return cpu_has_avx2() && !forced_portable.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

void force_portable_for_test(bool portable) {
  forced_portable.store(portable);
}

float max(const float* x, int64_t n) {
#ifdef TILLER_HAVE_AVX2_KERNELS
  if (using_avx2()) return max_avx2(x, n);
#endif
  return max_portable(x, n);
}

float exp_sum(const float* x, float shift, int64_t n, float* out) {
#ifdef TILLER_HAVE_AVX2_KERNELS
  if (using_avx2()) return exp_sum_avx2(x, shift, n, out);
#endif
  return exp_sum_portable(x, shift, n, out);
}

void scaled_exp(const float* x, float shift, float scale, int64_t n, float* out) {
#ifdef TILLER_HAVE_AVX2_KERNELS
  if (using_avx2()) return scaled_exp_avx2(x, shift, scale, n, out);
#endif
  scaled_exp_portable(x, shift, scale, n, out);
}

}  // namespace tiller::vec
