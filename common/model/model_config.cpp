#include "common/model/model_config.h"

#include <fstream>
#include <sstream>
#include <type_traits>

#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

namespace {

// Reads an optional field of type T; a present field of the wrong type is an error.
template <typename T>
void read_field(const nlohmann::json& json, const char* key, T& out, const std::string& where) {
  auto it = json.find(key);
  if (it == json.end() || it->is_null()) return;
  // nlohmann converts between numbers and booleans silently (1.5 layers -> 1, true -> 1).
  bool right_kind = true;
  if constexpr (std::is_same_v<T, bool>) {
    right_kind = it->is_boolean();
  } else if constexpr (std::is_integral_v<T>) {
    right_kind = it->is_number_integer();
  } else if constexpr (std::is_floating_point_v<T>) {
    right_kind = it->is_number();
  }
  if (!right_kind)
    throw Error(where + ": key '" + key + "' has the wrong type (" + it->type_name() + ")");
  try {
    out = it->get<T>();
  } catch (const nlohmann::json::exception&) {
    throw Error(where + ": key '" + key + "' has the wrong type (" + it->type_name() + ")");
  }
}

// eos_token_id may be an int or a list of ints (Llama 3); we keep the first.
int64_t read_token_id(const nlohmann::json& json, const char* key, int64_t fallback,
                      const std::string& where) {
  auto it = json.find(key);
  if (it == json.end() || it->is_null()) return fallback;
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_array() && !it->empty() && (*it)[0].is_number_integer())
    return (*it)[0].get<int64_t>();
  throw Error(where + ": key '" + key + "' must be an integer or a list of integers");
}

// rope_scaling: null, or {"rope_type" (or the older "type"), "factor", ...}.
RopeScaling read_rope_scaling(const nlohmann::json& json, const std::string& where) {
  RopeScaling r;
  auto it = json.find("rope_scaling");
  if (it == json.end() || it->is_null()) return r;
  const std::string at = where + ": rope_scaling";
  check(it->is_object(), at + " must be an object or null");
  for (const char* key : {"rope_type", "type"}) {
    auto type = it->find(key);
    if (type == it->end()) continue;
    check(type->is_string(), at + ": '" + key + "' must be a string");
    r.type = type->get<std::string>();
    break;
  }
  if (r.type == "default") r.type.clear();
  check(r.type.empty() || r.type == "linear" || r.type == "llama3",
        at + ": type '" + r.type + "' is not supported (linear, llama3)");
  check(!r.type.empty() || it->find("factor") == it->end(), at + ": a factor without a type");
  if (r.type.empty()) return r;
  auto required = [&](const char* key, auto& out) {
    check(it->contains(key), at + ": " + r.type + " needs '" + key + "'");
    read_field(*it, key, out, at);
  };
  required("factor", r.factor);
  if (r.type == "llama3") {
    required("low_freq_factor", r.low_freq_factor);
    required("high_freq_factor", r.high_freq_factor);
    required("original_max_position_embeddings", r.original_max_position_embeddings);
  }
  return r;
}

}  // namespace

void ModelConfig::validate(const std::string& where) const {
  auto positive = [&](int64_t value, const char* name) {
    check(value > 0, where + ": " + name + " must be positive, got " + std::to_string(value));
  };
  check(model_type == "llama" || model_type == "qwen2" || model_type == "mistral",
        where + ": model_type '" + model_type + "' is not supported (llama, mistral, qwen2)");
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(num_key_value_heads, "num_key_value_heads");
  positive(max_position_embeddings, "max_position_embeddings");
  // Bounds that keep a hostile config from asking for absurd allocations.
  check(vocab_size <= (1 << 22) && hidden_size <= (1 << 16) && intermediate_size <= (1 << 18) &&
            num_hidden_layers <= 1024 && num_attention_heads <= 1024 &&
            max_position_embeddings <= (1 << 20),
        where + ": model dimensions are implausibly large");
  // 0 means hidden_size / num_attention_heads; an explicit one is bounded like the others (a huge
  // head_dim overflowed parameter_count and the weight sizes).
  check(head_dim >= 0 && head_dim <= (1 << 14),
        where + ": head_dim " + std::to_string(head_dim) + " is out of range (1 to 16384)");
  check(head_dim > 0 || hidden_size % num_attention_heads == 0,
        where + ": hidden_size " + std::to_string(hidden_size) +
            " is not divisible by num_attention_heads " + std::to_string(num_attention_heads));
  check(num_attention_heads % num_key_value_heads == 0,
        where + ": num_attention_heads " + std::to_string(num_attention_heads) +
            " is not divisible by num_key_value_heads " + std::to_string(num_key_value_heads));
  check(resolved_head_dim() % 2 == 0,
        where + ": head_dim " + std::to_string(resolved_head_dim()) + " must be even for RoPE");
  check(rms_norm_eps > 0, where + ": rms_norm_eps must be positive");
  check(rope_theta > 0, where + ": rope_theta must be positive");
  if (!rope_scaling.type.empty()) {
    const RopeScaling& r = rope_scaling;
    check(r.factor >= 1,
          where + ": rope_scaling factor must be at least 1, got " + std::to_string(r.factor));
    check(r.type != "llama3" || (r.low_freq_factor > 0 && r.high_freq_factor > r.low_freq_factor &&
                                 r.original_max_position_embeddings > 0),
          where +
              ": rope_scaling llama3 needs 0 < low_freq_factor < high_freq_factor and a positive "
              "original_max_position_embeddings");
  }
  check(num_labels >= 0 && num_labels <= 1024, where + ": num_labels out of range");
  check(pad_token_id < vocab_size,
        where + ": pad_token_id " + std::to_string(pad_token_id) + " is outside the vocabulary");
}

int64_t ModelConfig::parameter_count() const {
  const int64_t hd = resolved_head_dim();
  const int64_t q = num_attention_heads * hd, kv = num_key_value_heads * hd;
  int64_t attention = hidden_size * q + 2 * hidden_size * kv + q * hidden_size;
  if (attention_bias) attention += q + 2 * kv;
  const int64_t mlp = 3 * hidden_size * intermediate_size;
  const int64_t layer = attention + mlp + 2 * hidden_size;
  int64_t total = vocab_size * hidden_size + num_hidden_layers * layer + hidden_size;
  if (num_labels > 0) {
    total += num_labels * hidden_size;
  } else if (!tie_word_embeddings) {
    total += vocab_size * hidden_size;
  }
  return total;
}

int64_t ModelConfig::non_embedding_parameter_count() const {
  int64_t total = parameter_count() - vocab_size * hidden_size;
  if (num_labels == 0 && !tie_word_embeddings) total -= vocab_size * hidden_size;
  return total;
}

ModelConfig model_config_from_hf_json(const nlohmann::json& json, const std::string& where) {
  check(json.is_object(), where + ": expected a JSON object");
  ModelConfig c;
  read_field(json, "model_type", c.model_type, where);
  read_field(json, "vocab_size", c.vocab_size, where);
  read_field(json, "hidden_size", c.hidden_size, where);
  read_field(json, "intermediate_size", c.intermediate_size, where);
  read_field(json, "num_hidden_layers", c.num_hidden_layers, where);
  read_field(json, "num_attention_heads", c.num_attention_heads, where);
  c.num_key_value_heads = c.num_attention_heads;
  read_field(json, "num_key_value_heads", c.num_key_value_heads, where);
  read_field(json, "head_dim", c.head_dim, where);
  read_field(json, "max_position_embeddings", c.max_position_embeddings, where);
  read_field(json, "rms_norm_eps", c.rms_norm_eps, where);
  read_field(json, "rope_theta", c.rope_theta, where);
  read_field(json, "tie_word_embeddings", c.tie_word_embeddings, where);
  read_field(json, "attention_bias", c.attention_bias, where);
  if (c.model_type == "qwen2") c.attention_bias = true;
  // An explicit null is "none" (-1), as written below; a missing key keeps Llama's default.
  c.bos_token_id = json.contains("bos_token_id") && json["bos_token_id"].is_null()
                       ? -1
                       : read_token_id(json, "bos_token_id", c.bos_token_id, where);
  c.eos_token_id = read_token_id(json, "eos_token_id", c.eos_token_id, where);
  c.pad_token_id = read_token_id(json, "pad_token_id", -1, where);

  std::string act = "silu";
  read_field(json, "hidden_act", act, where);
  check(act == "silu", where + ": hidden_act '" + act + "' is not supported (silu)");
  c.rope_scaling = read_rope_scaling(json, where);

  // A sequence-classification head is declared by its architecture name.
  auto arch = json.find("architectures");
  if (arch != json.end() && arch->is_array() && !arch->empty() && (*arch)[0].is_string()) {
    const std::string name = (*arch)[0].get<std::string>();
    if (name.find("ForSequenceClassification") != std::string::npos) {
      c.num_labels = 1;
      auto labels = json.find("num_labels");
      if (labels != json.end() && labels->is_number_integer())
        c.num_labels = labels->get<int64_t>();
      auto id2label = json.find("id2label");
      if (labels == json.end() && id2label != json.end() && id2label->is_object())
        c.num_labels = static_cast<int64_t>(id2label->size());
    }
  }
  c.validate(where);
  return c;
}

nlohmann::json model_config_to_hf_json(const ModelConfig& c) {
  const bool qwen = c.model_type == "qwen2";
  const std::string family = qwen ? "Qwen2" : (c.model_type == "mistral" ? "Mistral" : "Llama");
  nlohmann::json j;
  j["architectures"] = {family + (c.num_labels > 0 ? "ForSequenceClassification" : "ForCausalLM")};
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.resolved_head_dim();
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["rope_scaling"] = nullptr;
  if (!c.rope_scaling.type.empty()) {
    const RopeScaling& r = c.rope_scaling;
    // "type" too: transformers before 4.43 read only that key.
    j["rope_scaling"] = {{"rope_type", r.type}, {"type", r.type}, {"factor", r.factor}};
    if (r.type == "llama3") {
      j["rope_scaling"]["low_freq_factor"] = r.low_freq_factor;
      j["rope_scaling"]["high_freq_factor"] = r.high_freq_factor;
      j["rope_scaling"]["original_max_position_embeddings"] = r.original_max_position_embeddings;
    }
  }
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  if (!qwen) {
    j["attention_bias"] = c.attention_bias;
    j["mlp_bias"] = false;
  }
  j["hidden_act"] = "silu";
  j["initializer_range"] = 0.02;
  j["use_cache"] = true;
  j["bos_token_id"] = c.bos_token_id >= 0 ? nlohmann::json(c.bos_token_id) : nlohmann::json();
  j["eos_token_id"] = c.eos_token_id;
  if (c.pad_token_id >= 0) j["pad_token_id"] = c.pad_token_id;
  j["torch_dtype"] = "float32";
  if (c.num_labels > 0) {
    j["num_labels"] = c.num_labels;
    nlohmann::json id2label, label2id;
    for (int64_t i = 0; i < c.num_labels; ++i) {
      id2label[std::to_string(i)] = "LABEL_" + std::to_string(i);
      label2id["LABEL_" + std::to_string(i)] = i;
    }
    j["id2label"] = id2label;
    j["label2id"] = label2id;
  }
  return j;
}

ModelConfig load_model_config(const std::string& dir) {
  check(is_directory(dir), path_exists(dir) ? dir + ": expected a model directory, found a file"
                                            : "model directory " + dir + " does not exist");
  const std::string path = dir + "/config.json";
  return model_config_from_hf_json(read_json_file(path), path);
}

}  // namespace tiller

namespace tiller {
namespace {

struct BuiltinShape {
  const char* name;
  int64_t vocab, hidden, intermediate, layers, heads, kv_heads, context;
};

// Every shape ties its embeddings.
constexpr BuiltinShape kBuiltinShapes[] = {
    {"stories260k", 512, 64, 172, 5, 8, 4, 512},
    {"llama-15m", 32000, 288, 768, 6, 6, 6, 256},  // llama2.c's stories15M
    {"llama-124m", 32000, 768, 2048, 12, 12, 12, 1024},
    // 513M parameters: a Llama 2 vocabulary, 24 layers of 1280 with 20 heads of 64 sharing 4 KV
    // heads, for the GPU benchmarks (PPO at a 0.5B shape).
    {"llama-500m", 32000, 1280, 4096, 24, 20, 4, 2048},
    // 1.04B parameters: Llama 3.2 1B's body (16 layers of 2048, 32 heads of 64 sharing 8 KV heads,
    // an MLP of 8192, tied embeddings) with Llama 2's 32000-token vocabulary and a 2048 context.
    {"llama-1b", 32000, 2048, 8192, 16, 32, 8, 2048},
};

}  // namespace

const std::vector<std::string>& builtin_shape_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const BuiltinShape& shape : kBuiltinShapes) out.emplace_back(shape.name);
    return out;
  }();
  return names;
}

ModelConfig builtin_shape(const std::string& name) {
  for (const BuiltinShape& shape : kBuiltinShapes) {
    if (name != shape.name) continue;
    ModelConfig c;
    c.tie_word_embeddings = true;
    c.vocab_size = shape.vocab, c.hidden_size = shape.hidden;
    c.intermediate_size = shape.intermediate, c.num_hidden_layers = shape.layers;
    c.num_attention_heads = shape.heads, c.num_key_value_heads = shape.kv_heads;
    c.max_position_embeddings = shape.context;
    c.validate("shape " + name);
    return c;
  }
  std::string known;
  for (const std::string& known_name : builtin_shape_names())
    known += (known.empty() ? "" : ", ") + known_name;
  throw Error("unknown model shape '" + name + "' (" + known + ")");
}
}  // namespace tiller
