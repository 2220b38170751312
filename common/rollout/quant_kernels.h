// Matrix products with weight-only quantised matrices (common/model/quantized.h), dequantising
// on the fly: the fast decode step's int8 and int4 projections. Three kernel sets, chosen at run
// time as the other decode kernels are: plain loops for any CPU, AVX2+FMA, and AVX-512 (F, BW);
// the binary itself stays at the baseline instruction set.
//
// One row of input (batch-1 decoding) reads each code once and multiplies it in registers: the
// step reads a quarter (int8) or about a seventh (int4, groups of 128) of fp32's bytes. Several
// rows dequantise one weight row at a time into a buffer that stays in L1 and take a dot product
// per input row; the fast decode step leaves 4 rows and more to sgemm on the dequantised fp32
// parameters instead (FastDecoder::kPackedRowsLimit).
#pragma once
#include <cstdint>

#include "common/model/quantized.h"

namespace tiller::quant_kernels {

enum class Isa { portable, avx2, avx512 };

Isa best_isa();
bool supported(Isa isa);
const char* isa_name(Isa isa);

// out[rows, m.rows] = in[rows, m.cols] · dequantize(m)ᵀ + bias (bias may be null), or += that
// when `accumulate`. Splits the output columns over LibTorch's intra-op threads when the matrix
// is large enough to pay for it.
void matmul(Isa isa, const QuantizedMatrix& m, const float* in, int64_t rows, const float* bias,
            float* out, bool accumulate);

}  // namespace tiller::quant_kernels
