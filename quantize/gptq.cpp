#include "quantize/gptq.h"

#include <cmath>

#include "common/util/error.h"

namespace tiller {

using torch::indexing::Slice;

HessianSum::HessianSum(int64_t features)
    : sum_(torch::zeros({features, features}, torch::kDouble)) {}

void HessianSum::add(const torch::Tensor& inputs) {
  const auto x = inputs.detach().reshape({-1, sum_.size(0)}).to(torch::kFloat);
  sum_ += x.t().matmul(x).to(torch::kDouble);
  rows_ += x.size(0);
}

namespace {

// The upper Cholesky factor of H⁻¹ after damping, more damping where H is not positive definite
// enough for the factorisation in double.
torch::Tensor inverse_hessian_factor(torch::Tensor h, double damp, const std::string& name) {
  const auto mean_diagonal = h.diagonal().mean().item<double>();
  check(std::isfinite(mean_diagonal) && mean_diagonal > 0,
        name +
            ": its calibration inputs are all zero or not finite; GPTQ has nothing to weigh "
            "errors by");
  for (int attempt = 0; attempt < 6; ++attempt, damp *= 10) {
    auto damped = h.clone();
    damped.diagonal() += damp * mean_diagonal;
    auto [lower, info] = torch::linalg_cholesky_ex(damped);
    if (info.item<int64_t>() != 0) continue;
    auto [upper, info_inverse] =
        torch::linalg_cholesky_ex(torch::cholesky_inverse(lower), /*upper=*/true);
    if (info_inverse.item<int64_t>() == 0) return upper;
  }
  throw Error(name +
              ": the Hessian of its calibration inputs stays singular after damping by "
              "up to 1000x its mean diagonal");
}

}  // namespace

QuantizedMatrix gptq_quantize(const torch::Tensor& weight, const torch::Tensor& hessian,
                              const GptqOptions& o, const std::string& name) {
  torch::NoGradGuard no_grad;
  check(o.bits == 8 || o.bits == 4, name + ": bits must be 8 or 4");
  auto w = weight.detach().to(torch::kDouble).clone();
  const int64_t rows = w.size(0), cols = w.size(1);
  check(hessian.dim() == 2 && hessian.size(0) == cols && hessian.size(1) == cols,
        name + ": the Hessian does not match the weight's columns");
  const int64_t group = o.bits == 8 ? cols : o.group_size;
  check(o.bits == 8 || (group >= 2 && group % 2 == 0 && cols % group == 0),
        name + ": the group size " + std::to_string(group) + " does not divide its rows of " +
            std::to_string(cols) + " columns into even groups");

  // Inputs that are always zero: their columns cannot matter, and would make H singular.
  auto h = hessian.to(torch::kDouble).clone();
  const auto dead = h.diagonal() == 0;
  h.diagonal().masked_fill_(dead, 1.0);
  w.index_put_({Slice(), dead}, 0.0);
  const auto u = inverse_hessian_factor(h, o.damp, name);

  QuantizationCodes q;
  q.codes = torch::zeros({rows, cols}, torch::kInt);
  q.scales = torch::zeros({rows, cols / group}, torch::kDouble);
  if (o.bits == 4) q.mins = torch::zeros({rows, cols / group}, torch::kDouble);
  torch::Tensor scales, mins;
  if (o.bits == 8) group_parameters(8, w, scales, mins);  // one group: the row as it starts

  const int64_t block = (std::max(o.block, group) + group - 1) / group * group;
  for (int64_t i1 = 0; i1 < cols; i1 += block) {
    const int64_t i2 = std::min(i1 + block, cols), count = i2 - i1;
    auto w1 = w.index({Slice(), Slice(i1, i2)}).clone();
    auto errors = torch::zeros({rows, count}, torch::kDouble);
    const auto u1 = u.index({Slice(i1, i2), Slice(i1, i2)});
    for (int64_t i = 0; i < count; ++i) {
      const int64_t column = i1 + i;
      if (column % group == 0) {
        if (o.bits == 4)
          group_parameters(4, w1.index({Slice(), Slice(i, i + group)}), scales, mins);
        q.scales.select(1, column / group).copy_(scales);
        if (o.bits == 4) q.mins.select(1, column / group).copy_(mins);
      }
      const auto values = w1.index({Slice(), Slice(i, i + 1)});
      const auto codes = quantize_columns(o.bits, values, scales, mins);
      q.codes.index_put_({Slice(), Slice(column, column + 1)}, codes);
      const auto rounded = dequantize_columns(o.bits, codes, scales, mins).to(torch::kDouble);
      const auto error = (values - rounded) / u1[i][i];  // [rows, 1]
      w1.index({Slice(), Slice(i, count)}) -=
          error.matmul(u1.index({Slice(i, i + 1), Slice(i, count)}));
      errors.index_put_({Slice(), Slice(i, i + 1)}, error);
    }
    if (i2 < cols)
      w.index({Slice(), Slice(i2, cols)}) -=
          errors.matmul(u.index({Slice(i1, i2), Slice(i2, cols)}));
  }
  return pack(o.bits, group, q);
}

double relative_output_error(const torch::Tensor& weight, const torch::Tensor& dequantized,
                             const torch::Tensor& hessian) {
  const auto w = weight.to(torch::kDouble), h = hessian.to(torch::kDouble);
  const auto e = dequantized.to(torch::kDouble) - w;
  const double error = (e.matmul(h) * e).sum().item<double>();
  const double signal = (w.matmul(h) * w).sum().item<double>();
  return signal > 0 ? std::sqrt(error / signal) : 0.0;
}

}  // namespace tiller
