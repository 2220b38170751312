// The AVX2+FMA building blocks shared by the hand-written kernels (common/util/vec_math.cpp,
// common/rollout/decode_kernels.cpp): an 8-wide exp and horizontal sum and max. Each function
// carries target("avx2,fma") while the binary stays at the baseline instruction set, so only call
// them from code that has checked the CPU (cpu_has_avx2_fma()). TILLER_HAVE_AVX2_KERNELS says
// whether this compiler and target have them at all.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define TILLER_HAVE_AVX2_KERNELS 1
#define TILLER_AVX2 __attribute__((target("avx2,fma")))

namespace tiller::vec::avx2 {

inline bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

// ln(FLT_MIN): below it exp is subnormal, and exp8 returns exactly 0 (so exp(-inf) is 0).
constexpr float kLowestExponent = -87.3365478515625f;

// exp(x) within 2 ulp: Cephes' expf, exp(x) = 2^n exp(r), r = x - n ln2 in two parts (the first
// exact in few bits, so n * part1 is exact), exp(r) by a degree-5 polynomial, 2^n through the
// exponent bits. 0 below ln(FLT_MIN), inf from 88.38 up; a NaN stays NaN.
TILLER_AVX2 inline __m256 exp8(__m256 x) {
  const __m256 lowest = _mm256_set1_ps(kLowestExponent);
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

TILLER_AVX2 inline float sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

TILLER_AVX2 inline float max8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

}  // namespace tiller::vec::avx2

#endif
