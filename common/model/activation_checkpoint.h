// Activation checkpointing for decoder layers: the forward keeps only the layer's input, and the
// backward recomputes the layer with autograd on (LibTorch's C++ API has no such utility).
#pragma once
#include <torch/torch.h>

namespace tiller {

struct DecoderLayerImpl;

// Runs layer(x, cos, sin, allowed) without storing its activations; gradients flow to x and to
// the layer's parameters in backward through recomputation.
torch::Tensor checkpointed_layer(DecoderLayerImpl& layer, const torch::Tensor& x,
                                 const torch::Tensor& cos, const torch::Tensor& sin,
                                 const torch::Tensor& allowed);

}  // namespace tiller
