#include "common/model/fused_rms_norm.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "common/util/vec_math.h"

namespace tiller {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct RmsNormFunction : torch::autograd::Function<RmsNormFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& input,
                               const torch::Tensor& weight, double eps) {
    const auto x = input.contiguous();
    const int64_t width = x.size(-1), rows = x.numel() / std::max<int64_t>(1, width);
    auto y = torch::empty_like(x);
    auto rstd = torch::empty({rows}, x.options());
    const float* xp = x.data_ptr<float>();
    const float* wp = weight.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    float* rp = rstd.data_ptr<float>();
    at::parallel_for(0, rows, vec::rows_per_parallel_chunk(width), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float* xr = xp + r * width;
        double squares = 0;
        for (int64_t i = 0; i < width; ++i) squares += static_cast<double>(xr[i]) * xr[i];
        const float inv = static_cast<float>(1.0 / std::sqrt(squares / width + eps));
        rp[r] = inv;
        float* yr = yp + r * width;
        for (int64_t i = 0; i < width; ++i) yr[i] = wp[i] * (xr[i] * inv);
      }
    });
    ctx->save_for_backward({x, weight, rstd});
    return y;
  }

  // With g = dy * w and r = rstd: dx = r * g - x * r^3 * mean(g * x); dw = sum over rows dy * x *
  // r.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& weight = saved[1];
    const auto& rstd = saved[2];
    const auto dy = grads[0].contiguous();
    const int64_t width = x.size(-1), rows = x.numel() / std::max<int64_t>(1, width);
    auto dx = torch::empty_like(x);
    const float* xp = x.data_ptr<float>();
    const float* wp = weight.data_ptr<float>();
    const float* rp = rstd.data_ptr<float>();
    const float* dyp = dy.data_ptr<float>();
    float* dxp = dx.data_ptr<float>();
    at::parallel_for(0, rows, vec::rows_per_parallel_chunk(width), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float* xr = xp + r * width;
        const float* dyr = dyp + r * width;
        double gx = 0;
        for (int64_t i = 0; i < width; ++i) gx += static_cast<double>(dyr[i]) * wp[i] * xr[i];
        const float inv = rp[r];
        const float correction = static_cast<float>(gx / width) * inv * inv * inv;
        float* dxr = dxp + r * width;
        for (int64_t i = 0; i < width; ++i) dxr[i] = inv * (dyr[i] * wp[i]) - xr[i] * correction;
      }
    });
    // The weight's gradient sums over rows: one pass, in double per column.
    std::vector<double> dw_sum(static_cast<size_t>(width), 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = xp + r * width;
      const float* dyr = dyp + r * width;
      const double inv = rp[r];
      for (int64_t i = 0; i < width; ++i)
        dw_sum[static_cast<size_t>(i)] += static_cast<double>(dyr[i]) * xr[i] * inv;
    }
    auto dw = torch::empty_like(weight);
    float* dwp = dw.data_ptr<float>();
    for (int64_t i = 0; i < width; ++i) dwp[i] = static_cast<float>(dw_sum[static_cast<size_t>(i)]);
    return {dx.view(grads[0].sizes()), dw, torch::Tensor()};
  }
};

bool fusable(const torch::Tensor& x, const torch::Tensor& weight) {
  return x.device().is_cpu() && weight.device().is_cpu() && x.scalar_type() == torch::kFloat &&
         weight.scalar_type() == torch::kFloat && weight.dim() == 1 && weight.is_contiguous() &&
         x.dim() >= 1 && x.size(-1) == weight.size(0) && x.numel() > 0;
}

}  // namespace

torch::Tensor rms_norm_reference(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  auto xf = x.to(torch::kFloat);
  auto normed = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  if (!fusable(x, weight)) return rms_norm_reference(x, weight, eps);
  return RmsNormFunction::apply(x, weight, eps);
}

}  // namespace tiller
