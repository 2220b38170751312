// Row kernels for softmax-shaped loops on fp32: the largest element, and exp(x - shift) summed,
// written out or scaled, in one pass each. AVX2+FMA where the CPU has them (chosen at run time),
// plain loops elsewhere.
//
// exp here is the Cephes polynomial (as in Sleef's and avx_mathfun's): within 2 ulp of std::exp
// for arguments above -87.3; below that, where the true value is under the smallest normal float,
// it returns exactly 0 (so a masked -inf gives 0). A NaN argument gives NaN, so NaN logits still
// reach the loss and the non-finite guard.
#pragma once
#include <cstdint>

namespace tiller::vec {

// The largest of x[0..n), NaNs skipped (-inf where nothing else is there).
float max(const float* x, int64_t n);

// The sum of exp(x[i] - shift); also writes each term to out[i] where out is not null (out may
// be x).
float exp_sum(const float* x, float shift, int64_t n, float* out);

// out[i] = scale * exp(x[i] - shift) (out may be x).
void scaled_exp(const float* x, float shift, float scale, int64_t n, float* out);

// True where the AVX2 kernels run (for tests that compare both).
bool using_avx2();
// Forces the plain loops (true) or the best kernels (false): for tests only.
void force_portable_for_test(bool portable);

}  // namespace tiller::vec
