// GPTQ: quantising a linear layer's weight column by column, each column's rounding error spread
// over the columns not yet quantised through the inverse Hessian of the layer's inputs, so that
// the layer's outputs on those inputs change least (Frantar, Ashkboos, Hoefler, Alistarh 2022,
// "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers",
// Algorithm 1, with its lazy block updates and Cholesky form of the inverse Hessian). Groups take
// their scale and minimum from the columns as they are when the group starts, as the authors'
// code does without static groups; columns are taken in order (no activation ordering).
#pragma once
#include <torch/torch.h>

#include <string>

#include "common/model/quantized.h"

namespace tiller {

struct GptqOptions {
  int bits = 4;
  int64_t group_size = 128;  // 4 bits; 8 bits quantise each row whole
  double damp = 0.01;        // added to the Hessian's diagonal, as a fraction of its mean
  int64_t block = 128;       // columns updated lazily together (rounded up to whole groups)
};

// The sum of x xᵀ over a layer's input rows x: what gptq_quantize minimises the error on.
class HessianSum {
 public:
  explicit HessianSum(int64_t features);
  // inputs: [..., features], any float dtype.
  void add(const torch::Tensor& inputs);
  const torch::Tensor& sum() const { return sum_; }  // [features, features] double
  int64_t rows() const { return rows_; }

 private:
  torch::Tensor sum_;
  int64_t rows_ = 0;
};

// weight: [rows, cols] float; hessian: [cols, cols], the inputs' HessianSum. `name` is the
// weight's, for errors.
QuantizedMatrix gptq_quantize(const torch::Tensor& weight, const torch::Tensor& hessian,
                              const GptqOptions& options, const std::string& name);

// How much a quantised weight changes the layer's outputs on the calibration inputs, relative to
// the outputs: sqrt(tr(E H Eᵀ) / tr(W H Wᵀ)) with E = dequantized - weight.
double relative_output_error(const torch::Tensor& weight, const torch::Tensor& dequantized,
                             const torch::Tensor& hessian);

}  // namespace tiller
