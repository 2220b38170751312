// LoRA: low-rank adapters on a Transformer's linear projections (Hu et al. 2021, "LoRA: Low-Rank
// Adaptation of Large Language Models"), laid out as PEFT lays them out.
//
// An adapted projection computes W x + scale * B (A dropout(x)), A: [rank, in], B: [out, rank],
// scale = alpha / rank (alpha / sqrt(rank) with rsLoRA). The base weights stay as they are (the
// fused q/k/v and gate/up multiplies included) and are frozen: no gradients, no optimizer state;
// only the adapters and the `modules_to_save` train. The adapters are parameters of a submodule
// "lora" of the Transformer, so optimizers built after attach_lora() see them; TransformerImpl's
// named_weights() and local_weights() leave them out (they are the base model's HF weights).
//
// Names follow PEFT's saved adapters: base_model.model.<HF name of the projection>.lora_A.weight
// and .lora_B.weight; a module to save as base_model.model.<its HF weight name>.
#pragma once
#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/model/model_config.h"

namespace tiller {

struct TransformerImpl;

struct LoraOptions {
  int64_t rank = 8;
  double alpha = 16;
  double dropout = 0.0;
  // Projection names (q_proj k_proj v_proj o_proj gate_proj up_proj down_proj); "all-linear" is
  // expanded to all seven by parse_lora_targets (PEFT's all-linear leaves the LM head out too).
  std::vector<std::string> targets = {"q_proj", "v_proj"};
  // "kaiming": PEFT's default (init_lora_weights=True): A Kaiming-uniform (a = sqrt(5), as
  // nn.Linear), B zeros. "gaussian": A ~ N(0, 1/rank), B zeros. Both start at the base model.
  std::string init = "kaiming";
  bool rslora = false;
  // Whole weights trained beside the adapters: "score", "lm_head", "embed_tokens".
  std::vector<std::string> modules_to_save;
  // How the frozen base's matrices are stored: "fp32", or "bf16" (the QLoRA idea with bf16 in
  // place of 4-bit NF4: the embedding, the seven projections and an untied LM head in half the
  // bytes, widened to fp32 one matrix at a time as each is used; norms, biases, the adapters and
  // the modules to save stay fp32, and so does every activation).
  std::string base_dtype = "fp32";

  double scale() const;
};

// The seven projections a LoRA may target, in layer order.
const std::vector<std::string>& lora_target_names();
// The modules a LoRA may train whole.
const std::vector<std::string>& lora_savable_modules();

// Checks `options` against each other and against `config` (unknown targets or modules, rank,
// alpha, dropout, init, lm_head on a tied model, score on an LM); throws tiller::Error naming
// `where` and the first problem.
void check_lora_options(const LoraOptions& options, const ModelConfig& config,
                        const std::string& where);

// One adapted projection.
struct LoraLinear {
  torch::Tensor a;  // [rank, in]
  torch::Tensor b;  // [out, rank]
  // base + scale * B A dropout(x), or base alone while the adapters are switched off. Dropout
  // applies in training mode with gradients on only.
  torch::Tensor add_to(const torch::Tensor& base, const torch::Tensor& x) const;
  const struct LoraAdaptersImpl* owner = nullptr;
};

struct LoraAdaptersImpl : torch::nn::Module {
  LoraAdaptersImpl(const ModelConfig& config, const LoraOptions& options);

  // The adapter of layer `layer`'s projection `target`, or nullptr when it is not adapted.
  const LoraLinear* find(int64_t layer, const std::string& target) const;

  LoraOptions options;
  bool active = true;      // false: the model computes as its base (LoraSwitchedOff)
  std::string base_model;  // what the adapter's config names as its base (informational)
  // PEFT's name of each adapted projection's HF weight prefix (model.layers.N.self_attn.q_proj),
  // in layer order, with its adapter.
  std::vector<std::pair<std::string, std::unique_ptr<LoraLinear>>> adapters;

 private:
  std::vector<std::map<std::string, const LoraLinear*>> by_layer_;
};

// Adds fresh adapters to `model` (initialised by options.init from `seed`), freezes every base
// weight but the modules to save, and stores the frozen matrices in options.base_dtype. Throws
// tiller::Error (`where`) on bad options, on a model that already has adapters or is sharded for
// tensor parallelism. Build optimizers after this.
void attach_lora(TransformerImpl& model, const LoraOptions& options, uint64_t seed,
                 const std::string& where);
bool has_lora(const TransformerImpl& model);

// What a LoRA run trains and saves: every adapter's A and B and the modules to save, by PEFT's
// names (the tensors themselves).
std::vector<std::pair<std::string, torch::Tensor>> lora_weights(TransformerImpl& model);
// Copies `weights` (PEFT's names, as lora_weights gives them) into the model's adapters and
// modules to save. Strict: a missing or unexpected tensor or a wrong shape is one tiller::Error
// naming `where`, the tensor, and both shapes.
void load_lora_weights(TransformerImpl& model, const std::map<std::string, torch::Tensor>& weights,
                       const std::string& where);

// The model's HF weights with every adapter merged in (W + scale B A, computed in fp64), all in
// fp32 (a bf16 base's values widened); the model itself is left unchanged. Without adapters:
// named_weights().
std::vector<std::pair<std::string, torch::Tensor>> merged_weights(TransformerImpl& model);

// Makes every frozen weight of `model` (all but its adapters and modules to save) the very tensor
// of `source`'s weight of the same name, so that the two hold one copy: PPO's LoRA critic on the
// reward model's body. Both must be on one device with the same config; `model`'s own copies are
// freed. Throws tiller::Error naming `where` on a model without adapters or a weight that
// differs in shape, dtype or device. Returns the bytes now shared.
int64_t share_frozen_base(TransformerImpl& model, TransformerImpl& source,
                          const std::string& where);

// While alive, the model computes as its base: the reference policy of PPO and GRPO with LoRA is
// the policy with its adapters off, with no second copy of the weights. No-op without adapters.
class LoraSwitchedOff {
 public:
  explicit LoraSwitchedOff(TransformerImpl& model);
  ~LoraSwitchedOff();
  LoraSwitchedOff(const LoraSwitchedOff&) = delete;
  LoraSwitchedOff& operator=(const LoraSwitchedOff&) = delete;

 private:
  LoraAdaptersImpl* adapters_;
  bool was_active_ = false;
};

}  // namespace tiller
