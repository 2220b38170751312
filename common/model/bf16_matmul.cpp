#include "common/model/bf16_matmul.h"

#include <ATen/record_function.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <limits>
#include <string>

#include "common/util/error.h"

namespace tiller {

namespace {

// oneDNN's C API (dnnl.h, oneDNN 1.x to 3.x): row-major C = alpha op(A) op(B) + beta C, bf16 A and
// B as uint16_t, fp32 C; returns dnnl_success (0) or an error status.
using DnnlGemm = int (*)(char transa, char transb, int64_t m, int64_t n, int64_t k, float alpha,
                         const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb, float beta,
                         float* c, int64_t ldc);
// MKL's CBLAS (mkl_cblas.h, LP64: MKL_INT is int): the same product, no status.
using MklGemm = void (*)(int layout, int transa, int transb, int m, int n, int k, float alpha,
                         const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta,
                         float* c, int ldc);
constexpr int kCblasRowMajor = 101, kCblasNoTrans = 111, kCblasTrans = 112;

// The kernel LibTorch brought into the process: Debian's 1.13 exports oneDNN's; PyPI's wheels
// hide their oneDNN but export the MKL they link statically.
struct Bf16Gemm {
  DnnlGemm dnnl = nullptr;
  MklGemm mkl = nullptr;
};

const Bf16Gemm& find_gemm() {
  static const Bf16Gemm gemm = [] {
    Bf16Gemm g;
    g.dnnl = reinterpret_cast<DnnlGemm>(dlsym(RTLD_DEFAULT, "dnnl_gemm_bf16bf16f32"));
    if (!g.dnnl) g.mkl = reinterpret_cast<MklGemm>(dlsym(RTLD_DEFAULT, "cblas_gemm_bf16bf16f32"));
    return g;
  }();
  return gemm;
}

}  // namespace

bool cpu_has_fast_bf16() {
  static const bool has = [] {
    std::ifstream cpuinfo("/proc/cpuinfo");
    std::string line;
    while (std::getline(cpuinfo, line)) {
      if (line.rfind("flags", 0) != 0) continue;
      return line.find(" avx512_bf16") != std::string::npos ||
             line.find(" amx_bf16") != std::string::npos;
    }
    return false;
  }();
  return has;
}

bool bf16_matmul_available() {
  return cpu_has_fast_bf16() && (find_gemm().dnnl != nullptr || find_gemm().mkl != nullptr);
}

torch::Tensor bf16_matmul(const torch::Tensor& a, bool transpose_a, const torch::Tensor& b,
                          bool transpose_b) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.scalar_type() == torch::kBFloat16 &&
                  b.scalar_type() == torch::kBFloat16 && a.is_contiguous() && b.is_contiguous() &&
                  a.device().is_cpu() && b.device().is_cpu(),
              "bf16_matmul: contiguous 2-D bf16 CPU matrices expected, got ", a.sizes(), " ",
              a.scalar_type(), " and ", b.sizes(), " ", b.scalar_type());
  const int64_t m = transpose_a ? a.size(1) : a.size(0);
  const int64_t k = transpose_a ? a.size(0) : a.size(1);
  const int64_t n = transpose_b ? b.size(0) : b.size(1);
  TORCH_CHECK((transpose_b ? b.size(1) : b.size(0)) == k,
              "bf16_matmul: inner sizes differ: ", a.sizes(), transpose_a ? "^T" : "", " x ",
              b.sizes(), transpose_b ? "^T" : "");
  RECORD_FUNCTION("tiller::bf16_matmul", std::vector<c10::IValue>());  // named in profiles
  auto c = torch::empty({m, n}, a.options().dtype(torch::kFloat));
  if (m == 0 || n == 0) return c;
  if (k == 0) return c.zero_();
  const auto* a_data = reinterpret_cast<const uint16_t*>(a.data_ptr<at::BFloat16>());
  const auto* b_data = reinterpret_cast<const uint16_t*>(b.data_ptr<at::BFloat16>());
  const Bf16Gemm& gemm = find_gemm();
  if (gemm.dnnl) {
    const int status =
        gemm.dnnl(transpose_a ? 'T' : 'N', transpose_b ? 'T' : 'N', m, n, k, 1.0f, a_data,
                  a.size(1), b_data, b.size(1), 0.0f, c.data_ptr<float>(), n);
    TORCH_CHECK(status == 0, "bf16_matmul: dnnl_gemm_bf16bf16f32 failed with status ", status, " (",
                m, " x ", k, " x ", n, ")");
    return c;
  }
  TORCH_CHECK(gemm.mkl != nullptr,
              "bf16_matmul: neither oneDNN's dnnl_gemm_bf16bf16f32 nor MKL's "
              "cblas_gemm_bf16bf16f32 is loaded");
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  TORCH_CHECK(std::max({m, n, k, a.size(1), b.size(1)}) <= kIntMax,
              "bf16_matmul: MKL's 32-bit interface cannot take ", m, " x ", k, " x ", n);
  const auto as_int = [](int64_t v) { return static_cast<int>(v); };
  gemm.mkl(kCblasRowMajor, transpose_a ? kCblasTrans : kCblasNoTrans,
           transpose_b ? kCblasTrans : kCblasNoTrans, as_int(m), as_int(n), as_int(k), 1.0f, a_data,
           as_int(a.size(1)), b_data, as_int(b.size(1)), 0.0f, c.data_ptr<float>(), as_int(n));
  return c;
}

}  // namespace tiller
