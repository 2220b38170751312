// FastDecoder: one decode step (a token per row) of a Llama-family LM in fp32 on the CPU, written
// as direct BLAS calls and plain loops instead of LibTorch ops. At the sizes of RLHF rollouts a
// step is mostly LibTorch's per-op dispatch (stories260k: dozens of ops per layer, each of a few
// thousand FLOPs), which this leaves out. It reads the module's own parameters in place (no copy
// of the model) and writes keys and values into the generator's KV cache, so the torch path's
// prefill and this step share one cache. Same computation as TransformerImpl::hidden + logits with
// one query per row; results differ from it by float rounding only (the sums run in another order).
// Active LoRA adapters (common/model/lora.h) are applied as the torch path applies them, without
// dropout (generation). A quantised model's projections (TransformerImpl::quantized) multiply by
// the packed int8/int4 weights directly (common/rollout/quant_kernels.h).
#pragma once
#include <torch/torch.h>

#include <vector>

#include "common/model/transformer.h"
#include "common/rollout/decode_kernels.h"
#include "common/rollout/quant_kernels.h"

namespace tiller {

class FastDecoder {
 public:
  // A quantised model's projections multiply by the packed weights below this many rows: a step
  // of a row or a few reads every weight once and multiplies it little (llama-124m at batch 1:
  // int8 2.7x fp32). From it on the multiply dominates, and the dequantised fp32 parameters
  // (resident anyway) through sgemm are faster than dequantise-then-multiply (llama-124m at
  // batch 16: 0.63x fp32 through dequantised tiles).
  static constexpr int64_t kPackedRowsLimit = 4;

  // Whether the step handles this model and cache: an unsharded causal LM whose parameters and
  // cache are contiguous fp32 CPU tensors.
  static bool supports(TransformerImpl& model, const KVCache& cache);

  // Holds pointers into `model`'s parameters and `cache`: both must outlive this object and keep
  // their storage (no .to(), no set_data) while it is used. `isa` picks the attention and SiLU
  // loops (the tests run each set this CPU supports).
  FastDecoder(TransformerImpl& model, KVCache& cache,
              decode_kernels::Isa isa = decode_kernels::best_isa(),
              quant_kernels::Isa quant_isa = quant_kernels::best_isa());

  // Feeds tokens[b] ([B] int64) at rotary position positions[b] ([B] int64) into slot
  // cache.length of every row, attending to the slots [0, cache.length] that cache.key_valid
  // marks (and always to the new one), then advances cache.length. Returns logits [B, V] float.
  torch::Tensor step(const torch::Tensor& tokens, const torch::Tensor& positions);

 private:
  // A LoRA adapter's matrices (a: [rank, in], b: [out, rank]); a == nullptr: none.
  struct LowRank {
    const float* a = nullptr;
    const float* b = nullptr;
  };
  // A projection's weight: [out, in] as torch::nn::Linear stores it, or its packed form.
  struct Weight {
    const float* dense = nullptr;
    const QuantizedMatrix* quantized = nullptr;
  };
  struct Layer {
    const float *input_norm, *post_attention_norm;
    Weight q, k, v, o;
    const float *q_bias, *k_bias, *v_bias;  // nullptr without attention_bias
    Weight gate, up, down;
    float *keys, *values;  // cache: [B, KV, capacity, head_dim]
    LowRank q_lora, k_lora, v_lora, o_lora, gate_lora, up_lora, down_lora;
  };

  // out[rows, n] += lora_scale_ * (in · aᵀ) · bᵀ, when the adapter is there.
  void add_low_rank(const LowRank& adapter, const float* in, int64_t k, int64_t n, float* out);

  void attention(const float* q, const Layer& layer, int64_t slot, float* out);

  // out[B, n] = in[B, k] · weightᵀ + bias, or += that when `accumulate`.
  void project(const float* in, int64_t k, const Weight& weight, const float* bias, int64_t n,
               float* out, bool accumulate);

  KVCache& cache_;
  const decode_kernels::Isa isa_;
  const quant_kernels::Isa quant_isa_;
  const int64_t batch_, dim_, hidden_, heads_, kv_heads_, head_dim_, vocab_;
  const float eps_;
  const float* embedding_;
  const float* final_norm_;
  Weight lm_head_;  // the embedding when tied
  std::vector<Layer> layers_;
  int64_t lora_rank_ = 0;
  float lora_scale_ = 0;
  std::vector<float> low_;   // [B, rank]: in · aᵀ of one adapter
  torch::Tensor cos_, sin_;  // [capacity, head_dim], the torch path's rotary tables
  // Activations of one step, reused: x (residual), normed x, q, k, v, attention out, gate, up;
  // the attention's scores of one key/value head, and each row's mask as additive biases
  // ([B, padded capacity]: 0 or -inf).
  std::vector<float> x_, xn_, q_, k_, v_, att_, gate_, up_, scores_, mask_bias_;
};

}  // namespace tiller
