// The computation both sides of the tensor-parallel model test run: the probe on each of the
// ranks of a real job, the test itself on one process. A tiny model built from a fixed seed (full
// weights, the same everywhere), sharded over `tp`, loaded from a differently seeded model's full
// weights (so loading must slice them), then the forward and backward of an LM loss on a fixed
// batch. The results are full-size tensors: "<variant>.logits", "<variant>.grad.<HF name>" and
// "<variant>.weight.<HF name>", for an untied and a tied-embedding model.
#pragma once
#include <torch/torch.h>

#include <map>
#include <string>

#include "common/dist/process_group.h"
#include "common/io/hf_dir.h"
#include "common/model/transformer.h"

namespace tiller::test {

inline ModelConfig tensor_parallel_probe_config(int64_t heads, bool tied) {
  ModelConfig c;
  c.vocab_size = 64;
  c.hidden_size = 48;
  c.intermediate_size = 40;
  c.num_hidden_layers = 2;
  c.num_attention_heads = heads;
  c.num_key_value_heads = heads == 4 ? 2 : heads;  // grouped-query attention at the default
  c.max_position_embeddings = 32;
  c.attention_bias = true;
  c.tie_word_embeddings = tied;
  return c;
}

inline std::map<std::string, torch::Tensor> tensor_parallel_probe(const dist::Group& tp,
                                                                  int64_t heads = 4) {
  std::map<std::string, torch::Tensor> out;
  for (const bool tied : {false, true}) {
    const std::string variant = tied ? "tied" : "untied";
    const ModelConfig config = tensor_parallel_probe_config(heads, tied);
    Transformer source(config);
    source->init_weights(/*seed=*/11);
    std::map<std::string, torch::Tensor> weights;
    for (auto& [name, tensor] : source->named_weights()) weights[name] = tensor.detach().clone();

    Transformer model(config);
    model->init_weights(/*seed=*/12);
    model->shard_for_tensor_parallel(tp);
    load_weights(*model, weights, "the probe's source model");

    auto generator = at::detail::createCPUGenerator(7);
    const auto ids = torch::randint(config.vocab_size, {3, 10}, generator, torch::kLong);
    auto mask = torch::ones({3, 10}, torch::kLong);
    mask[1].narrow(0, 0, 3).zero_();  // one left-padded row
    const auto logits = model->forward(ids, mask);
    const auto V = config.vocab_size;
    auto per_token = torch::nn::functional::cross_entropy(
        logits.narrow(1, 0, 9).reshape({-1, V}), ids.narrow(1, 1, 9).reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
    const auto targets = mask.narrow(1, 1, 9).reshape({-1}).to(torch::kFloat);
    ((per_token * targets).sum() / targets.sum()).backward();

    out[variant + ".logits"] = logits.detach();
    for (auto& [name, param] : model->local_weights())
      out[variant + ".grad." + name] = model->gathered(name, param.grad());
    for (auto& [name, tensor] : model->named_weights())
      out[variant + ".weight." + name] = tensor.detach().clone();
  }
  return out;
}

}  // namespace tiller::test
