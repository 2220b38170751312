// Row kernels for softmax-shaped loops on fp32: the largest element, and exp(x - shift) summed,
// written out or scaled, in one pass each. Two kernel sets: plain loops for any CPU, and AVX2+FMA
// chosen at run time where the CPU has them (the binary stays at the baseline instruction set).
// The decode step's kernels (common/rollout/decode_kernels.h) share these sets.
//
// exp here is the Cephes polynomial (as in Sleef's and avx_mathfun's): within 2 ulp of std::exp
// for arguments above -87.3; below that, where the true value is under the smallest normal float,
// both sets return exactly 0 (so a masked -inf gives 0). A NaN argument gives NaN, so NaN logits
// still reach the loss and the non-finite guard.
#pragma once
#include <algorithm>
#include <cstdint>

namespace tiller::vec {

enum class Isa {
  portable,  // plain loops and std::exp
  avx2_fma,  // 8-wide vectors and the polynomial exp
};

// Rows of `width` elements a chunk of the kernels' at::parallel_for loops: 2^14 elements at least,
// so that a chunk's work outweighs handing it to a thread.
inline int64_t rows_per_parallel_chunk(int64_t width) {
  return std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, width));
}

// The fastest set this CPU runs.
Isa best_isa();
bool supported(Isa isa);

// The largest of x[0..n), NaNs skipped (-inf where nothing else is there).
float max(Isa isa, const float* x, int64_t n);

// The sum of exp(x[i] - shift) (in float, in an order of its own); also writes each term to out[i]
// where out is not null (out may be x).
float exp_sum(Isa isa, const float* x, float shift, int64_t n, float* out);

// The sum of e[i] = exp(x[i] - shift), as exp_sum (the same bits), and in *weighted the sum of e[i] * (x[i] -
// shift), in one pass that writes nothing: with shift the row's maximum, a softmax's entropy is
// log(sum) - weighted / sum.
float exp_sum_weighted(Isa isa, const float* x, float shift, int64_t n, float* weighted);

// out[i] = scale * exp(x[i] - shift) (out may be x).
void scaled_exp(Isa isa, const float* x, float shift, float scale, int64_t n, float* out);

}  // namespace tiller::vec
