// Transformer: the Llama-family decoder (Llama 2/3, Mistral, TinyLlama, Qwen2 shapes) with an
// LM head or a scalar (sequence-classification) head. Parameter names are Hugging Face's.
#pragma once
#include <torch/torch.h>

#include "common/model/kv_cache.h"
#include "common/model/model_config.h"

namespace tiller {

struct RMSNormImpl : torch::nn::Module {
  RMSNormImpl(int64_t dim, double eps);
  // x: [..., dim] -> [..., dim]
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

// Rotary embedding in Hugging Face's rotate_half layout.
struct Rotary {
  torch::Tensor inv_freq;  // [head_dim / 2] float
  Rotary(int64_t head_dim, double theta);
  // positions: [B, T] -> (cos, sin) each [B, 1, T, head_dim]
  std::pair<torch::Tensor, torch::Tensor> tables(const torch::Tensor& positions);
};

struct AttentionImpl : torch::nn::Module {
  explicit AttentionImpl(const ModelConfig& config);
  // x: [B, T, C]; cos/sin: [B, 1, T, hd]; allowed: [B, 1, T, S].
  // Without a cache S == T; with one, keys/values are written at slots [length, length + T)
  // and attention reads slots [0, length + T), so S == length + T.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& allowed, KVCache* cache, int64_t layer);
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  int64_t n_heads, n_kv_heads, head_dim;
};
TORCH_MODULE(Attention);

struct MLPImpl : torch::nn::Module {
  MLPImpl(int64_t dim, int64_t hidden);
  // x: [B, T, C] -> [B, T, C]; SwiGLU: down(silu(gate(x)) * up(x))
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(MLP);

struct DecoderLayerImpl : torch::nn::Module {
  explicit DecoderLayerImpl(const ModelConfig& config);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& allowed, KVCache* cache, int64_t layer);
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  MLP mlp{nullptr};
};
TORCH_MODULE(DecoderLayer);

// The body without heads: HF's LlamaModel (prefix "model.").
struct DecoderImpl : torch::nn::Module {
  explicit DecoderImpl(const ModelConfig& config);
  // input_ids, positions: [B, T]; allowed: [B, 1, T, S]. Returns final-normed hidden [B, T, C].
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& positions,
                        const torch::Tensor& allowed, KVCache* cache);
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers;
  RMSNorm norm{nullptr};
  Rotary rotary;
  std::vector<DecoderLayer> layer_list;
  // Recompute each layer in backward instead of storing its activations (training only).
  bool activation_checkpointing = false;
};
TORCH_MODULE(Decoder);

// The whole model. config.num_labels == 0: causal LM (lm_head, or tied to the embedding);
// num_labels > 0: sequence-classification head `score` (reward model, critic).
struct TransformerImpl : torch::nn::Module {
  explicit TransformerImpl(const ModelConfig& config);

  // input_ids, positions: [B, T] int64; allowed: [B, 1, T, S] bool. Returns hidden [B, T, C].
  torch::Tensor hidden(const torch::Tensor& input_ids, const torch::Tensor& positions,
                       const torch::Tensor& allowed, KVCache* cache = nullptr);
  // hidden: [B, T, C] -> logits [B, T, V]
  torch::Tensor logits(const torch::Tensor& hidden);
  // hidden: [B, T, C] -> scores [B, T, num_labels]
  torch::Tensor scores(const torch::Tensor& hidden);

  // Padded batch (left or right): input_ids, attention_mask [B, T]. Returns logits [B, T, V].
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask);
  // Scalar head read at each row's last real token: [B] (num_labels must be 1).
  torch::Tensor sequence_scores(const torch::Tensor& input_ids,
                                const torch::Tensor& attention_mask);

  // Weights as they are named in Hugging Face checkpoints (tied lm_head omitted).
  std::vector<std::pair<std::string, torch::Tensor>> named_weights();
  // Normal(0, 0.02) linears and embeddings, unit norms, score head N(0, 1/(d+1)); with
  // heads_only, just lm_head / score (the body is about to be loaded).
  void init_weights(uint64_t seed, bool heads_only = false);

  ModelConfig config;
  Decoder model{nullptr};
  torch::nn::Linear lm_head{nullptr};
  torch::nn::Linear score{nullptr};
};
TORCH_MODULE(Transformer);

}  // namespace tiller
