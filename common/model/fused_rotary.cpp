#include "common/model/fused_rotary.h"

#include <ATen/Parallel.h>

#include "common/util/vec_math.h"

namespace tiller {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Rotates every head_dim vector of `in` (strided [B, H, T, D], last stride 1) into the contiguous
// `out`: forward (transpose = false) out = in * cos + rotate_half(in) * sin; backward (transpose =
// true, the adjoint) out = in * cos + rotate_half^T(in * sin), rotate_half^T(z) = (z[half:],
// -z[:half]).
void rotate(const torch::Tensor& in, const torch::Tensor& cos, const torch::Tensor& sin,
            bool transpose, torch::Tensor& out) {
  const int64_t batch = in.size(0), heads = in.size(1), length = in.size(2), dim = in.size(3);
  const int64_t half = dim / 2;
  const float* ip = in.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t sb = in.stride(0), sh = in.stride(1), st = in.stride(2);
  at::parallel_for(0, batch * heads, vec::rows_per_parallel_chunk(length * dim),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t bh = begin; bh < end; ++bh) {
                       const int64_t b = bh / heads, h = bh % heads;
                       for (int64_t t = 0; t < length; ++t) {
                         const float* x = ip + b * sb + h * sh + t * st;
                         const float* c = cp + (b * length + t) * dim;
                         const float* s = sp + (b * length + t) * dim;
                         float* y = op + ((b * heads + h) * length + t) * dim;
                         if (!transpose) {
                           for (int64_t i = 0; i < half; ++i)
                             y[i] = x[i] * c[i] - x[i + half] * s[i];
                           for (int64_t i = half; i < dim; ++i)
                             y[i] = x[i] * c[i] + x[i - half] * s[i];
                         } else {
                           for (int64_t i = 0; i < half; ++i)
                             y[i] = x[i] * c[i] + x[i + half] * s[i + half];
                           for (int64_t i = half; i < dim; ++i)
                             y[i] = x[i] * c[i] - x[i - half] * s[i - half];
                         }
                       }
                     }
                   });
}

struct RotaryFunction : torch::autograd::Function<RotaryFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& cos, const torch::Tensor& sin) {
    auto y = torch::empty(x.sizes(), x.options());
    rotate(x, cos, sin, /*transpose=*/false, y);
    ctx->save_for_backward({cos, sin});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto dy = grads[0];
    if (dy.stride(-1) != 1) dy = dy.contiguous();
    auto dx = torch::empty(dy.sizes(), dy.options());
    rotate(dy, saved[0], saved[1], /*transpose=*/true, dx);
    return {dx, torch::Tensor(), torch::Tensor()};
  }
};

bool fusable(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const auto is_table = [&](const torch::Tensor& t) {
    return t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.dim() == 4 &&
           t.is_contiguous() && t.size(0) == x.size(0) && t.size(1) == 1 &&
           t.size(2) == x.size(2) && t.size(3) == x.size(3) && !t.requires_grad();
  };
  return x.device().is_cpu() && x.scalar_type() == torch::kFloat && x.dim() == 4 &&
         x.size(3) % 2 == 0 && x.stride(3) == 1 && x.numel() > 0 && is_table(cos) && is_table(sin);
}

}  // namespace

torch::Tensor apply_rotary_reference(const torch::Tensor& x, const torch::Tensor& cos,
                                     const torch::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  const auto rotated = torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos.to(x.scalar_type()) + rotated * sin.to(x.scalar_type());
}

torch::Tensor apply_rotary(const torch::Tensor& x, const torch::Tensor& cos,
                           const torch::Tensor& sin) {
  if (!fusable(x, cos, sin)) return apply_rotary_reference(x, cos, sin);
  return RotaryFunction::apply(x, cos, sin);
}

}  // namespace tiller
