// KVCache: preallocated key/value buffers for incremental decoding, one pair per layer.
#pragma once
#include <torch/torch.h>

#include <vector>

namespace tiller {

struct ModelConfig;

struct KVCache {
  std::vector<torch::Tensor> keys;    // per layer: [B, n_kv_heads, capacity, head_dim]
  std::vector<torch::Tensor> values;  // per layer: [B, n_kv_heads, capacity, head_dim]
  torch::Tensor key_valid;            // [B, capacity] bool: slot holds a real (non-pad) token
  int64_t length = 0;                 // slots filled so far, the same for every row

  // Allocates buffers for `batch` rows of up to `capacity` tokens, like the model's parameters.
  KVCache(const ModelConfig& config, int64_t batch, int64_t capacity, torch::TensorOptions options);

  int64_t capacity() const { return key_valid.size(1); }
  int64_t batch() const { return key_valid.size(0); }
};

}  // namespace tiller
