#include "export/gguf.h"

#include <c10/util/Half.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "common/io/hf_dir.h"
#include "common/io/llama2c.h"
#include "common/model/model_config.h"
#include "common/tokenizer/byte_level_bpe.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "export/gguf_format.h"

namespace tiller {

namespace {

constexpr int64_t kBlock = 32;       // values per q8_0 / q4_0 block
constexpr uint64_t kAlignment = 32;  // general.alignment's default, written out

using namespace gguf_format;  // the metadata value types

// Little-endian appends (GGUF is little-endian; so is every machine Tiller builds for).
template <typename T>
void put(std::string& out, T value) {
  out.append(reinterpret_cast<const char*>(&value), sizeof(T));
}

void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}

uint16_t half_bits(float value) {
  return c10::Half(value).x;  // round to nearest even, as ggml's GGML_FP32_TO_FP16
}

// The key/value section, counted as it grows.
class Metadata {
 public:
  void text(const std::string& key, const std::string& value) {
    head(key, kString);
    put_string(bytes_, value);
  }
  void u32(const std::string& key, uint64_t value) {
    check(value <= UINT32_MAX, "gguf: " + key + " " + std::to_string(value) + " exceeds 32 bits");
    head(key, kU32);
    put<uint32_t>(bytes_, static_cast<uint32_t>(value));
  }
  void f32(const std::string& key, double value) {
    head(key, kF32);
    put<float>(bytes_, static_cast<float>(value));
  }
  void flag(const std::string& key, bool value) {
    head(key, kBool);
    put<uint8_t>(bytes_, value ? 1 : 0);
  }
  void texts(const std::string& key, const std::vector<std::string>& values) {
    array_head(key, kString, values.size());
    for (const auto& v : values) put_string(bytes_, v);
  }
  void f32s(const std::string& key, const std::vector<float>& values) {
    array_head(key, kF32, values.size());
    for (float v : values) put<float>(bytes_, v);
  }
  void i32s(const std::string& key, const std::vector<int32_t>& values) {
    array_head(key, kI32, values.size());
    for (int32_t v : values) put<int32_t>(bytes_, v);
  }
  uint64_t count() const { return count_; }
  const std::string& bytes() const { return bytes_; }

 private:
  void head(const std::string& key, uint32_t type) {
    put_string(bytes_, key);
    put<uint32_t>(bytes_, type);
    ++count_;
  }
  void array_head(const std::string& key, uint32_t element_type, size_t n) {
    head(key, kArray);
    put<uint32_t>(bytes_, element_type);
    put<uint64_t>(bytes_, n);
  }
  std::string bytes_;
  uint64_t count_ = 0;
};

struct TensorPlan {
  std::string name;    // llama.cpp's
  torch::Tensor data;  // fp32, contiguous, HF layout [rows, columns] or [n]
  GgmlType type;
  uint64_t offset = 0;  // from the start of the data section
};

GgmlType requested_type(const std::string& type) {
  static const std::map<std::string, GgmlType> types = {{"f32", GgmlType::F32},
                                                        {"f16", GgmlType::F16},
                                                        {"bf16", GgmlType::BF16},
                                                        {"q8_0", GgmlType::Q8_0},
                                                        {"q4_0", GgmlType::Q4_0}};
  const auto it = types.find(type);
  check(it != types.end(), "export: --type " + type + " is not one of f32, f16, bf16, q8_0, q4_0");
  return it->second;
}

// llama.cpp's LLAMA_FTYPE of a file mostly in `type`.
uint32_t file_type(GgmlType type) {
  switch (type) {
    case GgmlType::F32:
      return 0;
    case GgmlType::F16:
      return 1;
    case GgmlType::Q4_0:
      return 2;
    case GgmlType::Q8_0:
      return 7;
    case GgmlType::BF16:
      return 32;
  }
  return 0;
}

// The tensor's bytes as `dtype` (torch converts to f16 and bf16 rounding to nearest even, as ggml).
std::string bytes_as(const torch::Tensor& t, torch::ScalarType dtype) {
  const auto converted = t.to(dtype).contiguous();
  return std::string(static_cast<const char*>(converted.data_ptr()),
                     static_cast<size_t>(converted.numel() * converted.element_size()));
}

std::string encode(const TensorPlan& t) {
  switch (t.type) {
    case GgmlType::F32:
      return bytes_as(t.data, torch::kFloat);
    case GgmlType::F16:
      return bytes_as(t.data, torch::kHalf);
    case GgmlType::BF16:
      return bytes_as(t.data, torch::kBFloat16);
    case GgmlType::Q8_0:
      return quantize_q8_0(t.data.data_ptr<float>(), t.data.numel());
    case GgmlType::Q4_0:
      return quantize_q4_0(t.data.data_ptr<float>(), t.data.numel());
  }
  return {};
}

// What a llama.cpp "llama" model cannot hold, refused with the directory named.
void check_exportable(const ModelConfig& c, const std::string& dir) {
  const std::string where = "export: " + dir + ": ";
  check(c.num_labels == 0, where + "a model with a score head (a reward model) is not a causal LM");
  check(!c.attention_bias,
        where + "attention biases (" + c.model_type + ") are not exported to GGUF yet");
  check(c.rope_scaling.type.empty(),
        where + "RoPE scaling \"" + c.rope_scaling.type + "\" is not exported to GGUF yet");
  check(c.resolved_head_dim() * c.num_attention_heads == c.hidden_size,
        where + "a head_dim other than hidden_size / num_attention_heads is not exported yet");
}

void put_llama_metadata(Metadata& m, const ModelConfig& c, const std::string& name, GgmlType type) {
  m.text("general.architecture", "llama");
  m.text("general.name", name);
  m.u32("general.alignment", kAlignment);
  m.u32("general.file_type", file_type(type));
  if (type == GgmlType::Q8_0 || type == GgmlType::Q4_0) m.u32("general.quantization_version", 2);
  m.u32("llama.vocab_size", c.vocab_size);
  m.u32("llama.context_length", c.max_position_embeddings);
  m.u32("llama.embedding_length", c.hidden_size);
  m.u32("llama.block_count", c.num_hidden_layers);
  m.u32("llama.feed_forward_length", c.intermediate_size);
  m.u32("llama.rope.dimension_count", c.resolved_head_dim());
  m.u32("llama.attention.head_count", c.num_attention_heads);
  m.u32("llama.attention.head_count_kv", c.num_key_value_heads);
  m.f32("llama.attention.layer_norm_rms_epsilon", c.rms_norm_eps);
  m.f32("llama.rope.freq_base", c.rope_theta);
}

// The BOS, EOS, unknown and padding ids, where the vocabulary has them.
void put_special_ids(Metadata& m, int64_t bos, int64_t eos, int64_t unk, int64_t pad) {
  for (const auto& [key, id] : {std::pair{"tokenizer.ggml.bos_token_id", bos},
                                std::pair{"tokenizer.ggml.eos_token_id", eos},
                                std::pair{"tokenizer.ggml.unknown_token_id", unk},
                                std::pair{"tokenizer.ggml.padding_token_id", pad}})
    if (id >= 0) m.u32(key, static_cast<uint64_t>(id));
}

// SentencePiece as llama.cpp's "llama" vocabulary: pieces, scores and token types.
void put_sentencepiece(Metadata& m, const Tokenizer& tok) {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<int32_t> kinds;
  for (int64_t id = 0; id < tok.vocab_size(); ++id) {
    auto entry = tok.sentencepiece_entry(id);
    pieces.push_back(std::move(entry.piece));
    scores.push_back(entry.score);
    kinds.push_back(entry.kind);
  }
  m.text("tokenizer.ggml.model", "llama");
  m.text("tokenizer.ggml.pre", "default");
  m.texts("tokenizer.ggml.tokens", pieces);
  m.f32s("tokenizer.ggml.scores", scores);
  m.i32s("tokenizer.ggml.token_type", kinds);
  put_special_ids(m, tok.bos_id(), tok.eos_id(), tok.unk_id(), tok.pad_id());
  m.flag("tokenizer.ggml.add_bos_token", true);
  m.flag("tokenizer.ggml.add_eos_token", false);
}

// A byte-level BPE pre-tokenizer in words, its Sequence flattened: what is compared with the
// pre-tokenizers llama.cpp names, and what a refusal quotes.
void describe_pre_tokenizer(const nlohmann::json& step, std::vector<std::string>& out) {
  const auto flag = [&step](const char* key, bool fallback) {
    return step.contains(key) && step[key].is_boolean() ? step[key].get<bool>() : fallback;
  };
  const std::string type = step.value("type", "");
  if (type == "Sequence") {
    for (const auto& inner : step.value("pretokenizers", nlohmann::json::array()))
      describe_pre_tokenizer(inner, out);
  } else if (type == "ByteLevel") {  // transformers' defaults: both true
    out.push_back(std::string("ByteLevel(add_prefix_space=") +
                  (flag("add_prefix_space", true) ? "true" : "false") +
                  ", use_regex=" + (flag("use_regex", true) ? "true" : "false") + ")");
  } else if (type == "Digits") {
    out.push_back(std::string("Digits(individual_digits=") +
                  (flag("individual_digits", false) ? "true" : "false") + ")");
  } else if (type == "Split") {
    const auto pattern = step.value("pattern", nlohmann::json::object());
    out.push_back(pattern.contains("Regex") ? "Split(Regex " + pattern["Regex"].dump() + ")"
                                            : "Split(String " + pattern.value("String", "") + ")");
  } else {
    out.push_back(type);
  }
}

// tokenizer.ggml.pre: the name llama.cpp gives the pre-tokenizer (llama-vocab.cpp chooses its
// split regexes by it). llama.cpp's converter (convert_hf_to_gguf.py, get_vocab_base_pre) names
// it by hashing the ids of a fixed text, which only works for the exact published vocabularies;
// Tiller names it by the pre-tokenizer itself, for the ones whose regexes llama.cpp's named
// pre-types reproduce: GPT-2's ByteLevel split ("gpt-2"), Llama 3's ("llama-bpe"), Qwen2's
// ("qwen2", Llama 3's with single digits) and SmolLM's (digits one by one, then GPT-2's:
// "smollm"). Llama 3's and Qwen2's regexes are accepted as tokenizer.json writes them ("(?i:...)")
// and as llama-vocab.cpp spells them out ("'[sS]|...").
std::string llama_cpp_pre_name(const ByteLevelBpe& bpe, const std::string& where) {
  std::vector<std::string> steps;
  describe_pre_tokenizer(nlohmann::json::parse(bpe.pre_tokenizer_json()), steps);
  std::string described;
  for (const auto& step : steps) described += (described.empty() ? "" : " + ") + step;

  const std::string gpt2 = "ByteLevel(add_prefix_space=false, use_regex=true)";
  const std::string split_then_bytes = "ByteLevel(add_prefix_space=false, use_regex=false)";
  const auto split = [&](const std::string& contractions, const std::string& digits) {
    const std::string regex = contractions + R"(|[^\r\n\p{L}\p{N}]?\p{L}+|)" + digits +
                              R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    return "Split(Regex " + nlohmann::json(regex).dump() + ") + " + split_then_bytes;
  };
  const std::string folded = "(?i:'s|'t|'re|'ve|'m|'ll|'d)";
  const std::string spelled = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";
  const std::vector<std::pair<std::string, std::string>> named = {
      {gpt2, "gpt-2"},
      {split(folded, R"(\p{N}{1,3})"), "llama-bpe"},
      {split(spelled, R"(\p{N}{1,3})"), "llama-bpe"},
      {split(folded, R"(\p{N})"), "qwen2"},
      {split(spelled, R"(\p{N})"), "qwen2"},
      {"Digits(individual_digits=true) + " + gpt2, "smollm"}};
  for (const auto& [pre_tokenizer, name] : named)
    if (pre_tokenizer == described) return name;
  throw Error(where + ": its pre-tokenizer " + described +
              " is not one llama.cpp names (gpt-2, llama-bpe, qwen2, smollm); a GGUF would be "
              "tokenized differently by llama.cpp");
}

// An added token llama.cpp's converter types as control although not flagged special
// (convert_hf_to_gguf.py, does_token_look_special).
bool looks_special(const std::string& token) {
  const auto wrapped = [&token](const std::string& open, const std::string& close) {
    return token.size() >= open.size() + close.size() && token.compare(0, open.size(), open) == 0 &&
           token.compare(token.size() - close.size(), close.size(), close) == 0;
  };
  return token == "<pad>" || token == "<mask>" || token == "<2mass>" || token == "[@BOS@]" ||
         wrapped("<|", "|>") || wrapped("<\xEF\xBD\x9C", "\xEF\xBD\x9C>") ||
         wrapped("<unused", ">");
}

// The id of a special token as gguf-py's SpecialVocab finds it: tokenizer_config.json's
// `{kind}_token` (a string or {"content": ...}) when an added token has that content, else
// config.json's `{kind}_token_id`; -1 when neither names one.
int64_t special_id(const nlohmann::json& tokenizer_config, const nlohmann::json& config,
                   const std::string& kind, const ByteLevelBpe& bpe, int64_t vocab_size,
                   const std::string& dir) {
  const auto named = tokenizer_config.find(kind + "_token");
  std::string content;
  if (named != tokenizer_config.end() && named->is_string()) content = named->get<std::string>();
  if (named != tokenizer_config.end() && named->is_object() && named->contains("content") &&
      (*named)["content"].is_string())
    content = (*named)["content"].get<std::string>();
  const int64_t id = content.empty() ? -1 : bpe.id_of(content);
  if (id >= 0 && bpe.entry(id).added) return id;
  const auto numbered = config.find(kind + "_token_id");
  if (numbered == config.end() || !numbered->is_number_integer()) return -1;
  const auto value = numbered->get<int64_t>();
  check(value >= 0 && value < vocab_size,
        "export: " + dir + "/config.json: " + kind + "_token_id " + std::to_string(value) +
            " is not an id of the vocabulary (0.." + std::to_string(vocab_size - 1) + ")");
  return value;
}

// Byte-level BPE as llama.cpp's "gpt2" vocabulary (convert_hf_to_gguf.py, _set_vocab_gpt2 and
// get_vocab_base; gguf-py's SpecialVocab for merges and special ids): every id up to the
// model's vocab_size, as tokenizer.json spells it; ids with no token "[PAD{id}]", unused.
void put_byte_level_bpe(Metadata& m, const Tokenizer& tok, const ModelConfig& c,
                        const std::string& dir) {
  const ByteLevelBpe bpe(tok.path());  // the Tokenizer keeps its own reader private
  const std::string pre = llama_cpp_pre_name(bpe, "export: " + tok.path());
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  for (int64_t id = 0; id < c.vocab_size; ++id) {
    const ByteLevelBpe::Entry entry = id < bpe.vocab_size() ? bpe.entry(id) : ByteLevelBpe::Entry{};
    if (entry.text.empty()) {
      tokens.push_back("[PAD" + std::to_string(id) + "]");
      types.push_back(5);  // unused
    } else {
      types.push_back(!entry.added ? 1 : (entry.special || looks_special(entry.text)) ? 3 : 4);
      tokens.push_back(entry.text);
    }
  }
  m.text("tokenizer.ggml.model", "gpt2");
  m.text("tokenizer.ggml.pre", pre);
  m.texts("tokenizer.ggml.tokens", tokens);
  m.i32s("tokenizer.ggml.token_type", types);
  m.texts("tokenizer.ggml.merges", bpe.merges());

  const std::string config_path = dir + "/tokenizer_config.json";
  const nlohmann::json tokenizer_config =
      path_exists(config_path) ? read_json_file(config_path) : nlohmann::json::object();
  const nlohmann::json config = read_json_file(dir + "/config.json");
  const auto id = [&](const std::string& kind) {
    return special_id(tokenizer_config, config, kind, bpe, c.vocab_size, dir);
  };
  put_special_ids(m, id("bos"), id("eos"), id("unk"), id("pad"));
  // Whether BOS is added as transformers adds it (the post-processor's template, or
  // add_bos_token): the tokenizer already decided.
  m.flag("tokenizer.ggml.add_bos_token", tok.bos_id() >= 0);
  const auto add_eos = tokenizer_config.find("add_eos_token");
  m.flag("tokenizer.ggml.add_eos_token",
         add_eos != tokenizer_config.end() && add_eos->is_boolean() && add_eos->get<bool>());
}

// tokenizer_config.json's chat_template, which llama.cpp applies: one template as
// tokenizer.chat_template; a list of named ones as gguf-py's add_chat_template writes them (the
// one named "default" as tokenizer.chat_template, each other as tokenizer.chat_template.NAME,
// their names in tokenizer.chat_templates).
void put_chat_template(Metadata& m, const std::string& tokenizer_dir) {
  const std::string path = tokenizer_dir + "/tokenizer_config.json";
  if (!path_exists(path)) return;
  const nlohmann::json config = read_json_file(path);
  const auto templates = config.find("chat_template");
  if (templates == config.end() || templates->is_null()) return;
  if (templates->is_string()) {
    m.text("tokenizer.chat_template", templates->get<std::string>());
    return;
  }
  check(templates->is_array(),
        "export: " + path + ": chat_template is neither a string nor a list of named templates");
  std::vector<std::string> names;
  std::string fallback;
  for (const auto& choice : *templates) {
    check(choice.is_object() && choice.value("name", nlohmann::json()).is_string() &&
              choice.value("template", nlohmann::json()).is_string(),
          "export: " + path + ": a chat_template entry is not {\"name\": ..., \"template\": ...}");
    std::string name = choice["name"].get<std::string>();
    for (char& ch : name)
      if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
    if (name.empty()) continue;
    if (name == "default") {
      fallback = choice["template"].get<std::string>();
    } else if (std::find(names.begin(), names.end(), name) == names.end()) {
      names.push_back(name);
      m.text("tokenizer.chat_template." + name, choice["template"].get<std::string>());
    }
  }
  if (!names.empty()) m.texts("tokenizer.chat_templates", names);
  if (!fallback.empty()) m.text("tokenizer.chat_template", fallback);
}

// HF weight names -> llama.cpp's, q and k rows back in Meta's interleaved rotary order.
std::vector<TensorPlan> plan_tensors(const ModelConfig& c,
                                     const std::map<std::string, torch::Tensor>& hf, GgmlType type,
                                     std::vector<std::string>& f16_instead) {
  std::vector<TensorPlan> plans;
  const auto add = [&](const std::string& name, torch::Tensor t) {
    t = t.to(torch::kFloat).contiguous();
    GgmlType chosen = t.dim() == 1 ? GgmlType::F32 : type;
    const bool blocks = chosen == GgmlType::Q8_0 || chosen == GgmlType::Q4_0;
    if (blocks && t.size(-1) % kBlock != 0) {
      chosen = GgmlType::F16;
      f16_instead.push_back(name);
    }
    plans.push_back({name, t, chosen});
  };
  const auto weight = [&](const std::string& name) {
    const auto it = hf.find(name);
    check(it != hf.end(), "export: the model has no weight " + name);
    return it->second;
  };
  add("token_embd.weight", weight("model.embed_tokens.weight"));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string hf_layer = "model.layers." + std::to_string(l) + ".";
    const std::string blk = "blk." + std::to_string(l) + ".";
    add(blk + "attn_norm.weight", weight(hf_layer + "input_layernorm.weight"));
    add(blk + "attn_q.weight",
        permute_to_meta(weight(hf_layer + "self_attn.q_proj.weight"), c.num_attention_heads));
    add(blk + "attn_k.weight",
        permute_to_meta(weight(hf_layer + "self_attn.k_proj.weight"), c.num_key_value_heads));
    add(blk + "attn_v.weight", weight(hf_layer + "self_attn.v_proj.weight"));
    add(blk + "attn_output.weight", weight(hf_layer + "self_attn.o_proj.weight"));
    add(blk + "ffn_norm.weight", weight(hf_layer + "post_attention_layernorm.weight"));
    add(blk + "ffn_gate.weight", weight(hf_layer + "mlp.gate_proj.weight"));
    add(blk + "ffn_up.weight", weight(hf_layer + "mlp.up_proj.weight"));
    add(blk + "ffn_down.weight", weight(hf_layer + "mlp.down_proj.weight"));
  }
  add("output_norm.weight", weight("model.norm.weight"));
  // Tied: no output.weight; llama.cpp then reads token_embd for the head.
  if (!c.tie_word_embeddings) add("output.weight", weight("lm_head.weight"));
  return plans;
}

uint64_t aligned(uint64_t offset) {
  return (offset + kAlignment - 1) / kAlignment * kAlignment;
}

}  // namespace

int64_t ggml_bytes(GgmlType type, int64_t count) {
  switch (type) {
    case GgmlType::F32:
      return count * 4;
    case GgmlType::F16:
    case GgmlType::BF16:
      return count * 2;
    case GgmlType::Q8_0:
      return count / kBlock * (2 + kBlock);
    case GgmlType::Q4_0:
      return count / kBlock * (2 + kBlock / 2);
  }
  return 0;
}

std::string quantize_q8_0(const float* x, int64_t count) {
  check(count % kBlock == 0, "quantize_q8_0: the values are not whole blocks of 32");
  std::string out;
  out.reserve(static_cast<size_t>(ggml_bytes(GgmlType::Q8_0, count)));
  for (int64_t b = 0; b < count; b += kBlock) {
    float amax = 0;
    for (int64_t j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(x[b + j]));
    const float d = amax / 127.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    put<uint16_t>(out, half_bits(d));
    for (int64_t j = 0; j < kBlock; ++j)
      put<int8_t>(out, static_cast<int8_t>(std::round(x[b + j] * id)));
  }
  return out;
}

std::string quantize_q4_0(const float* x, int64_t count) {
  check(count % kBlock == 0, "quantize_q4_0: the values are not whole blocks of 32");
  std::string out;
  out.reserve(static_cast<size_t>(ggml_bytes(GgmlType::Q4_0, count)));
  for (int64_t b = 0; b < count; b += kBlock) {
    float amax = 0, max = 0;
    for (int64_t j = 0; j < kBlock; ++j)
      if (amax < std::fabs(x[b + j])) {
        amax = std::fabs(x[b + j]);
        max = x[b + j];
      }
    const float d = max / -8.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    put<uint16_t>(out, half_bits(d));
    for (int64_t j = 0; j < kBlock / 2; ++j) {
      // As ggml: truncation after adding 8.5 is rounding to nearest, then clamped to 15.
      const auto low = std::min<int>(15, static_cast<int8_t>(x[b + j] * id + 8.5f));
      const auto high = std::min<int>(15, static_cast<int8_t>(x[b + kBlock / 2 + j] * id + 8.5f));
      put<uint8_t>(out, static_cast<uint8_t>(low | (high << 4)));
    }
  }
  return out;
}

GgufExportSummary export_gguf(const std::string& model_dir, const std::string& type_name,
                              const std::string& out_path) {
  const GgmlType type = requested_type(type_name);
  const ModelConfig config = load_model_config(model_dir);
  check_exportable(config, model_dir);
  const Tokenizer tok(tokenizer_path_in(model_dir));
  tok.check_matches(config, model_dir);

  Metadata metadata;
  std::string name = model_dir;
  while (name.size() > 1 && name.back() == '/') name.pop_back();
  name = name.substr(name.find_last_of('/') + 1);
  put_llama_metadata(metadata, config, name, type);
  if (tok.is_sentencepiece())
    put_sentencepiece(metadata, tok);
  else
    put_byte_level_bpe(metadata, tok, config, model_dir);
  put_chat_template(metadata, std::filesystem::path(tok.path()).parent_path().string());

  GgufExportSummary summary;
  summary.type = type_name;
  std::map<std::string, torch::Tensor> weights;
  {
    Transformer model =
        load_hf_model(model_dir, /*num_labels=*/-1,
                      QuantizedModels::load_frozen);  // every shape checked against config.json
    for (auto& [weight_name, tensor] : model->named_weights()) weights[weight_name] = tensor;
  }
  std::vector<TensorPlan> tensors = plan_tensors(config, weights, type, summary.f16_instead);
  std::string head;
  head += "GGUF";
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors.size());
  put<uint64_t>(head, metadata.count());
  head += metadata.bytes();
  uint64_t offset = 0;
  for (auto& t : tensors) {
    t.offset = offset;
    put_string(head, t.name);
    put<uint32_t>(head, static_cast<uint32_t>(t.data.dim()));
    for (int64_t d = t.data.dim() - 1; d >= 0; --d)
      put<uint64_t>(head, t.data.size(d));  // ne0 first
    put<uint32_t>(head, static_cast<uint32_t>(t.type));
    put<uint64_t>(head, t.offset);
    offset = aligned(offset + static_cast<uint64_t>(ggml_bytes(t.type, t.data.numel())));
  }
  head.resize(aligned(head.size()), '\0');

  AtomicFileWriter file(out_path);
  file.write(head.data(), head.size());
  uint64_t written = 0;
  for (const auto& t : tensors) {
    const std::string padding(t.offset - written, '\0');
    file.write(padding.data(), padding.size());
    const std::string bytes = encode(t);
    file.write(bytes.data(), bytes.size());
    written = t.offset + bytes.size();
  }
  file.commit();
  summary.tensors = static_cast<int64_t>(tensors.size());
  summary.bytes = static_cast<int64_t>(head.size() + written);
  return summary;
}

}  // namespace tiller
