#include "quantize/quantize.h"

#include <cstdio>
#include <filesystem>
#include <numeric>

#include "common/io/hf_dir.h"
#include "common/model/attention_mask.h"
#include "common/model/quantized.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "eval/perplexity.h"
#include "quantize/gptq.h"

namespace tiller {

namespace {

int bits_of(const std::string& choice) {
  return choice == "int8" ? 8 : choice == "int4" ? 4 : 0;
}

// Which weights are quantised, with how many bits.
using Plan = std::map<std::string, int>;

const char* const kLayerWeights[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                     "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                     "mlp.down_proj"};

// The input each projection multiplies (for its Hessian).
ProjectionInput input_of(const std::string& projection) {
  if (projection == "self_attn.o_proj") return ProjectionInput::attention_output;
  if (projection == "mlp.down_proj") return ProjectionInput::mlp_hidden;
  return projection.rfind("self_attn.", 0) == 0 ? ProjectionInput::attention : ProjectionInput::mlp;
}

std::string layer_weight(int64_t layer, const std::string& projection) {
  return "model.layers." + std::to_string(layer) + "." + projection + ".weight";
}

void check_choice(const std::string& value, const std::vector<std::string>& allowed,
                  const std::string& flag) {
  for (const auto& a : allowed)
    if (value == a) return;
  std::string list;
  for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
  throw Error("quantize: " + flag + " must be one of " + list + ", got '" + value + "'");
}

// What quantising in memory reads too.
void check_weight_choices(const QuantizeOptions& o) {
  check_choice(o.scheme, {"int8", "int4"}, "--scheme");
  check_choice(o.lm_head, {"int8", "int4", "keep"}, "--lm-head");
  check_choice(o.embeddings, {"int8", "int4", "keep"}, "--embeddings");
}

void check_options(const QuantizeOptions& o) {
  check(!o.model_dir.empty() && !o.out_dir.empty(), "quantize: --model and --out are required");
  check_weight_choices(o);
  check_choice(o.method, {"rtn", "gptq"}, "--method");
  check(o.method == "gptq" || o.calibration.empty(),
        "quantize: --calibration is read by --method gptq only (round to nearest needs no data)");
  check(o.method != "gptq" || !o.calibration.empty(),
        "quantize: --method gptq needs --calibration TEXT_FILE (held-out text, one document a "
        "line)");
  check(o.samples >= 1, "quantize: --samples must be at least 1");
  check(o.length >= 2, "quantize: --length must be at least 2 tokens");
  check(o.damp > 0 && o.damp < 1, "quantize: --damp must be in (0, 1)");
  namespace fs = std::filesystem;
  check(fs::weakly_canonical(o.model_dir) != fs::weakly_canonical(o.out_dir),
        "quantize: --out must not be the model's own directory " + o.model_dir);
  if (const auto q = quantization_of(o.model_dir))
    throw Error("quantize: " + o.model_dir + " is already quantised (" + describe(*q) +
                "); quantise the full-precision model it came from");
}

Plan plan_weights(const QuantizeOptions& o, const ModelConfig& c) {
  Plan plan;
  const int body_bits = bits_of(o.scheme);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    for (const char* projection : kLayerWeights) plan[layer_weight(l, projection)] = body_bits;
  const bool tied = c.num_labels == 0 && c.tie_word_embeddings;
  if (tied) {
    check(o.embeddings == "keep" || o.embeddings == o.lm_head,
          "quantize: the model ties its embedding to its LM head, so they are one "
          "matrix: --embeddings " +
              o.embeddings + " contradicts --lm-head " + o.lm_head + " (set --lm-head alone)");
    if (bits_of(o.lm_head) > 0) plan["model.embed_tokens.weight"] = bits_of(o.lm_head);
    return plan;
  }
  if (c.num_labels == 0 && bits_of(o.lm_head) > 0) plan["lm_head.weight"] = bits_of(o.lm_head);
  if (bits_of(o.embeddings) > 0) plan["model.embed_tokens.weight"] = bits_of(o.embeddings);
  return plan;
}

// Every 4-bit weight's rows must divide into groups; the error lists sizes that would.
void check_group_size(const QuantizeOptions& o, const Plan& plan,
                      const std::map<std::string, torch::Tensor>& weights) {
  int64_t common = 0;
  std::string first_bad;
  for (const auto& [name, bits] : plan) {
    if (bits != 4) continue;
    const int64_t cols = weights.at(name).size(1);
    common = std::gcd(common, cols);
    if (first_bad.empty() &&
        (o.group_size < 2 || o.group_size % 2 != 0 || cols % o.group_size != 0))
      first_bad = name + " (" + std::to_string(cols) + " columns)";
  }
  if (first_bad.empty()) return;
  std::string sizes;
  for (int64_t g = common; g >= 2; --g)
    if (common % g == 0 && g % 2 == 0 && sizes.size() < 40)
      sizes += (sizes.empty() ? "" : ", ") + std::to_string(g);
  throw Error("quantize: --group-size " + std::to_string(o.group_size) +
              " does not divide the rows of " + first_bad +
              " into even groups; sizes that divide every 4-bit weight's rows: " +
              (sizes.empty() ? "none (the widths have no even common divisor)" : sizes));
}

struct WeightReport {
  int bits = 0;
  double weight_error = 0;       // ||Ŵ - W|| / ||W||
  double output_error = -1;      // GPTQ only: on the calibration inputs
  double rtn_output_error = -1;  // round to nearest's, on the same inputs
};

double relative_weight_error(const torch::Tensor& w, const torch::Tensor& dq) {
  const double norm = w.norm().item<double>();
  return norm > 0 ? (dq - w).norm().item<double>() / norm : 0.0;
}

// Sets each projection's observer for the scope (so an exception cannot leave one behind).
class ObserverScope {
 public:
  ObserverScope(DecoderLayerImpl& layer, const ProjectionObserver* observer) : layer_(layer) {
    layer_.self_attn->observer = layer_.mlp->observer = observer;
  }
  ~ObserverScope() { layer_.self_attn->observer = layer_.mlp->observer = nullptr; }
  ObserverScope(const ObserverScope&) = delete;
  ObserverScope& operator=(const ObserverScope&) = delete;

 private:
  DecoderLayerImpl& layer_;
};

// GPTQ, layer by layer: each layer's Hessians come from the calibration inputs as the layers
// before it, already quantised, pass them on (the authors' sequential procedure).
void quantize_layers_gptq(TransformerImpl& model, const QuantizeOptions& o, const Plan& plan,
                          const std::map<std::string, torch::Tensor>& params,
                          std::map<std::string, QuantizedMatrix>& packed,
                          std::map<std::string, WeightReport>& report, bool progress) {
  Tokenizer tokenizer(tokenizer_path_in(o.model_dir));
  const int64_t needed = o.samples * o.length;
  const auto tokens = eval::text_token_stream(tokenizer, o.calibration, needed);
  check(static_cast<int64_t>(tokens.size()) >= needed,
        "quantize: --calibration " + o.calibration + " gives " + std::to_string(tokens.size()) +
            " tokens; --samples " + std::to_string(o.samples) + " x --length " +
            std::to_string(o.length) + " needs " + std::to_string(needed));
  check(o.length <= model.config.max_position_embeddings,
        "quantize: --length " + std::to_string(o.length) + " exceeds the model's context of " +
            std::to_string(model.config.max_position_embeddings));
  const auto ids = torch::tensor(std::vector<int64_t>(tokens.begin(), tokens.begin() + needed))
                       .view({o.samples, o.length});
  DecoderImpl& body = *model.model;
  auto hidden = body.embed_tokens(ids).to(torch::kFloat);  // [S, T, C]
  const auto positions = torch::arange(o.length).unsqueeze(0).expand({o.samples, o.length});
  // Not a structured binding: clang (C++17) does not let run_layer capture one.
  const auto tables = body.rotary.tables(positions.contiguous());
  const torch::Tensor &cos = tables.first, &sin = tables.second;
  const auto allowed = causal_mask(torch::ones({o.samples, o.length}, torch::kBool), o.length);
  constexpr int64_t kBatch = 8;
  auto run_layer = [&](DecoderLayerImpl& layer, int64_t l) {
    std::vector<torch::Tensor> outputs;
    for (int64_t first = 0; first < o.samples; first += kBatch) {
      const int64_t n = std::min(kBatch, o.samples - first);
      outputs.push_back(layer.forward(hidden.narrow(0, first, n), cos.narrow(0, first, n),
                                      sin.narrow(0, first, n), allowed.narrow(0, first, n), nullptr,
                                      l));
    }
    return torch::cat(outputs, 0);
  };

  GptqOptions gptq;
  gptq.group_size = o.group_size;
  gptq.damp = o.damp;
  for (int64_t l = 0; l < model.config.num_hidden_layers; ++l) {
    DecoderLayerImpl& layer = *body.layer_list[static_cast<size_t>(l)];
    const int64_t q_width = model.config.num_attention_heads * model.config.resolved_head_dim();
    std::map<ProjectionInput, HessianSum> sums = {
        {ProjectionInput::attention, HessianSum(model.config.hidden_size)},
        {ProjectionInput::attention_output, HessianSum(q_width)},
        {ProjectionInput::mlp, HessianSum(model.config.hidden_size)},
        {ProjectionInput::mlp_hidden, HessianSum(model.config.intermediate_size)}};
    const ProjectionObserver observer = [&](ProjectionInput which, const torch::Tensor& input) {
      sums.at(which).add(input);
    };
    {
      ObserverScope scope(layer, &observer);
      run_layer(layer, l);
    }
    for (const char* projection : kLayerWeights) {
      const std::string name = layer_weight(l, projection);
      const torch::Tensor& param = params.at(name);
      const auto& hessian = sums.at(input_of(projection)).sum();
      gptq.bits = plan.at(name);
      QuantizedMatrix m = gptq_quantize(param, hessian, gptq, name);
      const auto dq = dequantize(m);
      WeightReport& r = report[name];
      r.bits = gptq.bits;
      r.weight_error = relative_weight_error(param, dq);
      r.output_error = relative_output_error(param, dq, hessian);
      r.rtn_output_error = relative_output_error(
          param, dequantize(quantize_rtn(param, gptq.bits, o.group_size, name)), hessian);
      param.copy_(dq);
      packed.emplace(name, std::move(m));
    }
    hidden = run_layer(layer, l);
    if (progress)
      std::fprintf(stderr, "quantize: layer %lld/%lld done\n", static_cast<long long>(l + 1),
                   static_cast<long long>(model.config.num_hidden_layers));
  }
}

void quantize_planned_rtn(const Plan& plan, const std::map<std::string, torch::Tensor>& params,
                          const QuantizeOptions& o, bool skip_layers,
                          std::map<std::string, QuantizedMatrix>& packed,
                          std::map<std::string, WeightReport>& report) {
  for (const auto& [name, bits] : plan) {
    if (skip_layers && name.rfind("model.layers.", 0) == 0) continue;
    const torch::Tensor& param = params.at(name);
    QuantizedMatrix m = quantize_rtn(param, bits, o.group_size, name);
    const auto dq = dequantize(m);
    report[name] = {bits, relative_weight_error(param, dq), -1, -1};
    param.copy_(dq);
    packed.emplace(name, std::move(m));
  }
}

QuantizationConfig quantization_config_of(const QuantizeOptions& o, const Plan& plan) {
  QuantizationConfig config;
  config.bits = bits_of(o.scheme);
  for (const auto& [name, bits] : plan) {
    config.weights[name] = bits;
    if (bits == 4) config.group_size = o.group_size;
  }
  config.method = o.method;
  config.details = {{"lm_head", o.lm_head}, {"embeddings", o.embeddings}};
  if (o.method == "gptq")
    config.details.update({{"calibration", o.calibration},
                           {"samples", o.samples},
                           {"length", o.length},
                           {"damp", o.damp},
                           {"act_order", false}});
  return config;
}

// The weights to quantise and their parameters by name, checked against the group size.
struct PlannedWeights {
  Plan plan;
  std::map<std::string, torch::Tensor> params;
};
PlannedWeights plan_for(TransformerImpl& model, const QuantizeOptions& o) {
  PlannedWeights p{plan_weights(o, model.config), {}};
  for (auto& [name, tensor] : model.named_weights()) p.params[name] = tensor;
  check_group_size(o, p.plan, p.params);
  return p;
}

}  // namespace

void quantize_in_place(TransformerImpl& model, const QuantizeOptions& o) {
  check_weight_choices(o);
  torch::NoGradGuard no_grad;
  const PlannedWeights p = plan_for(model, o);
  auto weights = std::make_shared<QuantizedWeights>();
  std::map<std::string, WeightReport> report;
  quantize_planned_rtn(p.plan, p.params, o, /*skip_layers=*/false, weights->matrices, report);
  weights->config = quantization_config_of(o, p.plan);
  model.quantized = weights;
}

nlohmann::json quantize_model(const QuantizeOptions& o, bool progress) {
  check_options(o);
  torch::NoGradGuard no_grad;
  Transformer model = load_hf_model(o.model_dir);
  const PlannedWeights planned = plan_for(*model, o);
  const Plan& plan = planned.plan;
  const auto& params = planned.params;

  std::map<std::string, QuantizedMatrix> packed;
  std::map<std::string, WeightReport> report;
  // Round to nearest for every planned weight GPTQ does not take (all of them under rtn; the
  // embedding and LM head under gptq, before calibration so that the inputs see them quantised).
  quantize_planned_rtn(plan, params, o, /*skip_layers=*/o.method == "gptq", packed, report);
  if (o.method == "gptq") quantize_layers_gptq(*model, o, plan, params, packed, report, progress);

  const QuantizationConfig config = quantization_config_of(o, plan);
  int64_t bytes_before = 0, bytes_after = 0;

  std::vector<std::pair<std::string, torch::Tensor>> stored;
  nlohmann::json weights = nlohmann::json::object();
  double output_error_sum = 0, rtn_output_error_sum = 0;
  int64_t calibrated = 0;
  for (const auto& [name, tensor] : model->named_weights()) {
    auto it = packed.find(name);
    if (it == packed.end()) {
      stored.emplace_back(name, tensor);
      continue;
    }
    bytes_before += tensor.numel() * 4;
    bytes_after += it->second.bytes();
    for (auto& [stored_name, t] : stored_tensors(name, it->second))
      stored.emplace_back(stored_name, t);
    const WeightReport& r = report.at(name);
    nlohmann::json w = {{"bits", r.bits}, {"relative_weight_error", r.weight_error}};
    if (r.output_error >= 0) {
      w["relative_output_error"] = r.output_error;
      w["rtn_relative_output_error"] = r.rtn_output_error;
      output_error_sum += r.output_error;
      rtn_output_error_sum += r.rtn_output_error;
      ++calibrated;
    }
    weights[name] = w;
  }
  nlohmann::json summary = {{"model", o.model_dir},
                            {"out", o.out_dir},
                            {"quantization", describe(config)},
                            {"quantization_config", quantization_config_json(config)},
                            {"quantised_fp32_bytes", bytes_before},
                            {"quantised_bytes", bytes_after},
                            {"weights", weights}};
  if (calibrated > 0) {
    summary["mean_relative_output_error"] = output_error_sum / static_cast<double>(calibrated);
    summary["mean_rtn_relative_output_error"] =
        rtn_output_error_sum / static_cast<double>(calibrated);
  }
  SaveOptions save;
  save.tokenizer_path = tokenizer_path_if_any(o.model_dir);
  save.quantization_config = quantization_config_json(config);
  save.extra_files["quantize.json"] = summary.dump(2) + "\n";
  save_hf_model(model->config, stored, o.out_dir, save);
  return summary;
}

}  // namespace tiller
