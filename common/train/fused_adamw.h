// torch::optim::AdamW with its update done in one pass over each parameter.
//
// LibTorch's AdamW runs eight tensor operations per parameter and step (two of them allocating),
// each a pass over memory: the update of a 124M-parameter model reads and writes ~88 bytes per
// parameter where one pass needs 28, and the small models of RLHF runs pay the per-operator
// overhead of every one of them (~40 parameters x 8 operations per model and step). FusedAdamW
// computes the same formula element by element:
//   p *= 1 - lr*wd;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2
//   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
// in fp32 like LibTorch (results agree to rounding, not bit for bit: FMA and a reciprocal where
// LibTorch divides), with AVX2+FMA where the CPU has it, split over the intra-op threads by
// elements (so the thread count does not change the result).
//
// Its state is AdamW's own (the same AdamWParamState per parameter), so checkpoints are written
// and read as before and a plain AdamW can continue from them. Parameters or gradients that are
// not dense contiguous fp32 CPU tensors (CUDA, bf16), and amsgrad, fall back to AdamW::step.
#pragma once
#include <torch/torch.h>

#include <cstdint>

namespace tiller {

class FusedAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  torch::Tensor step(LossClosure closure = nullptr) override;
  // Whether the last step() took the one-pass update (false: it fell back to AdamW::step).
  bool last_step_fused() const { return last_step_fused_; }

 private:
  bool last_step_fused_ = false;
};

// The per-element update of n parameters (exposed for tests): weight_decay_factor = 1 - lr*wd,
// step_size = lr / (1 - b1^t), inv_bias2_sqrt = 1 / sqrt(1 - b2^t).
struct AdamWCoefficients {
  float beta1, one_minus_beta1, beta2, one_minus_beta2;
  float weight_decay_factor, step_size, inv_bias2_sqrt, eps;
  bool decay;  // whether weight_decay_factor applies (weight decay != 0)
};
enum class AdamWKernels { portable, avx2 };
AdamWKernels best_adamw_kernels();
void adamw_update(float* p, const float* g, float* m, float* v, int64_t n,
                  const AdamWCoefficients& c, AdamWKernels kernels = best_adamw_kernels());

}  // namespace tiller
