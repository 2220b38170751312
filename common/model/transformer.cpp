#include "common/model/transformer.h"

#include "common/dist/tensor_parallel.h"
#include "common/model/activation_checkpoint.h"
#include "common/model/attention_mask.h"
#include "common/model/fused_attention.h"
#include "common/model/fused_linear.h"
#include "common/model/fused_rms_norm.h"
#include "common/model/fused_rotary.h"
#include "common/model/fused_swiglu.h"
#include "common/model/lora.h"
#include "common/torch_compat.h"
#include "common/util/error.h"
#include "common/util/runtime.h"

namespace tiller {

namespace F = torch::nn::functional;

KVCache::KVCache(const ModelConfig& config, int64_t batch, int64_t capacity,
                 torch::TensorOptions options) {
  const int64_t hd = config.resolved_head_dim();
  check_fits_in_memory(
      2.0 * static_cast<double>(config.num_hidden_layers) * batch * config.num_key_value_heads *
          capacity * hd *
          static_cast<double>(c10::elementSize(c10::typeMetaToScalarType(options.dtype()))),
      "a KV cache of " + std::to_string(batch) + " rows x " + std::to_string(capacity) +
          " positions");
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    keys.push_back(torch::zeros({batch, config.num_key_value_heads, capacity, hd}, options));
    values.push_back(torch::zeros({batch, config.num_key_value_heads, capacity, hd}, options));
  }
  key_valid = torch::zeros({batch, capacity}, options.dtype(torch::kBool));
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  return rms_norm(x, weight, eps);
}

// ---------------------------------------------------------------------------------------------
// Rotary embedding

Rotary::Rotary(int64_t head_dim, double theta, const RopeScaling& scaling) {
  auto exponents = torch::arange(0, head_dim, 2, torch::kFloat) / static_cast<double>(head_dim);
  inv_freq = 1.0 / torch::pow(torch::tensor(theta, torch::kFloat), exponents);
  if (scaling.type == "linear") {
    inv_freq = inv_freq / scaling.factor;
  } else if (scaling.type == "llama3") {
    // transformers' _compute_llama3_parameters, in float32 as there: wavelengths longer than the
    // original context / low_freq_factor are stretched by factor, those shorter than
    // context / high_freq_factor kept, the band between blended linearly in context / wavelength.
    const double context = static_cast<double>(scaling.original_max_position_embeddings);
    const double low = scaling.low_freq_factor, high = scaling.high_freq_factor;
    const auto wavelength = 2 * M_PI / inv_freq;
    const auto smooth = (context / wavelength - low) / (high - low);
    const auto blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq;
    inv_freq = torch::where(wavelength > context / low, inv_freq / scaling.factor,
                            torch::where(wavelength < context / high, inv_freq, blended));
  }
}

std::pair<torch::Tensor, torch::Tensor> Rotary::tables(const torch::Tensor& positions) {
  if (inv_freq.device() != positions.device()) inv_freq = inv_freq.to(positions.device());
  auto freqs = positions.to(torch::kFloat).unsqueeze(-1) * inv_freq;  // [B, T, hd/2]
  auto angles = torch::cat({freqs, freqs}, -1).unsqueeze(1);          // [B, 1, T, hd]
  return {angles.cos(), angles.sin()};
}

namespace {

// [B, n_kv, S, hd] -> [B, n_kv * rep, S, hd], each kv head repeated for its query group.
torch::Tensor repeat_kv(const torch::Tensor& x, int64_t rep) {
  if (rep == 1) return x;
  const auto b = x.size(0), h = x.size(1), s = x.size(2), d = x.size(3);
  return x.unsqueeze(2).expand({b, h, rep, s, d}).reshape({b, h * rep, s, d});
}

// A projection's output with its LoRA adapter's share added, when the layer has one.
torch::Tensor adapted(const LoraAdaptersImpl* lora, int64_t layer, const char* target,
                      const torch::Tensor& base, const torch::Tensor& input) {
  if (lora == nullptr) return base;
  const LoraLinear* adapter = lora->find(layer, target);
  return adapter == nullptr ? base : adapter->add_to(base, input);
}

// t's entries at `positions` [B, K] (int64, indices into dimension `dim`), the other dimensions
// kept: a [B, ..., T, ...] tensor becomes [B, ..., K, ...]. A t of batch 1 serves every row.
torch::Tensor at_positions(const torch::Tensor& t, const torch::Tensor& positions, int64_t dim) {
  const auto d = static_cast<size_t>(dim);
  std::vector<int64_t> batch_shape = t.sizes().vec();
  batch_shape[0] = positions.size(0);
  std::vector<int64_t> shape = batch_shape, index_shape(batch_shape.size(), 1);
  shape[d] = index_shape[d] = positions.size(1);
  index_shape[0] = positions.size(0);
  return t.expand(batch_shape).gather(dim, positions.view(index_shape).expand(shape));
}

torch::nn::Linear linear(int64_t in, int64_t out, bool bias) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Attention

AttentionImpl::AttentionImpl(const ModelConfig& c)
    : n_heads(c.num_attention_heads),
      n_kv_heads(c.num_key_value_heads),
      head_dim(c.resolved_head_dim()) {
  q_proj = register_module("q_proj", linear(c.hidden_size, n_heads * head_dim, c.attention_bias));
  k_proj =
      register_module("k_proj", linear(c.hidden_size, n_kv_heads * head_dim, c.attention_bias));
  v_proj =
      register_module("v_proj", linear(c.hidden_size, n_kv_heads * head_dim, c.attention_bias));
  o_proj = register_module("o_proj", linear(n_heads * head_dim, c.hidden_size, false));
  fuse_projections();
}

void AttentionImpl::fuse_projections() {
  fuse_parameter_storage({q_proj->weight, k_proj->weight, v_proj->weight});
  if (q_proj->bias.defined()) fuse_parameter_storage({q_proj->bias, k_proj->bias, v_proj->bias});
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                     const torch::Tensor& sin, const torch::Tensor& allowed,
                                     KVCache* cache, int64_t layer,
                                     const torch::Tensor& query_positions) {
  const int64_t batch = x.size(0), length = x.size(1);
  const auto input = dist::copy_to_tensor_parallel(x, tp);  // column-parallel q/k/v
  if (observer != nullptr) (*observer)(ProjectionInput::attention, input);
  const bool has_bias = q_proj->bias.defined();
  torch::Tensor q, k, v;
  if (!query_positions.defined()) {
    const auto qkv =
        project(input, {q_proj->weight, k_proj->weight, v_proj->weight},
                has_bias ? std::vector<torch::Tensor>{q_proj->bias, k_proj->bias, v_proj->bias}
                         : std::vector<torch::Tensor>{});
    q = adapted(lora, layer_index, "q_proj", qkv[0], input);
    k = adapted(lora, layer_index, "k_proj", qkv[1], input);
    v = adapted(lora, layer_index, "v_proj", qkv[2], input);
  } else {
    // Queries at the wanted positions alone; keys and values at every position they may see.
    const auto query_input = at_positions(input, query_positions, 1);
    q = adapted(lora, layer_index, "q_proj",
                project(query_input, {q_proj->weight},
                        has_bias ? std::vector<torch::Tensor>{q_proj->bias}
                                 : std::vector<torch::Tensor>{})[0],
                query_input);
    const auto kv = project(input, {k_proj->weight, v_proj->weight},
                            has_bias ? std::vector<torch::Tensor>{k_proj->bias, v_proj->bias}
                                     : std::vector<torch::Tensor>{});
    k = adapted(lora, layer_index, "k_proj", kv[0], input);
    v = adapted(lora, layer_index, "v_proj", kv[1], input);
  }
  const int64_t queries = q.size(1);
  const auto at_queries = [&](const torch::Tensor& t) {
    return query_positions.defined() ? at_positions(t, query_positions, 2) : t;
  };
  q = q.view({batch, queries, n_heads, head_dim}).transpose(1, 2);
  k = k.view({batch, length, n_kv_heads, head_dim}).transpose(1, 2);
  v = v.view({batch, length, n_kv_heads, head_dim}).transpose(1, 2);
  q = apply_rotary(q, at_queries(cos), at_queries(sin));  // [B, H, T or K, hd]
  k = apply_rotary(k, cos, sin);                          // [B, KV, T, hd]
  if (cache != nullptr) {
    const int64_t start = cache->length;
    TORCH_CHECK(start + length <= cache->capacity(), "KV cache overflow: ", start + length, " > ",
                cache->capacity());
    auto& keys = cache->keys[layer];
    auto& values = cache->values[layer];
    if (!tp.single())
      check(keys.size(1) == n_kv_heads,
            "generation with a KV cache is not supported under tensor parallelism (the cache "
            "holds " +
                std::to_string(keys.size(1)) + " key/value heads, this rank " +
                std::to_string(n_kv_heads) + ")");
    keys.narrow(2, start, length).copy_(k);
    values.narrow(2, start, length).copy_(v);
    k = keys.narrow(2, 0, start + length);
    v = values.narrow(2, 0, start + length);
  }
  const int64_t rep = n_heads / n_kv_heads;
  auto out = attention(q, repeat_kv(k, rep).to(q.scalar_type()),
                       repeat_kv(v, rep).to(q.scalar_type()), at_queries(allowed));
  out = out.transpose(1, 2).reshape({batch, queries, n_heads * head_dim});
  if (observer != nullptr) (*observer)(ProjectionInput::attention_output, out);
  // Row-parallel o_proj: each rank's partial product, summed over the group.
  return dist::reduce_from_tensor_parallel(
      adapted(lora, layer_index, "o_proj", project(out, o_proj->weight), out), tp);
}

// ---------------------------------------------------------------------------------------------
// MLP and decoder layer

MLPImpl::MLPImpl(int64_t dim, int64_t hidden) {
  gate_proj = register_module("gate_proj", linear(dim, hidden, false));
  up_proj = register_module("up_proj", linear(dim, hidden, false));
  down_proj = register_module("down_proj", linear(hidden, dim, false));
  fuse_projections();
}

void MLPImpl::fuse_projections() {
  fuse_parameter_storage({gate_proj->weight, up_proj->weight});
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x) {
  const auto input = dist::copy_to_tensor_parallel(x, tp);  // column-parallel gate/up
  if (observer != nullptr) (*observer)(ProjectionInput::mlp, input);
  torch::Tensor hidden;
  if (lora != nullptr && (lora->find(layer_index, "gate_proj") != nullptr ||
                          lora->find(layer_index, "up_proj") != nullptr)) {
    const auto gate_up = project(input, {gate_proj->weight, up_proj->weight}, {});
    const auto gate = adapted(lora, layer_index, "gate_proj", gate_up[0], input);
    const auto up = adapted(lora, layer_index, "up_proj", gate_up[1], input);
    hidden = swiglu(torch::cat({gate, up}, -1));  // as below, so an adapter at zero changes nothing
  } else {
    hidden = swiglu(project_joined(input, {gate_proj->weight, up_proj->weight}, {}));
  }
  if (observer != nullptr) (*observer)(ProjectionInput::mlp_hidden, hidden);
  // Row-parallel down_proj, as o_proj.
  return dist::reduce_from_tensor_parallel(
      adapted(lora, layer_index, "down_proj", project(hidden, down_proj->weight), hidden), tp);
}

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c) {
  self_attn = register_module("self_attn", Attention(c));
  mlp = register_module("mlp", MLP(c.hidden_size, c.intermediate_size));
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

void DecoderLayerImpl::attach_lora(const LoraAdaptersImpl* adapters, int64_t index) {
  self_attn->lora = mlp->lora = adapters;
  self_attn->layer_index = mlp->layer_index = index;
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                        const torch::Tensor& sin, const torch::Tensor& allowed,
                                        KVCache* cache, int64_t layer,
                                        const torch::Tensor& output_positions) {
  const auto residual = output_positions.defined() ? at_positions(x, output_positions, 1) : x;
  auto h =
      residual + self_attn(input_layernorm(x), cos, sin, allowed, cache, layer, output_positions);
  return h + mlp(post_attention_layernorm(h));
}

// ---------------------------------------------------------------------------------------------
// Decoder body

DecoderImpl::DecoderImpl(const ModelConfig& c)
    : rotary(c.resolved_head_dim(), c.rope_theta, c.rope_scaling) {
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(c.vocab_size, c.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    layer_list.emplace_back(c);
    layers->push_back(layer_list.back());
  }
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

torch::Tensor DecoderImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& positions,
                                   const torch::Tensor& allowed, KVCache* cache,
                                   const torch::Tensor& output_positions) {
  TORCH_CHECK(!output_positions.defined() || cache == nullptr,
              "output positions are not supported with a KV cache");
  auto [cos, sin] = rotary.tables(positions);
  auto x = tp.single() ? embed_tokens(input_ids) : parallel_embedding(input_ids);  // [B, T, C]
  // The residual stream is in the norms' dtype: fp32 also where a LoRA's frozen embedding is
  // stored in bf16; bf16 in a model cast to bf16 as a whole (bench decode --dtype bf16).
  if (x.scalar_type() != norm->weight.scalar_type()) x = x.to(norm->weight.scalar_type());
  const bool recompute =
      activation_checkpointing && cache == nullptr && torch::GradMode::is_enabled();
  for (size_t i = 0; i < layer_list.size(); ++i) {
    // Only the last layer's outputs leave the body: with output positions it computes them there
    // alone (its keys and values everywhere), and stores the few activations that takes.
    if (output_positions.defined() && i + 1 == layer_list.size()) {
      x = layer_list[i]->forward(x, cos, sin, allowed, nullptr, static_cast<int64_t>(i),
                                 output_positions);
    } else {
      x = recompute ? checkpointed_layer(*layer_list[i], x, cos, sin, allowed)
                    : layer_list[i]->forward(x, cos, sin, allowed, cache, static_cast<int64_t>(i));
    }
  }
  if (cache != nullptr) cache->length += input_ids.size(1);
  return norm(x);
}

// Vocabulary-parallel lookup: this rank's rows serve the ids in its range, zeros elsewhere; the
// sum over the group is the full lookup.
torch::Tensor DecoderImpl::parallel_embedding(const torch::Tensor& input_ids) {
  const int64_t rows = embed_tokens->weight.size(0);
  const auto local_ids = input_ids - vocab_begin;
  const auto outside = local_ids.lt(0).logical_or(local_ids.ge(rows));
  auto x = embed_tokens(local_ids.masked_fill(outside, 0));
  x = x.masked_fill(outside.unsqueeze(-1), 0);
  return dist::reduce_from_tensor_parallel(x, tp);
}

// ---------------------------------------------------------------------------------------------
// Transformer with heads

TransformerImpl::TransformerImpl(const ModelConfig& c) : config(c) {
  config.validate("model config");
  check_fits_in_memory(
      4.0 * static_cast<double>(config.parameter_count()),
      "model config: " + std::to_string(config.parameter_count()) + " parameters in fp32");
  model = register_module("model", Decoder(c));
  if (c.num_labels > 0) {
    score = register_module("score", linear(c.hidden_size, c.num_labels, false));
  } else if (!c.tie_word_embeddings) {
    lm_head = register_module("lm_head", linear(c.hidden_size, c.vocab_size, false));
  }
}

torch::Tensor TransformerImpl::hidden(const torch::Tensor& input_ids,
                                      const torch::Tensor& positions, const torch::Tensor& allowed,
                                      KVCache* cache, const torch::Tensor& output_positions) {
  TORCH_CHECK(input_ids.dim() == 2, "input_ids must be [B, T], got ", input_ids.sizes());
  TORCH_CHECK(!output_positions.defined() ||
                  (output_positions.dim() == 2 && output_positions.size(0) == input_ids.size(0)),
              "output positions must be [B, K], got ", output_positions.sizes());
  return model(input_ids, positions, allowed, cache, output_positions);
}

torch::Tensor TransformerImpl::logits(const torch::Tensor& hidden) {
  check(config.num_labels == 0, "this model has a score head, not an LM head");
  const dist::Group& tp = model->tp;
  if (tp.single()) {
    return project(hidden, lm_head ? lm_head->weight : model->embed_tokens->weight);
  }
  // Vocabulary-parallel: this rank's slice of the logits, gathered into the full [B, T, V].
  const auto input = dist::copy_to_tensor_parallel(hidden, tp);
  const auto local = project(input, lm_head ? lm_head->weight : model->embed_tokens->weight);
  return dist::gather_last_dim(local, tp);
}

torch::Tensor TransformerImpl::scores(const torch::Tensor& hidden) {
  check(static_cast<bool>(score), "this model has no score head (num_labels is 0)");
  return score(hidden);
}

torch::Tensor TransformerImpl::forward(const torch::Tensor& input_ids,
                                       const torch::Tensor& attention_mask) {
  auto positions = positions_from_mask(attention_mask);
  auto allowed = causal_mask(attention_mask.to(torch::kBool), input_ids.size(1));
  return logits(hidden(input_ids, positions, allowed));
}

torch::Tensor TransformerImpl::sequence_scores(const torch::Tensor& input_ids,
                                               const torch::Tensor& attention_mask) {
  check(config.num_labels == 1, "sequence_scores needs a single-label score head");
  auto positions = positions_from_mask(attention_mask);
  auto allowed = causal_mask(attention_mask.to(torch::kBool), input_ids.size(1));
  const auto last = last_token_index(attention_mask).unsqueeze(1);  // [B, 1]
  return score(hidden(input_ids, positions, allowed, nullptr, last)).view({-1});
}

std::vector<std::pair<std::string, torch::Tensor>> TransformerImpl::named_weights() {
  auto out = local_weights();
  if (tensor_parallel().single()) return out;
  torch::NoGradGuard no_grad;
  for (auto& [name, tensor] : out) tensor = gathered(name, tensor);
  return out;
}

std::vector<std::pair<std::string, torch::Tensor>> TransformerImpl::local_weights() {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& item : named_parameters(/*recurse=*/true))
    if (item.key().rfind("lora.", 0) != 0) out.emplace_back(item.key(), item.value());
  return out;
}

int TransformerImpl::sharded_dim(const std::string& name) {
  auto ends_with = [&](const std::string& suffix) {
    return name.size() >= suffix.size() &&
           name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (name == "model.embed_tokens.weight" || name == "lm_head.weight") return 0;
  for (const char* rows :
       {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
        "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias",
        "mlp.gate_proj.weight", "mlp.up_proj.weight"})
    if (ends_with(rows)) return 0;
  if (ends_with("self_attn.o_proj.weight") || ends_with("mlp.down_proj.weight")) return 1;
  return -1;
}

torch::Tensor TransformerImpl::local_part(const std::string& name,
                                          const torch::Tensor& full) const {
  const dist::Group& tp = tensor_parallel();
  const int dim = sharded_dim(name);
  if (tp.single() || dim < 0) return full;
  const int64_t part = full.size(dim) / tp.size();
  return full.narrow(dim, tp.rank() * part, part);
}

torch::Tensor TransformerImpl::gathered(const std::string& name, const torch::Tensor& local) const {
  const dist::Group& tp = tensor_parallel();
  const int dim = sharded_dim(name);
  if (tp.single() || dim < 0) return local;
  return torch::cat(tp.all_gather(local.detach().contiguous()), dim);
}

void TransformerImpl::shard_for_tensor_parallel(const dist::Group& tp) {
  if (tp.single()) return;
  check(tensor_parallel().single(), "the model is already sharded for tensor parallelism");
  const int n = tp.size();
  auto require_divisible = [&](const char* what, int64_t value) {
    check(value % n == 0, "tensor parallel over " + std::to_string(n) + " ranks: the model's " +
                              what + " " + std::to_string(value) + " is not divisible by " +
                              std::to_string(n));
  };
  require_divisible("num_attention_heads", config.num_attention_heads);
  require_divisible("num_key_value_heads", config.num_key_value_heads);
  require_divisible("intermediate_size", config.intermediate_size);
  require_divisible("vocab_size", config.vocab_size);

  torch::NoGradGuard no_grad;
  model->tp = tp;
  model->vocab_begin = tp.rank() * (config.vocab_size / n);
  for (auto& layer : model->layer_list) {
    layer->self_attn->tp = tp;
    layer->self_attn->n_heads /= n;
    layer->self_attn->n_kv_heads /= n;
    layer->mlp->tp = tp;
  }
  // set_data keeps each parameter the same autograd leaf, with this rank's part as its data.
  for (auto& [name, param] : local_weights())
    if (sharded_dim(name) >= 0) param.set_data(local_part(name, param).clone());
  for (auto& layer : model->layer_list) {
    layer->self_attn->fuse_projections();
    layer->mlp->fuse_projections();
  }
}

void TransformerImpl::init_weights(uint64_t seed, bool heads_only) {
  check(tensor_parallel().single(), "init_weights: initialise the model before sharding it");
  torch::NoGradGuard no_grad;
  auto generator = compat::make_cpu_generator(seed);
  for (auto& [name, tensor] : named_weights()) {
    if (heads_only && name.rfind("lm_head.", 0) != 0 && name.rfind("score.", 0) != 0) continue;
    const bool is_norm = name.find("norm") != std::string::npos;
    const bool is_bias = name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (is_norm) {
      tensor.fill_(1.0);
    } else if (is_bias) {
      tensor.zero_();
    } else if (name.rfind("score.", 0) == 0) {
      tensor.copy_(torch::randn(tensor.sizes(), generator, torch::kFloat) /
                   std::sqrt(static_cast<double>(config.hidden_size + 1)));
    } else {
      tensor.copy_(torch::randn(tensor.sizes(), generator, torch::kFloat) * 0.02);
    }
  }
}

}  // namespace tiller
