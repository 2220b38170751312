// Fused projections: several linear layers applied to one input (q/k/v, gate/up) as one matrix
// multiply forward and two backward, while each layer keeps its own parameters, with Hugging
// Face's names, for checkpoints, optimizers and tensor-parallel sharding.
//
// fuse_parameter_storage() moves the layers' weights (and biases) into one buffer, each a view of
// its rows; the parameters stay the same autograd leaves. project() multiplies by the whole
// buffer when the parts still lie back to back in it, and falls back to one linear per layer when
// they do not (after a set_data that replaced one, such as a cast of the model to bf16), under
// autocast (which chooses each matmul's dtype itself) and off the CPU. Both paths give the same
// outputs and gradients within float rounding (tests/fused_linear_test.cpp). Frozen weights
// stored narrower than the input (a LoRA's bf16 base, common/model/lora.h) are widened to the
// input's dtype for each multiply, forward and backward, outside autocast.
//
// Under bf16 autocast on a CPU with fast bf16 (common/model/bf16_matmul.h), project() multiplies
// bf16 operands as autocast would, but sums and returns in fp32, forward and backward: the layers
// around it (fused RMSNorm, rotary, attention, the loss) then keep their fp32 kernels instead of
// LibTorch's bf16 formulas and the casts between them, and no product is rounded to bf16.
#pragma once
#include <torch/torch.h>

#include <vector>

namespace tiller {

// Moves the tensors' data into one contiguous buffer in order, each parameter keeping its shape
// and values. The tensors must be contiguous and share a dtype and device.
void fuse_parameter_storage(const std::vector<torch::Tensor>& parts);

// Whether the tensors lie back to back, in order, in one buffer (what project() needs to fuse).
bool stored_back_to_back(const std::vector<torch::Tensor>& parts);

// input: [..., in]; weights[i]: [out_i, in]; biases: empty, or one per weight.
// Returns [..., out_i] for each layer.
std::vector<torch::Tensor> project(const torch::Tensor& input,
                                   const std::vector<torch::Tensor>& weights,
                                   const std::vector<torch::Tensor>& biases);

// The same products as one tensor, [..., sum of out_i], the layers' outputs side by side in order
// (what project() splits): a consumer of all of them, such as SwiGLU on gate and up, then takes
// one tensor and hands back one gradient, not one per layer to be joined again.
torch::Tensor project_joined(const torch::Tensor& input, const std::vector<torch::Tensor>& weights,
                             const std::vector<torch::Tensor>& biases);

// One linear layer without bias, input [..., in] x weight [out, in] -> [..., out], by the same
// path: its weight gradient comes back laid out like the weight. LibTorch's linear hands back the
// transpose of a contiguous matrix instead, which AccumulateGrad then copies across strides, and
// a tied embedding adds to its own gradient element by element across strides (at a 32000-token
// vocabulary that add alone was 6% of a llama-124m training step).
torch::Tensor project(const torch::Tensor& input, const torch::Tensor& weight);

}  // namespace tiller
