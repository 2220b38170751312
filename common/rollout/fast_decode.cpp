#include "common/rollout/fast_decode.h"

#include "common/model/lora.h"
#include "common/model/quantized.h"

#include <ATen/Parallel.h>
#include <cblas.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "common/util/error.h"

namespace tiller {

namespace {

bool is_plain_fp32_cpu(const torch::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == torch::kFloat &&
         t.is_contiguous();
}

const float* data_of(const torch::Tensor& t) {
  return t.data_ptr<float>();
}
const float* data_or_null(const torch::Tensor& t) {
  return t.defined() ? t.data_ptr<float>() : nullptr;
}

// out[r] = x[r] / rms(x[r]) * weight, for `rows` rows of `dim`: RMSNormImpl::forward in fp32.
void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps,
              float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    const float inv_rms =
        1.0f / std::sqrt(decode_kernels::dot(xr, xr, dim) / static_cast<float>(dim) + eps);
    float* o = out + r * dim;
    for (int64_t i = 0; i < dim; ++i) o[i] = weight[i] * (xr[i] * inv_rms);
  }
}

// out[rows, n] = in[rows, k] · weight[n, k]ᵀ + bias, or += that when `accumulate` (the residual
// adds). One row times a small matrix is a plain loop: OpenBLAS's sgemv runs it on every OpenMP
// thread, and the fork and join cost more than the work (stories260k at batch 1: 2.4k tokens/s
// through sgemv on 2 threads, 3.0k to 4.3k with the loop). Several rows go through sgemm, still
// faster than the loop at stories260k batch 16; one row of a large matrix through sgemv, as sgemm
// would repack the whole weight matrix for it. Several rows times a tiny matrix (all of
// stories260k's) go through decode_kernels::small_matmul where the CPU has one: sgemm's packing
// took over a third of its time there.
constexpr int64_t kTinyMatrix = int64_t{1} << 15;  // elements

void linear(decode_kernels::Isa isa, const float* in, int64_t rows, int64_t k, const float* weight,
            const float* bias, int64_t n, float* out, bool accumulate) {
  constexpr int64_t kSmallMatrix = int64_t{1} << 20;  // elements
  if (rows > 1 && n * k <= kTinyMatrix &&
      decode_kernels::small_matmul(isa, in, rows, k, weight, bias, n, out, accumulate))
    return;
  if (rows == 1 && n * k < kSmallMatrix) {
    for (int64_t j = 0; j < n; ++j) {
      const float y =
          decode_kernels::dot(in, weight + j * k, k) + (bias != nullptr ? bias[j] : 0.0f);
      out[j] = accumulate ? out[j] + y : y;
    }
    return;
  }
  float beta = accumulate ? 1.0f : 0.0f;
  if (bias != nullptr) {
    for (int64_t r = 0; r < rows; ++r) std::memcpy(out + r * n, bias, n * sizeof(float));
    beta = 1.0f;
  }
  const auto N = static_cast<CBLAS_INT>(n), K = static_cast<CBLAS_INT>(k);
  if (rows == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.0f, weight, K, in, 1, beta, out, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<CBLAS_INT>(rows), N, K, 1.0f,
                in, K, weight, K, beta, out, N);
  }
}

// Rotary embedding of `heads` vectors of `head_dim` in place, in the rotate_half layout:
// x * cos + rotate_half(x) * sin, with rotate_half(x) = (-x[half:], x[:half]).
void apply_rotary(float* x, int64_t heads, int64_t head_dim, const float* cos, const float* sin) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* v = x + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const float a = v[i], b = v[i + half];
      v[i] = a * cos[i] + -b * sin[i];
      v[i + half] = b * cos[i + half] + a * sin[i + half];
    }
  }
}

}  // namespace

bool FastDecoder::supports(TransformerImpl& model, const KVCache& cache) {
  if (model.config.num_labels != 0 || !model.tensor_parallel().single()) return false;
  for (const auto& p : model.parameters())
    if (!is_plain_fp32_cpu(p)) return false;
  for (size_t l = 0; l < cache.keys.size(); ++l)
    if (!is_plain_fp32_cpu(cache.keys[l]) || !is_plain_fp32_cpu(cache.values[l])) return false;
  return cache.key_valid.device().is_cpu() && cache.key_valid.is_contiguous() &&
         static_cast<int64_t>(cache.keys.size()) == model.config.num_hidden_layers;
}

FastDecoder::FastDecoder(TransformerImpl& model, KVCache& cache, decode_kernels::Isa isa,
                         quant_kernels::Isa quant_isa, WeightPanels panels)
    : cache_(cache),
      isa_(isa),
      quant_isa_(quant_isa),
      batch_(cache.batch()),
      dim_(model.config.hidden_size),
      hidden_(model.config.intermediate_size),
      heads_(model.config.num_attention_heads),
      kv_heads_(model.config.num_key_value_heads),
      head_dim_(model.config.resolved_head_dim()),
      vocab_(model.config.vocab_size),
      eps_(static_cast<float>(model.config.rms_norm_eps)) {
  check(supports(model, cache), "FastDecoder: the model or its KV cache is not supported");
  check(decode_kernels::supported(isa) && quant_kernels::supported(quant_isa),
        "FastDecoder: this CPU lacks the instructions asked for");
  DecoderImpl& body = *model.model;
  // Each weight by its Hugging Face name: the packed matrix where the model is quantised.
  auto weight = [&](const std::string& name, const torch::Tensor& dense) {
    const QuantizedMatrix* packed = model.quantized ? model.quantized->find(name) : nullptr;
    check(packed == nullptr || (packed->rows == dense.size(0) && packed->cols == dense.size(1)),
          "FastDecoder: the packed " + name + " does not match the weight's shape");
    return Weight{data_of(dense), packed};
  };
  embedding_ = data_of(body.embed_tokens->weight);
  final_norm_ = data_of(body.norm->weight);
  lm_head_ = model.lm_head ? weight("lm_head.weight", model.lm_head->weight)
                           : weight("model.embed_tokens.weight", body.embed_tokens->weight);
  for (size_t l = 0; l < body.layer_list.size(); ++l) {
    DecoderLayerImpl& layer = *body.layer_list[l];
    AttentionImpl& att = *layer.self_attn;
    MLPImpl& mlp = *layer.mlp;
    const std::string prefix = "model.layers." + std::to_string(l) + ".";
    layers_.push_back({data_of(layer.input_layernorm->weight),
                       data_of(layer.post_attention_layernorm->weight),
                       weight(prefix + "self_attn.q_proj.weight", att.q_proj->weight),
                       weight(prefix + "self_attn.k_proj.weight", att.k_proj->weight),
                       weight(prefix + "self_attn.v_proj.weight", att.v_proj->weight),
                       weight(prefix + "self_attn.o_proj.weight", att.o_proj->weight),
                       data_or_null(att.q_proj->bias),
                       data_or_null(att.k_proj->bias),
                       data_or_null(att.v_proj->bias),
                       weight(prefix + "mlp.gate_proj.weight", mlp.gate_proj->weight),
                       weight(prefix + "mlp.up_proj.weight", mlp.up_proj->weight),
                       weight(prefix + "mlp.down_proj.weight", mlp.down_proj->weight),
                       cache.keys[l].data_ptr<float>(),
                       cache.values[l].data_ptr<float>(),
                       /*adapters, set below:*/ {},
                       {},
                       {},
                       {},
                       {},
                       {},
                       {}});
    if (model.lora && model.lora->active) {
      auto low_rank = [&](const char* target) {
        const LoraLinear* adapter = model.lora->find(static_cast<int64_t>(l), target);
        return adapter == nullptr ? LowRank{} : LowRank{data_of(adapter->a), data_of(adapter->b)};
      };
      Layer& last = layers_.back();
      last.q_lora = low_rank("q_proj");
      last.k_lora = low_rank("k_proj");
      last.v_lora = low_rank("v_proj");
      last.o_lora = low_rank("o_proj");
      last.gate_lora = low_rank("gate_proj");
      last.up_lora = low_rank("up_proj");
      last.down_lora = low_rank("down_proj");
    }
  }
  if (model.lora && model.lora->active) {
    lora_rank_ = model.lora->options.rank;
    lora_scale_ = static_cast<float>(model.lora->options.scale());
    low_.resize(batch_ * lora_rank_);
  }
  // The rotary tables of every slot position, from the torch path's own code.
  const int64_t capacity = cache.capacity();
  auto [cos, sin] = body.rotary.tables(torch::arange(capacity, torch::kLong).view({1, -1}));
  cos_ = cos.reshape({capacity, head_dim_}).contiguous();
  sin_ = sin.reshape({capacity, head_dim_}).contiguous();

  const int64_t q_width = heads_ * head_dim_, kv_width = kv_heads_ * head_dim_;
  x_.resize(batch_ * dim_);
  xn_.resize(batch_ * dim_);
  q_.resize(batch_ * q_width);
  k_.resize(batch_ * kv_width);
  v_.resize(batch_ * kv_width);
  att_.resize(batch_ * q_width);
  gate_.resize(batch_ * hidden_);
  up_.resize(batch_ * hidden_);
  const int64_t padded = decode_kernels::padded_slots(capacity);
  scores_.resize(batch_ * heads_ * padded);
  mask_bias_.resize(batch_ * padded);
  if (panels == WeightPanels::where_faster && PanelMatrix::available() && batch_ >= kPanelRowsMin &&
      batch_ <= kPanelRowsMax)
    copy_weights_to_panels(q_width, kv_width);
  if (!panel_storage_.empty()) team_.emplace(at::get_num_threads());
}

void FastDecoder::parallel_for(int64_t n, int64_t grain,
                               const std::function<void(int64_t, int64_t)>& body) {
  if (team_)
    team_->parallel_for(n, grain, body);
  else
    at::parallel_for(0, n, grain, body);
}

void FastDecoder::copy_weights_to_panels(int64_t q_width, int64_t kv_width) {
  struct Projection {
    Weight* weight;
    int64_t n, k;
  };
  std::vector<Projection> projections = {{&lm_head_, vocab_, dim_}};
  for (Layer& layer : layers_) {
    projections.insert(projections.end(), {{&layer.q, q_width, dim_},
                                           {&layer.k, kv_width, dim_},
                                           {&layer.v, kv_width, dim_},
                                           {&layer.o, dim_, q_width},
                                           {&layer.gate, hidden_, dim_},
                                           {&layer.up, hidden_, dim_},
                                           {&layer.down, dim_, hidden_}});
  }
  // Those that would go through sgemm: not one small enough for small_matmul. (At kPanelRowsMin
  // rows and more, project() multiplies no quantised weight packed.)
  static_assert(kPanelRowsMin >= kPackedRowsLimit);
  std::vector<Projection> chosen;
  int64_t bytes = 0;
  for (const Projection& p : projections) {
    if (p.n * p.k <= kTinyMatrix) continue;
    chosen.push_back(p);
    bytes += p.n * p.k * static_cast<int64_t>(sizeof(float));
  }
  if (bytes > kPanelBytesLimit) return;
  for (const Projection& p : chosen) {
    panel_storage_.push_back(std::make_unique<PanelMatrix>(p.weight->dense, p.n, p.k));
    p.weight->panels = panel_storage_.back().get();
  }
}

void FastDecoder::add_low_rank(const LowRank& adapter, const float* in, int64_t k, int64_t n,
                               float* out) {
  if (adapter.a == nullptr) return;
  linear(isa_, in, batch_, k, adapter.a, nullptr, lora_rank_, low_.data(), false);
  for (float& value : low_) value *= lora_scale_;
  linear(isa_, low_.data(), batch_, lora_rank_, adapter.b, nullptr, n, out, true);
}

void FastDecoder::project(const float* in, int64_t k, const Weight& weight, const float* bias,
                          int64_t n, float* out, bool accumulate) {
  if (weight.quantized != nullptr && batch_ < kPackedRowsLimit)
    return quant_kernels::matmul(quant_isa_, *weight.quantized, in, batch_, bias, out, accumulate);
  if (weight.panels != nullptr)
    return weight.panels->multiply(in, batch_, bias, out, accumulate, *team_);
  linear(isa_, in, batch_, k, weight.dense, bias, n, out, accumulate);
}

// Scaled dot-product attention of each row's query heads (q: [B, H, hd]) over the cached slots
// [0, slot] that mask_bias_ lets it see; out: [B, H, hd]. Query heads h of one group (h / (H / KV)
// the same, as repeat_kv lays them out) share their key/value head, so they go together.
void FastDecoder::attention(const float* q, const Layer& layer, int64_t slot, float* out) {
  const int64_t capacity = cache_.capacity(), group = heads_ / kv_heads_, hd = head_dim_;
  const int64_t padded = decode_kernels::padded_slots(capacity);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  // A (row, key/value head) pair an item, each with its own scores: the items run on the
  // intra-op threads.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / ((slot + 1) * group * hd));
  parallel_for(batch_ * kv_heads_, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / kv_heads_, g = item % kv_heads_;
      const int64_t cache_offset = item * capacity * hd;
      const int64_t heads_offset = (b * heads_ + g * group) * hd;
      decode_kernels::attend(isa_, q + heads_offset, group, layer.keys + cache_offset,
                             layer.values + cache_offset, &mask_bias_[b * padded], slot + 1, hd,
                             scale, &scores_[item * group * padded], out + heads_offset);
    }
  });
}

torch::Tensor FastDecoder::step(const torch::Tensor& tokens, const torch::Tensor& positions) {
  check(tokens.numel() == batch_ && positions.numel() == batch_,
        "FastDecoder::step: expected one token and one position per row");
  const int64_t slot = cache_.length, capacity = cache_.capacity();
  check(slot < capacity, "FastDecoder::step: the KV cache is full");
  const auto ids_t = tokens.to(torch::kLong).contiguous();
  const auto pos_t = positions.to(torch::kLong).contiguous();
  const int64_t* ids = ids_t.data_ptr<int64_t>();
  const int64_t* pos = pos_t.data_ptr<int64_t>();
  const int64_t hd = head_dim_, q_width = heads_ * hd, kv_width = kv_heads_ * hd;

  for (int64_t b = 0; b < batch_; ++b)
    std::memcpy(&x_[b * dim_], embedding_ + ids[b] * dim_, dim_ * sizeof(float));
  // The new slot is always seen; earlier ones where key_valid says; the padding never.
  const int64_t padded = decode_kernels::padded_slots(capacity);
  const bool* valid = cache_.key_valid.data_ptr<bool>();
  for (int64_t b = 0; b < batch_; ++b) {
    float* bias = &mask_bias_[b * padded];
    for (int64_t s = 0; s < decode_kernels::padded_slots(slot + 1); ++s) {
      const bool seen = s == slot || (s < slot && valid[b * capacity + s]);
      bias[s] = seen ? 0.0f : -std::numeric_limits<float>::infinity();
    }
  }
  for (const Layer& layer : layers_) {
    rms_norm(x_.data(), layer.input_norm, batch_, dim_, eps_, xn_.data());
    project(xn_.data(), dim_, layer.q, layer.q_bias, q_width, q_.data(), false);
    project(xn_.data(), dim_, layer.k, layer.k_bias, kv_width, k_.data(), false);
    project(xn_.data(), dim_, layer.v, layer.v_bias, kv_width, v_.data(), false);
    add_low_rank(layer.q_lora, xn_.data(), dim_, q_width, q_.data());
    add_low_rank(layer.k_lora, xn_.data(), dim_, kv_width, k_.data());
    add_low_rank(layer.v_lora, xn_.data(), dim_, kv_width, v_.data());
    for (int64_t b = 0; b < batch_; ++b) {
      const float* cos = cos_.data_ptr<float>() + pos[b] * hd;
      const float* sin = sin_.data_ptr<float>() + pos[b] * hd;
      apply_rotary(&q_[b * q_width], heads_, hd, cos, sin);
      apply_rotary(&k_[b * kv_width], kv_heads_, hd, cos, sin);
      for (int64_t g = 0; g < kv_heads_; ++g) {
        const int64_t at = ((b * kv_heads_ + g) * capacity + slot) * hd;
        std::memcpy(layer.keys + at, &k_[(b * kv_heads_ + g) * hd], hd * sizeof(float));
        std::memcpy(layer.values + at, &v_[(b * kv_heads_ + g) * hd], hd * sizeof(float));
      }
    }
    attention(q_.data(), layer, slot, att_.data());
    project(att_.data(), q_width, layer.o, nullptr, dim_, x_.data(), true);
    add_low_rank(layer.o_lora, att_.data(), q_width, dim_, x_.data());
    rms_norm(x_.data(), layer.post_attention_norm, batch_, dim_, eps_, xn_.data());
    project(xn_.data(), dim_, layer.gate, nullptr, hidden_, gate_.data(), false);
    project(xn_.data(), dim_, layer.up, nullptr, hidden_, up_.data(), false);
    add_low_rank(layer.gate_lora, xn_.data(), dim_, hidden_, gate_.data());
    add_low_rank(layer.up_lora, xn_.data(), dim_, hidden_, up_.data());
    decode_kernels::silu_mul(isa_, gate_.data(), up_.data(), batch_ * hidden_);
    project(gate_.data(), hidden_, layer.down, nullptr, dim_, x_.data(), true);
    add_low_rank(layer.down_lora, gate_.data(), hidden_, dim_, x_.data());
  }
  rms_norm(x_.data(), final_norm_, batch_, dim_, eps_, xn_.data());
  auto logits = torch::empty({batch_, vocab_}, torch::kFloat);
  project(xn_.data(), dim_, lm_head_, nullptr, vocab_, logits.data_ptr<float>(), false);
  ++cache_.length;
  return logits;
}

}  // namespace tiller
