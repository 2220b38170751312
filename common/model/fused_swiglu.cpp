#include "common/model/fused_swiglu.h"

#include <ATen/Parallel.h>

#include <cmath>

#include "common/util/vec_avx2.h"
#include "common/util/vec_math.h"

namespace tiller {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// One row: gate g, up u (width each), out y = g sigmoid(g) u.
void forward_portable(const float* g, const float* u, float* y, int64_t width) {
  for (int64_t i = 0; i < width; ++i) y[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

// One row's gradients from dy: with s = sigmoid(g), dg = dy u s (1 + g (1 - s)), du = dy g s.
void backward_portable(const float* g, const float* u, const float* dy, float* dg, float* du,
                       int64_t width) {
  for (int64_t i = 0; i < width; ++i) {
    const float s = 1.0f / (1.0f + std::exp(-g[i]));
    dg[i] = dy[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
    du[i] = dy[i] * g[i] * s;
  }
}

#ifdef TILLER_HAVE_AVX2_KERNELS
using vec::avx2::exp8;

TILLER_AVX2 __m256 sigmoid8(__m256 g) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
}

TILLER_AVX2 void forward_avx2(const float* g, const float* u, float* y, int64_t width) {
  int64_t i = 0;
  for (; i + 8 <= width; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i);
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(gv, sigmoid8(gv)), _mm256_loadu_ps(u + i)));
  }
  forward_portable(g + i, u + i, y + i, width - i);
}

TILLER_AVX2 void backward_avx2(const float* g, const float* u, const float* dy, float* dg,
                               float* du, int64_t width) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= width; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i), uv = _mm256_loadu_ps(u + i);
    const __m256 dyv = _mm256_loadu_ps(dy + i);
    const __m256 s = sigmoid8(gv);
    const __m256 slope = _mm256_mul_ps(s, _mm256_fmadd_ps(gv, _mm256_sub_ps(one, s), one));
    _mm256_storeu_ps(dg + i, _mm256_mul_ps(_mm256_mul_ps(dyv, uv), slope));
    _mm256_storeu_ps(du + i, _mm256_mul_ps(dyv, _mm256_mul_ps(gv, s)));
  }
  backward_portable(g + i, u + i, dy + i, dg + i, du + i, width - i);
}
#endif

bool use_avx2() {
#ifdef TILLER_HAVE_AVX2_KERNELS
  return vec::avx2::cpu_has_avx2_fma();
#else
  return false;
#endif
}

struct SwigluFunction : torch::autograd::Function<SwigluFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gate_up) {
    const auto x = gate_up.contiguous();
    const int64_t width = x.size(-1) / 2, rows = x.numel() / std::max<int64_t>(1, 2 * width);
    auto sizes = x.sizes().vec();
    sizes.back() = width;
    auto y = torch::empty(sizes, x.options());
    const float* xp = x.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    const bool avx2 = use_avx2();
    at::parallel_for(0, rows, vec::rows_per_parallel_chunk(width), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float* g = xp + r * 2 * width;
#ifdef TILLER_HAVE_AVX2_KERNELS
        if (avx2) {
          forward_avx2(g, g + width, yp + r * width, width);
          continue;
        }
#endif
        forward_portable(g, g + width, yp + r * width, width);
      }
    });
    (void)avx2;
    ctx->save_for_backward({x});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto x = ctx->get_saved_variables()[0];
    const auto dy = grads[0].contiguous();
    const int64_t width = x.size(-1) / 2, rows = x.numel() / std::max<int64_t>(1, 2 * width);
    auto dx = torch::empty_like(x);
    const float* xp = x.data_ptr<float>();
    const float* dyp = dy.data_ptr<float>();
    float* dxp = dx.data_ptr<float>();
    const bool avx2 = use_avx2();
    at::parallel_for(0, rows, vec::rows_per_parallel_chunk(width), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float* g = xp + r * 2 * width;
        float* dg = dxp + r * 2 * width;
#ifdef TILLER_HAVE_AVX2_KERNELS
        if (avx2) {
          backward_avx2(g, g + width, dyp + r * width, dg, dg + width, width);
          continue;
        }
#endif
        backward_portable(g, g + width, dyp + r * width, dg, dg + width, width);
      }
    });
    (void)avx2;
    return {dx};
  }
};

bool fusable(const torch::Tensor& gate_up) {
  return gate_up.device().is_cpu() && gate_up.scalar_type() == torch::kFloat &&
         gate_up.dim() >= 1 && gate_up.size(-1) % 2 == 0 && gate_up.numel() > 0;
}

}  // namespace

torch::Tensor swiglu_reference(const torch::Tensor& gate_up) {
  const auto parts = gate_up.chunk(2, -1);
  return torch::nn::functional::silu(parts[0]) * parts[1];
}

torch::Tensor swiglu(const torch::Tensor& gate_up) {
  TORCH_CHECK(gate_up.dim() >= 1 && gate_up.size(-1) % 2 == 0,
              "swiglu: the last dimension holds gate and up side by side and must be even, got ",
              gate_up.sizes());
  if (!fusable(gate_up)) return swiglu_reference(gate_up);
  return SwigluFunction::apply(gate_up);
}

}  // namespace tiller
