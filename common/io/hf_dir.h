// Hugging Face model directories: config.json + model.safetensors (or sharded) + tokenizer.model.
#pragma once
#include <torch/torch.h>

#include <map>
#include <optional>
#include <string>

#include "common/model/quantized.h"
#include "common/model/transformer.h"

namespace tiller {

// Reads all weights of DIR: model.safetensors, or the shards listed by
// model.safetensors.index.json.
std::map<std::string, torch::Tensor> read_hf_weights(const std::string& dir);

// Copies `weights` into `model` (converted to the parameter dtype); a model sharded for tensor
// parallelism takes this rank's part of each full weight. Strict: every missing tensor,
// unexpected tensor and shape mismatch is listed in one tiller::Error naming `where`.
// With heads_optional, the heads (lm_head.*, score.*) may be missing or extra: the body alone
// must match (an LM initialising a reward model, a reward model initialising a critic).
void load_weights(TransformerImpl& model, const std::map<std::string, torch::Tensor>& weights,
                  const std::string& where, bool heads_optional = false);

// What loading does with a quantised directory (config.json's quantization_config, written by
// `tiller quantize`): refuse it, as every model that is trained must (its weights are codes), or
// load it frozen: dequantised into the parameters, the packed weights in model->quantized.
enum class QuantizedModels { refuse, load_frozen };

// The quantization_config of DIR/config.json, or nullopt for a full-precision model.
std::optional<QuantizationConfig> quantization_of(const std::string& dir);

// Builds a model from DIR/config.json and loads its weights strictly. `num_labels` >= 0 overrides
// the head (0: LM head, 1: scalar head); heads then load only where they match.
Transformer load_hf_model(const std::string& dir, int64_t num_labels = -1,
                          QuantizedModels quantized = QuantizedModels::refuse);

// load_hf_model for a causal LM in the `role` a stage gives it ("policy", "reference"): a model
// with a score head is refused, naming the role.
Transformer load_causal_lm(const std::string& dir, const std::string& role,
                           QuantizedModels quantized = QuantizedModels::refuse);

struct SaveOptions {
  // Copied as tokenizer.model when non-empty; a tokenizer.json is copied as tokenizer.json, with
  // the tokenizer_config.json beside it (its special tokens and chat template).
  std::string tokenizer_path;
  int64_t max_shard_bytes = 2ll << 30;  // larger models are split as model-0000k-of-0000n
  // A model with LoRA adapters whose adapter goes beside the weights as adapter/ (PEFT's layout).
  TransformerImpl* adapter_of = nullptr;
  // A quantised model's config.json "quantization_config" (its weights are then the stored
  // tensors of common/model/quantized.h).
  nlohmann::json quantization_config;
  // More files written into the directory before it is renamed into place: name -> contents.
  std::map<std::string, std::string> extra_files;
};

// Writes an HF directory to `dir` atomically (a model with LoRA adapters: its merged weights, and
// its adapter in PEFT's layout as dir/adapter/): everything goes to a sibling temporary directory
// that is renamed into place last, so `dir` either does not exist or is complete.
// An existing `dir` is replaced.
void save_hf_model(TransformerImpl& model, const std::string& dir, const SaveOptions& options = {});
// The same from weights already in hand: a tensor-parallel model's named_weights() is a
// collective, gathered by every rank before the one that writes calls this.
void save_hf_model(const ModelConfig& config,
                   const std::vector<std::pair<std::string, torch::Tensor>>& weights,
                   const std::string& dir, const SaveOptions& options = {});

}  // namespace tiller

namespace tiller {
// DIR/tokenizer.model, else DIR/tokenizer.json; throws tiller::Error when the directory has
// neither.
std::string tokenizer_path_in(const std::string& dir);
// The same, or "" when the directory has neither.
std::string tokenizer_path_if_any(const std::string& dir);
}  // namespace tiller
