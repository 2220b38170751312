// The attention, elementwise and tiny-matmul loops of FastDecoder's step
// (common/rollout/fast_decode.h), in two builds: portable C++ for any x86-64 (or other) CPU, and
// AVX2+FMA intrinsics chosen at run time where the CPU has them. The binary itself stays at the
// baseline instruction set.
#pragma once
#include <cstdint>

#include "common/util/vec_math.h"

namespace tiller::decode_kernels {

using Isa = vec::Isa;  // the kernel sets of common/util/vec_math.h
using vec::best_isa;
using vec::supported;

// Sum of a[i] * b[i] in 8 interleaved partial sums: the compiler turns the inner loop into vector
// operations (a single running sum is a chain of dependent adds it may not reorder), and the
// result does not depend on the instruction set.
float dot(const float* a, const float* b, int64_t n);

// Where a query head's scores go: slots rounded up to whole vectors.
constexpr int64_t kSlotBlock = 8;
inline int64_t padded_slots(int64_t slots) {
  return (slots + kSlotBlock - 1) / kSlotBlock * kSlotBlock;
}

// Softmax attention of `group` query heads that share one key/value head, over `slots` cached
// slots. q: [group, head_dim]; keys, values: [slots, head_dim] rows; mask_bias: padded_slots(slots)
// additive biases, 0 for a slot the row may see and -inf for one it may not (and for the padding);
// scratch: group * padded_slots(slots) floats; out: [group, head_dim]. Every row of scores must
// see at least one slot.
void attend(Isa isa, const float* q, int64_t group, const float* keys, const float* values,
            const float* mask_bias, int64_t slots, int64_t head_dim, float scale, float* scratch,
            float* out);

// out[rows, n] = in[rows, k] · weight[n, k]ᵀ + bias (bias may be null), or += that when
// `accumulate`, for matrices small enough that BLAS's packing and threading outweigh the work.
// Returns false, doing nothing, where this set has no such kernel (the portable one).
bool small_matmul(Isa isa, const float* in, int64_t rows, int64_t k, const float* weight,
                  const float* bias, int64_t n, float* out, bool accumulate);

// gate = silu(gate) * up, elementwise over n.
void silu_mul(Isa isa, float* gate, const float* up, int64_t n);

}  // namespace tiller::decode_kernels
