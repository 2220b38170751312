// bf16 matrix multiplies with fp32 results on the CPU, through oneDNN's gemm_bf16bf16f32 (or,
// where LibTorch hides its oneDNN, as PyPI's wheels do, MKL's cblas_gemm_bf16bf16f32).
//
// LibTorch 1.13's bf16 matmul (oneDNN underneath) returns bf16, so a bf16-autocast model rounds
// every product to bf16 and then casts most of them back to fp32 for the ops around them (its
// fused RMSNorm, rotary, attention and loss take fp32). oneDNN's gemm_bf16bf16f32 takes bf16
// operands and writes the fp32 sums directly, at the same rate as LibTorch's bf16 matmul. It is
// looked up in the process at run time (LibTorch loads oneDNN; no header or link is needed), so
// a LibTorch without it leaves callers on their LibTorch path.
#pragma once
#include <torch/torch.h>

namespace tiller {

// Whether this CPU multiplies bf16 fast: AVX-512 BF16 or AMX (/proc/cpuinfo's flags).
bool cpu_has_fast_bf16();

// Whether bf16_matmul can run here: a CPU with fast bf16 and oneDNN's or MKL's kernel found.
bool bf16_matmul_available();

// op(a) op(b) in fp32, each product of bf16 operands summed in fp32: [m, n], where op(a) is
// [m, k] (a itself, or a.t() when transpose_a) and op(b) is [k, n] (b, or b.t()). a and b are
// contiguous 2-D bf16 CPU tensors; bf16_matmul_available() must hold.
torch::Tensor bf16_matmul(const torch::Tensor& a, bool transpose_a, const torch::Tensor& b,
                          bool transpose_b);

}  // namespace tiller
