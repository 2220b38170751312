// Transformer: the Llama-family decoder (Llama 2/3, Mistral, TinyLlama, Qwen2 shapes) with an
// LM head or a scalar (sequence-classification) head. Parameter names are Hugging Face's.
//
// Tensor parallel (Megatron-style): a model built with full weights can be sharded in place over
// a tensor-parallel group (shard_for_tensor_parallel). Each rank then holds its share of the
// attention heads (q/k/v rows, o_proj columns), of the MLP's intermediate units (gate/up rows,
// down columns) and of the vocabulary (embedding and LM head rows); norms and the score head are
// replicated. Activations between blocks are full and identical on every rank, so the loss code
// and the heads need no change. Unsharded (the default), no code path differs from a plain model.
#pragma once
#include <torch/torch.h>

#include <functional>

#include "common/dist/process_group.h"
#include "common/model/kv_cache.h"
#include "common/model/model_config.h"

namespace tiller {

struct LoraAdaptersImpl;
struct QuantizedWeights;

// The inputs of a layer's projections, for calibration (tiller quantize's GPTQ): what q/k/v,
// o_proj, gate/up and down_proj multiply.
enum class ProjectionInput { attention, attention_output, mlp, mlp_hidden };
using ProjectionObserver = std::function<void(ProjectionInput, const torch::Tensor&)>;

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
  torch::Tensor inv_freq;  // [head_dim / 2] float, rope_scaling applied
  Rotary(int64_t head_dim, double theta, const RopeScaling& scaling = {});
  // positions: [B, T] -> (cos, sin) each [B, 1, T, head_dim]
  std::pair<torch::Tensor, torch::Tensor> tables(const torch::Tensor& positions);
};

struct AttentionImpl : torch::nn::Module {
  explicit AttentionImpl(const ModelConfig& config);
  // x: [B, T, C]; cos/sin: [B, 1, T, hd]; allowed: [B, 1, T, S].
  // Without a cache S == T; with one, keys/values are written at slots [length, length + T)
  // and attention reads slots [0, length + T), so S == length + T.
  // query_positions [B, K] int64 (no cache): queries at those positions of each row only, the
  // output [B, K, C]; keys and values from every position.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& allowed, KVCache* cache, int64_t layer,
                        const torch::Tensor& query_positions = {});
  // Puts q/k/v's weights (and biases) back to back in one buffer, so that forward multiplies
  // once (common/model/fused_linear.h). Done at construction and after sharding.
  void fuse_projections();
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  int64_t n_heads, n_kv_heads, head_dim;  // this rank's heads under tensor parallelism
  dist::Group tp;
  const LoraAdaptersImpl* lora = nullptr;  // the model's adapters (common/model/lora.h), if any
  int64_t layer_index = 0;
  const ProjectionObserver* observer = nullptr;  // set only while calibrating
};
TORCH_MODULE(Attention);

struct MLPImpl : torch::nn::Module {
  MLPImpl(int64_t dim, int64_t hidden);
  // x: [B, T, C] -> [B, T, C]; SwiGLU: down(silu(gate(x)) * up(x))
  torch::Tensor forward(const torch::Tensor& x);
  void fuse_projections();  // gate and up back to back, as Attention's q/k/v
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
  dist::Group tp;
  const LoraAdaptersImpl* lora = nullptr;
  int64_t layer_index = 0;
  const ProjectionObserver* observer = nullptr;  // set only while calibrating
};
TORCH_MODULE(MLP);

struct DecoderLayerImpl : torch::nn::Module {
  explicit DecoderLayerImpl(const ModelConfig& config);
  // output_positions [B, K] int64 (no cache): the layer's output at those positions only,
  // [B, K, C] (AttentionImpl::forward's query_positions).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& allowed, KVCache* cache, int64_t layer,
                        const torch::Tensor& output_positions = {});
  // Routes this layer's projections through `adapters` (layer `index` of them).
  void attach_lora(const LoraAdaptersImpl* adapters, int64_t index);
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  MLP mlp{nullptr};
};
TORCH_MODULE(DecoderLayer);

// The body without heads: HF's LlamaModel (prefix "model.").
struct DecoderImpl : torch::nn::Module {
  explicit DecoderImpl(const ModelConfig& config);
  // input_ids, positions: [B, T]; allowed: [B, 1, T, S]. Returns final-normed hidden [B, T, C],
  // or [B, K, C] at output_positions [B, K] (TransformerImpl::hidden).
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& positions,
                        const torch::Tensor& allowed, KVCache* cache,
                        const torch::Tensor& output_positions = {});
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers;
  RMSNorm norm{nullptr};
  Rotary rotary;
  std::vector<DecoderLayer> layer_list;
  // Recompute each layer in backward instead of storing its activations (training only).
  bool activation_checkpointing = false;
  // Tensor parallel: the group, and the first vocabulary row of this rank's embedding shard.
  dist::Group tp;
  int64_t vocab_begin = 0;

 private:
  torch::Tensor parallel_embedding(const torch::Tensor& input_ids);
};
TORCH_MODULE(Decoder);

// The whole model. config.num_labels == 0: causal LM (lm_head, or tied to the embedding);
// num_labels > 0: sequence-classification head `score` (reward model, critic).
struct TransformerImpl : torch::nn::Module {
  explicit TransformerImpl(const ModelConfig& config);

  // input_ids, positions: [B, T] int64; allowed: [B, 1, T, S] bool. Returns hidden [B, T, C].
  // With output_positions [B, K] int64 (no cache), the hidden states at those positions of each
  // row only, [B, K, C]: the last layer then computes its queries, attention output and MLP at
  // them alone (keys and values at every position), which a head read at a few positions (a
  // reward model's last token) needs, at a fraction of the last layer's work.
  torch::Tensor hidden(const torch::Tensor& input_ids, const torch::Tensor& positions,
                       const torch::Tensor& allowed, KVCache* cache = nullptr,
                       const torch::Tensor& output_positions = {});
  // hidden: [B, T, C] -> logits [B, T, V]
  torch::Tensor logits(const torch::Tensor& hidden);
  // hidden: [B, T, C] -> scores [B, T, num_labels]
  torch::Tensor scores(const torch::Tensor& hidden);

  // Padded batch (left or right): input_ids, attention_mask [B, T]. Returns logits [B, T, V].
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask);
  // Scalar head read at each row's last real token: [B] (num_labels must be 1).
  torch::Tensor sequence_scores(const torch::Tensor& input_ids,
                                const torch::Tensor& attention_mask);

  // Weights as they are named in Hugging Face checkpoints (tied lm_head omitted), full-size;
  // LoRA adapters are not among them (common/model/lora.h: lora_weights, merged_weights).
  // Unsharded: the parameters themselves. Sharded: gathered copies, a collective that every
  // rank of the tensor-parallel group calls.
  std::vector<std::pair<std::string, torch::Tensor>> named_weights();
  // The parameters this process holds, under the same names (this rank's shards under tensor
  // parallelism): what to write into when loading.
  std::vector<std::pair<std::string, torch::Tensor>> local_weights();
  // Normal(0, 0.02) linears and embeddings, unit norms, score head N(0, 1/(d+1)); with
  // heads_only, just lm_head / score (the body is about to be loaded). Before sharding only.
  void init_weights(uint64_t seed, bool heads_only = false);

  // Shards this full-weight model in place over `tp` (a no-op for a single process). Heads,
  // key/value heads, intermediate_size and vocab_size must divide by its size (tiller::Error
  // otherwise). Build the optimizer after this.
  void shard_for_tensor_parallel(const dist::Group& tp);
  const dist::Group& tensor_parallel() const { return model->tp; }
  // The dimension along which tensor parallelism splits weight `name` (0: rows, 1: columns), or
  // -1 for a replicated one.
  static int sharded_dim(const std::string& name);
  // This rank's part of the full tensor of weight `name` (the tensor itself when unsharded).
  torch::Tensor local_part(const std::string& name, const torch::Tensor& full) const;
  // The full tensor of weight `name` from every rank's part (a gradient, or the weight): a
  // collective over the tensor-parallel group for sharded weights.
  torch::Tensor gathered(const std::string& name, const torch::Tensor& local) const;

  ModelConfig config;
  Decoder model{nullptr};
  torch::nn::Linear lm_head{nullptr};
  torch::nn::Linear score{nullptr};
  // LoRA adapters (attach_lora in common/model/lora.h), registered as the submodule "lora".
  std::shared_ptr<LoraAdaptersImpl> lora;
  // A quantised model's packed weights (common/model/quantized.h), which the fast decode step
  // multiplies by; its parameters hold the same weights dequantised. Null for a full model.
  std::shared_ptr<const QuantizedWeights> quantized;
};
TORCH_MODULE(Transformer);

}  // namespace tiller
