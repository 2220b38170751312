// AdamW over a model's parameters, without weight decay on norms and biases; its state saved
// and restored exactly.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>

namespace tiller {

struct OptimizerOptions {
  double lr = 3e-4;
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
};

// Two parameter groups: [0] decayed (matrices, embeddings), [1] not decayed (norms, biases).
std::unique_ptr<torch::optim::AdamW> make_adamw(torch::nn::Module& model,
                                                const OptimizerOptions& options);
// The same over the trainable parameters whose index (in the model's parameter order, counting
// trainable ones only) `include` accepts: one rank's shard under ZeRO-1.
std::unique_ptr<torch::optim::AdamW> make_adamw(torch::nn::Module& model,
                                                const OptimizerOptions& options,
                                                const std::function<bool(size_t)>& include);

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr);

// Serialized optimizer state (bytes), and its inverse.
std::string optimizer_state_bytes(torch::optim::Optimizer& optimizer);
void load_optimizer_state(torch::optim::Optimizer& optimizer, const std::string& bytes,
                          const std::string& where);

}  // namespace tiller
