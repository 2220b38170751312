// ModelConfig: the shape of a Llama-family transformer, read from and written to HF config.json.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace tiller {

// config.json's rope_scaling, the kinds whose frequencies are fixed: "linear" divides every
// rotary frequency by factor (positions stretched: Llama 2 long-context fine-tunes), "llama3"
// divides the low frequencies by factor, keeps the high ones and blends those between (Llama 3.1+).
struct RopeScaling {
  std::string type;  // "" (none), "linear" or "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings = 8192;       // llama3
};

struct ModelConfig {
  std::string model_type = "llama";  // "llama" or "qwen2"
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;
  int64_t head_dim = 0;  // 0: hidden_size / num_attention_heads
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // bias on q/k/v projections (always true for qwen2)
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;
  int64_t pad_token_id = -1;  // -1: none set
  // Number of scalar outputs of a sequence-classification head (reward model, critic); 0: LM.
  int64_t num_labels = 0;

  int64_t resolved_head_dim() const {
    return head_dim > 0 ? head_dim : hidden_size / num_attention_heads;
  }

  // Throws tiller::Error naming `where` and the offending values when the shape is inconsistent.
  void validate(const std::string& where) const;

  // Parameters of the model this config describes (embedding and heads included).
  int64_t parameter_count() const;
  // The same without the token embedding and the LM head (Kaplan's N).
  int64_t non_embedding_parameter_count() const;
};

// Reads an HF config.json object. `where` names its source in errors.
ModelConfig model_config_from_hf_json(const nlohmann::json& json, const std::string& where);
// Writes an HF config.json object: LlamaForCausalLM / Qwen2ForCausalLM, or
// ...ForSequenceClassification when num_labels > 0.
nlohmann::json model_config_to_hf_json(const ModelConfig& config);

// Loads DIR/config.json.
ModelConfig load_model_config(const std::string& dir);

}  // namespace tiller

namespace tiller {
// Built-in shapes for benchmarks and from-scratch models: "stories260k", "llama-15m"
// (llama2.c stories15M), "llama-124m" (GPT-2-small-sized Llama), and for GPUs "llama-500m" (513M
// parameters) and "llama-1b" (1.04B, Llama 3.2 1B's body). Throws on an unknown name.
ModelConfig builtin_shape(const std::string& name);
// Their names, in that order.
const std::vector<std::string>& builtin_shape_names();
}  // namespace tiller
