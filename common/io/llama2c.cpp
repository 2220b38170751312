#include "common/io/llama2c.h"

#include <cstring>

#include <functional>
#include <limits>

#include "common/io/hf_dir.h"
#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

namespace {

constexpr uint32_t kMagicV1 = 0x616b3432;  // "ak42"
constexpr size_t kHeaderV1 = 256;

// A bounds-checked cursor over the file's bytes.
class Reader {
 public:
  Reader(const std::string& bytes, std::string path) : bytes_(bytes), path_(std::move(path)) {}

  template <typename T>
  T scalar(const char* what) {
    need(sizeof(T), what);
    T value;
    std::memcpy(&value, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }

  // Reads numel float32 values as a tensor of `shape`.
  torch::Tensor floats(std::vector<int64_t> shape, const std::string& what) {
    int64_t numel = 1;
    for (auto d : shape) numel *= d;
    const size_t bytes = static_cast<size_t>(numel) * sizeof(float);
    need(bytes, what.c_str());
    auto t = torch::empty(shape, torch::kFloat);
    std::memcpy(t.data_ptr(), bytes_.data() + pos_, bytes);
    pos_ += bytes;
    return t;
  }

  void skip(size_t bytes, const char* what) {
    need(bytes, what);
    pos_ += bytes;
  }
  void seek(size_t pos) { pos_ = pos; }
  size_t position() const { return pos_; }
  size_t size() const { return bytes_.size(); }

 private:
  void need(size_t n, const char* what) {
    check(n <= bytes_.size() && pos_ <= bytes_.size() - n,
          path_ + ": file ends inside " + what + " (at byte " + std::to_string(pos_) + " of " +
              std::to_string(bytes_.size()) + ", needs " + std::to_string(n) +
              " more): truncated or not a llama2.c checkpoint");
  }
  const std::string& bytes_;
  std::string path_;
  size_t pos_ = 0;
};

// Meta's interleaved rotary pairs -> HF rotate_half halves, per head (rows of wq / wk).
torch::Tensor permute_to_hf(const torch::Tensor& w, int64_t heads) {
  const int64_t rows = w.size(0), cols = w.size(1);
  return w.view({heads, rows / heads / 2, 2, cols}).transpose(1, 2).reshape({rows, cols});
}

struct Llama2cHeader {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

ModelConfig config_from_header(const Llama2cHeader& h, bool shared, const std::string& path) {
  auto positive = [&](int32_t v, const char* name) {
    check(v > 0, path + ": header field " + name + " is " + std::to_string(v) +
                     ", expected a positive value: not a llama2.c checkpoint");
  };
  positive(h.dim, "dim");
  positive(h.hidden_dim, "hidden_dim");
  positive(h.n_layers, "n_layers");
  positive(h.n_heads, "n_heads");
  positive(h.n_kv_heads, "n_kv_heads");
  positive(h.vocab_size, "vocab_size");
  positive(h.seq_len, "seq_len");
  ModelConfig c;
  c.model_type = "llama";
  c.hidden_size = h.dim;
  c.intermediate_size = h.hidden_dim;
  c.num_hidden_layers = h.n_layers;
  c.num_attention_heads = h.n_heads;
  c.num_key_value_heads = h.n_kv_heads;
  c.vocab_size = h.vocab_size;
  c.max_position_embeddings = h.seq_len;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = shared;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  c.validate(path);
  return c;
}

// Bytes of fp32 weights the format holds for this config (legacy adds the RoPE tables).
uint64_t expected_weight_bytes(const ModelConfig& c, bool legacy) {
  const uint64_t d = c.hidden_size, h = c.intermediate_size, l = c.num_hidden_layers,
                 v = c.vocab_size, kv = c.num_key_value_heads * c.resolved_head_dim(),
                 s = c.max_position_embeddings, hd = c.resolved_head_dim();
  uint64_t floats = v * d + l * (2 * d + d * d * 2 + 2 * kv * d + 3 * h * d) + d;
  if (legacy) floats += s * hd;  // freq_cis_real + freq_cis_imag, each [S, hd/2]
  if (!c.tie_word_embeddings) floats += v * d;
  return floats * 4;
}

}  // namespace

torch::Tensor permute_to_meta(const torch::Tensor& w, int64_t heads) {
  const int64_t rows = w.size(0), cols = w.size(1);
  return w.view({heads, 2, rows / heads / 2, cols}).transpose(1, 2).reshape({rows, cols});
}

Transformer import_llama2c(const std::string& path) {
  return import_llama2c_bytes(read_file(path), path);
}

Transformer import_llama2c_bytes(const std::string& bytes, const std::string& path) {
  Reader in(bytes, path);
  uint32_t magic = in.scalar<uint32_t>("the header");
  const bool v1 = magic == kMagicV1;
  Llama2cHeader h{};
  bool shared = false;
  if (v1) {
    int32_t version = in.scalar<int32_t>("the header");
    check(version == 1, path + ": llama2.c format version " + std::to_string(version) +
                            " is not supported (legacy and version 1, fp32, are)");
    h = in.scalar<Llama2cHeader>("the header");
    shared = in.scalar<uint8_t>("the header") != 0;
    in.seek(0);
    in.skip(kHeaderV1, "the 256-byte header");
  } else {
    in.seek(0);
    h = in.scalar<Llama2cHeader>("the header");
    // Legacy: a negative vocab_size means an unshared classifier follows.
    shared = h.vocab_size > 0;
    // -INT32_MIN overflows (undefined behaviour); no real vocabulary is that large.
    check(h.vocab_size != std::numeric_limits<int32_t>::min(),
          path + ": header field vocab_size is " + std::to_string(h.vocab_size) +
              ", out of range: not a llama2.c checkpoint");
    h.vocab_size = h.vocab_size < 0 ? -h.vocab_size : h.vocab_size;
  }
  ModelConfig c = config_from_header(h, shared, path);
  const uint64_t expected = expected_weight_bytes(c, !v1) + in.position();
  check(bytes.size() == expected,
        path + ": file is " + std::to_string(bytes.size()) + " bytes but a llama2.c " +
            (v1 ? "v1" : "legacy") + " checkpoint of this shape (dim " + std::to_string(h.dim) +
            ", layers " + std::to_string(h.n_layers) + ", vocab " + std::to_string(h.vocab_size) +
            ") is " + std::to_string(expected) + " bytes");

  const int64_t L = c.num_hidden_layers, D = c.hidden_size, H = c.intermediate_size,
                V = c.vocab_size, KV = c.num_key_value_heads * c.resolved_head_dim(),
                S = c.max_position_embeddings, HD = c.resolved_head_dim();
  torch::Tensor emb, att_norm, ffn_norm, wq, wk, wv, wo, w1, w2, w3, final_norm, classifier;
  if (v1) {
    att_norm = in.floats({L, D}, "attention_norm");
    ffn_norm = in.floats({L, D}, "ffn_norm");
    final_norm = in.floats({D}, "final norm");
    emb = in.floats({V, D}, "token_embedding");
  } else {
    emb = in.floats({V, D}, "token_embedding");
    att_norm = in.floats({L, D}, "attention_norm");
  }
  wq = in.floats({L, D, D}, "wq");
  wk = in.floats({L, KV, D}, "wk");
  wv = in.floats({L, KV, D}, "wv");
  wo = in.floats({L, D, D}, "wo");
  if (!v1) ffn_norm = in.floats({L, D}, "ffn_norm");
  w1 = in.floats({L, H, D}, "w1");
  w2 = in.floats({L, D, H}, "w2");
  w3 = in.floats({L, H, D}, "w3");
  if (!v1) {
    final_norm = in.floats({D}, "final norm");
    in.skip(static_cast<size_t>(S * HD) * sizeof(float), "freq_cis tables");
  }
  if (!shared) classifier = in.floats({V, D}, "classifier");

  std::map<std::string, torch::Tensor> w;
  w["model.embed_tokens.weight"] = emb;
  w["model.norm.weight"] = final_norm;
  if (!shared) w["lm_head.weight"] = classifier;
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    w[p + "input_layernorm.weight"] = att_norm[l];
    w[p + "post_attention_layernorm.weight"] = ffn_norm[l];
    w[p + "self_attn.q_proj.weight"] = permute_to_hf(wq[l], c.num_attention_heads);
    w[p + "self_attn.k_proj.weight"] = permute_to_hf(wk[l], c.num_key_value_heads);
    w[p + "self_attn.v_proj.weight"] = wv[l];
    w[p + "self_attn.o_proj.weight"] = wo[l];
    w[p + "mlp.gate_proj.weight"] = w1[l];
    w[p + "mlp.down_proj.weight"] = w2[l];
    w[p + "mlp.up_proj.weight"] = w3[l];
  }
  Transformer model(c);
  load_weights(*model, w, path);
  model->eval();
  return model;
}

void export_llama2c(TransformerImpl& model, const std::string& path) {
  const ModelConfig& c = model.config;
  check(c.num_labels == 0, "llama2.c export needs a causal LM, not a model with a score head");
  check(!c.attention_bias, "llama2.c has no attention biases; cannot export this model");
  check(c.rope_scaling.type.empty(),
        "llama2.c has no rope_scaling; cannot export this model (rope_scaling " +
            c.rope_scaling.type + ")");
  check(c.resolved_head_dim() * c.num_attention_heads == c.hidden_size,
        "llama2.c needs head_dim * heads == dim");
  std::map<std::string, torch::Tensor> w;
  for (auto& [name, t] : model.named_weights()) w[name] = t.detach().to(torch::kFloat).contiguous();

  std::string out;
  auto put_floats = [&](const torch::Tensor& t) {
    auto c = t.contiguous();
    out.append(static_cast<const char*>(c.data_ptr()), c.numel() * sizeof(float));
  };
  Llama2cHeader h{static_cast<int32_t>(c.hidden_size),
                  static_cast<int32_t>(c.intermediate_size),
                  static_cast<int32_t>(c.num_hidden_layers),
                  static_cast<int32_t>(c.num_attention_heads),
                  static_cast<int32_t>(c.num_key_value_heads),
                  static_cast<int32_t>(c.vocab_size),
                  static_cast<int32_t>(c.max_position_embeddings)};
  if (!c.tie_word_embeddings) h.vocab_size = -h.vocab_size;
  out.append(reinterpret_cast<const char*>(&h), sizeof(h));

  const int64_t L = c.num_hidden_layers;
  auto layer = [&](int64_t l, const std::string& name) {
    return w.at("model.layers." + std::to_string(l) + "." + name);
  };
  auto each_layer = [&](const std::function<torch::Tensor(int64_t)>& get) {
    for (int64_t l = 0; l < L; ++l) put_floats(get(l));
  };
  put_floats(w.at("model.embed_tokens.weight"));
  each_layer([&](int64_t l) { return layer(l, "input_layernorm.weight"); });
  each_layer([&](int64_t l) {
    return permute_to_meta(layer(l, "self_attn.q_proj.weight"), c.num_attention_heads);
  });
  each_layer([&](int64_t l) {
    return permute_to_meta(layer(l, "self_attn.k_proj.weight"), c.num_key_value_heads);
  });
  each_layer([&](int64_t l) { return layer(l, "self_attn.v_proj.weight"); });
  each_layer([&](int64_t l) { return layer(l, "self_attn.o_proj.weight"); });
  each_layer([&](int64_t l) { return layer(l, "post_attention_layernorm.weight"); });
  each_layer([&](int64_t l) { return layer(l, "mlp.gate_proj.weight"); });
  each_layer([&](int64_t l) { return layer(l, "mlp.down_proj.weight"); });
  each_layer([&](int64_t l) { return layer(l, "mlp.up_proj.weight"); });
  put_floats(w.at("model.norm.weight"));
  // The RoPE tables llama2.c once stored (unused by readers, kept for the format's size).
  const int64_t hd = c.resolved_head_dim();
  auto freqs = 1.0 / torch::pow(torch::tensor(c.rope_theta, torch::kFloat),
                                torch::arange(0, hd, 2, torch::kFloat) / static_cast<double>(hd));
  auto angles = torch::outer(torch::arange(c.max_position_embeddings, torch::kFloat), freqs);
  put_floats(angles.cos());
  put_floats(angles.sin());
  if (!c.tie_word_embeddings) put_floats(w.at("lm_head.weight"));
  write_file_atomic(path, out);
}

}  // namespace tiller
