// FastDecoder: one decode step (a token per row) of a Llama-family LM in fp32 on the CPU, written
// as direct BLAS calls and plain loops instead of LibTorch ops. At the sizes of RLHF rollouts a
// step is mostly LibTorch's per-op dispatch (stories260k: dozens of ops per layer, each of a few
// thousand FLOPs), which this leaves out. It reads the module's own parameters in place and
// writes keys and values into the generator's KV cache, so the torch path's prefill and this step
// share one cache. At 8 to 128 rows on an AVX-512 CPU it multiplies by PanelMatrix copies of the
// larger weights instead (panel_matmul.h), made when it is constructed: the parameters must not
// change while it is used. Same computation as TransformerImpl::hidden + logits with
// one query per row; results differ from it by float rounding only (the sums run in another order).
// Active LoRA adapters (common/model/lora.h) are applied as the torch path applies them, without
// dropout (generation). A quantised model's projections (TransformerImpl::quantized) multiply by
// the packed int8/int4 weights directly (common/rollout/quant_kernels.h).
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "common/model/transformer.h"
#include "common/rollout/decode_kernels.h"
#include "common/rollout/panel_matmul.h"
#include "common/rollout/quant_kernels.h"
#include "common/util/spin_team.h"

namespace tiller {

class FastDecoder {
 public:
  // A quantised model's projections multiply by the packed weights below this many rows: a step
  // of a row or a few reads every weight once and multiplies it little (llama-124m at batch 1:
  // int8 2.7x fp32). From it on the multiply dominates, and the dequantised fp32 parameters
  // (resident anyway) through sgemm are faster than dequantise-then-multiply (llama-124m at
  // batch 16: 0.63x fp32 through dequantised tiles).
  static constexpr int64_t kPackedRowsLimit = 4;

  // Rows from which to up to which the dense projections multiply by PanelMatrix copies of the
  // weights rather than through sgemm, where the CPU has AVX-512F (`tiller bench decode`, llama-15m
  // and llama-124m shapes: 1.3x to 3x sgemm's GFLOP/s per product from 8 rows to 128; below 8 rows
  // OpenBLAS's small-matrix kernel wins on the smaller weights).
  static constexpr int64_t kPanelRowsMin = 8;
  static constexpr int64_t kPanelRowsMax = 128;
  // The copies live as long as the decoder (one generate() call) beside the model: at most this
  // many bytes of them (llama-124m's 0.5 GB fits; llama-500m's 2 GB stays on sgemm).
  static constexpr int64_t kPanelBytesLimit = int64_t{1} << 30;

  // Whether the dense projections may use PanelMatrix copies (where the rows, the size and the
  // CPU allow), or always go through BLAS (the tests compare the two).
  enum class WeightPanels { where_faster, never };

  // Whether the step handles this model and cache: an unsharded causal LM whose parameters and
  // cache are contiguous fp32 CPU tensors.
  static bool supports(TransformerImpl& model, const KVCache& cache);

  // Holds pointers into `model`'s parameters and `cache`: both must outlive this object and keep
  // their storage (no .to(), no set_data) while it is used. `isa` picks the attention and SiLU
  // loops (the tests run each set this CPU supports).
  FastDecoder(TransformerImpl& model, KVCache& cache,
              decode_kernels::Isa isa = decode_kernels::best_isa(),
              quant_kernels::Isa quant_isa = quant_kernels::best_isa(),
              WeightPanels panels = WeightPanels::where_faster);

  // How many of the step's projections multiply by PanelMatrix copies.
  int64_t panel_weights() const { return static_cast<int64_t>(panel_storage_.size()); }

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
  // A projection's weight: [out, in] as torch::nn::Linear stores it, its quantised form, or its
  // panels.
  struct Weight {
    const float* dense = nullptr;
    const QuantizedMatrix* quantized = nullptr;
    const PanelMatrix* panels = nullptr;
  };
  struct Layer {
    const float *input_norm, *post_attention_norm;
    Weight q, k, v, o;
    const float *q_bias, *k_bias, *v_bias;  // nullptr without attention_bias
    Weight gate, up, down;
    float *keys, *values;  // cache: [B, KV, capacity, head_dim]
    LowRank q_lora, k_lora, v_lora, o_lora, gate_lora, up_lora, down_lora;
  };

  // Gives PanelMatrix copies to the projections that would go through sgemm, unless they come to
  // more than kPanelBytesLimit.
  void copy_weights_to_panels(int64_t q_width, int64_t kv_width);

  // out[rows, n] += lora_scale_ * (in · aᵀ) · bᵀ, when the adapter is there.
  void add_low_rank(const LowRank& adapter, const float* in, int64_t k, int64_t n, float* out);

  void attention(const float* q, const Layer& layer, int64_t slot, float* out);

  // body over [0, n) on team_ where there is one, else on LibTorch's intra-op threads.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body);

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
  std::vector<std::unique_ptr<PanelMatrix>> panel_storage_;  // what Weight::panels point at
  // Where the step multiplies by panels (and only there: panel_storage_ is not empty), the threads
  // of the panel products and the attention:
  // LibTorch's intra-op count, spinning between a step's loops (common/util/spin_team.h). Not
  // otherwise: the step's sgemm calls run on OpenBLAS's own threads, which spinning workers would
  // slow.
  std::optional<SpinTeam> team_;
  int64_t lora_rank_ = 0;
  float lora_scale_ = 0;
  std::vector<float> low_;   // [B, rank]: in · aᵀ of one adapter
  torch::Tensor cos_, sin_;  // [capacity, head_dim], the torch path's rotary tables
  // Activations of one step, reused: x (residual), normed x, q, k, v, attention out, gate, up;
  // the attention's scores ([B, H, padded capacity]: each row and key/value head its own, for the
  // threads), and each row's mask as additive biases ([B, padded capacity]: 0 or -inf).
  std::vector<float> x_, xn_, q_, k_, v_, att_, gate_, up_, scores_, mask_bias_;
};

}  // namespace tiller
