#include "common/model/lora.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "common/model/transformer.h"
#include "common/torch_compat.h"
#include "common/util/error.h"

namespace tiller {

namespace {

const std::string kPeftPrefix = "base_model.model.";

bool contains(const std::vector<std::string>& list, const std::string& name) {
  return std::find(list.begin(), list.end(), name) != list.end();
}

std::string shape_text(at::IntArrayRef sizes) {
  std::ostringstream out;
  out << sizes;
  return out.str();
}

// The HF weight a module to save stands for.
std::string savable_weight_name(const std::string& module) {
  return module == "embed_tokens" ? "model.embed_tokens.weight" : module + ".weight";
}

// Each projection's HF prefix, its input and output sizes, and the module that holds it.
struct Projection {
  std::string prefix;  // model.layers.N.self_attn.q_proj
  std::string target;  // q_proj
  int64_t layer, in, out;
};

std::vector<Projection> projections(const ModelConfig& c) {
  const int64_t hd = c.resolved_head_dim();
  const int64_t q = c.num_attention_heads * hd, kv = c.num_key_value_heads * hd;
  const int64_t d = c.hidden_size, h = c.intermediate_size;
  const std::vector<std::tuple<std::string, std::string, int64_t, int64_t>> shapes = {
      {"self_attn", "q_proj", d, q}, {"self_attn", "k_proj", d, kv}, {"self_attn", "v_proj", d, kv},
      {"self_attn", "o_proj", q, d}, {"mlp", "gate_proj", d, h},     {"mlp", "up_proj", d, h},
      {"mlp", "down_proj", h, d}};
  std::vector<Projection> out;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    for (const auto& [block, target, in, out_size] : shapes)
      out.push_back({"model.layers." + std::to_string(l) + "." + block + "." + target, target, l,
                     in, out_size});
  return out;
}

// The parameter name a module registers (no dots allowed): model.layers.0.self_attn.q_proj -> ...
std::string parameter_name(const std::string& prefix, const char* which) {
  std::string name = prefix + "_" + which;
  std::replace(name.begin(), name.end(), '.', '_');
  return name;
}

}  // namespace

double LoraOptions::scale() const {
  return rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank);
}

const std::vector<std::string>& lora_target_names() {
  static const std::vector<std::string> names = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                 "gate_proj", "up_proj", "down_proj"};
  return names;
}

const std::vector<std::string>& lora_savable_modules() {
  static const std::vector<std::string> names = {"score", "lm_head", "embed_tokens"};
  return names;
}

void check_lora_options(const LoraOptions& o, const ModelConfig& config, const std::string& where) {
  check(o.rank >= 1, where + ": lora rank " + std::to_string(o.rank) + " must be at least 1");
  check(o.alpha > 0, where + ": lora alpha must be > 0");
  check(o.dropout >= 0 && o.dropout < 1, where + ": lora dropout must be in [0, 1)");
  check(o.init == "kaiming" || o.init == "gaussian",
        where + ": lora init \"" + o.init + "\" is not one of kaiming, gaussian");
  check(o.base_dtype == "fp32" || o.base_dtype == "bf16",
        where + ": lora base_dtype \"" + o.base_dtype + "\" is not one of fp32, bf16");
  check(!o.targets.empty(), where + ": lora targets is empty");
  std::set<std::string> seen;
  for (const auto& target : o.targets) {
    check(contains(lora_target_names(), target),
          where + ": lora target \"" + target +
              "\" is not a projection of this model (q_proj, k_proj, v_proj, o_proj, gate_proj, "
              "up_proj, down_proj, or all-linear)");
    check(seen.insert(target).second, where + ": lora target " + target + " is listed twice");
  }
  for (const auto& module : o.modules_to_save) {
    check(contains(lora_savable_modules(), module),
          where + ": lora modules_to_save \"" + module +
              "\" is not one of score, lm_head, embed_tokens");
    check(module != "score" || config.num_labels > 0,
          where +
              ": lora modules_to_save names score, but this model is a causal LM (no score "
              "head)");
    check(module != "lm_head" || (config.num_labels == 0 && !config.tie_word_embeddings),
          where + ": lora modules_to_save names lm_head, but this model " +
              (config.num_labels > 0 ? std::string("has a score head instead")
                                     : std::string("ties it to embed_tokens (name that)")));
  }
  const int64_t smallest = std::min({config.hidden_size, config.intermediate_size,
                                     config.num_key_value_heads * config.resolved_head_dim()});
  check(o.rank <= smallest, where + ": lora rank " + std::to_string(o.rank) +
                                " exceeds the smallest adapted dimension of the model (" +
                                std::to_string(smallest) + ")");
}

torch::Tensor LoraLinear::add_to(const torch::Tensor& base, const torch::Tensor& x) const {
  if (!owner->active) return base;
  const double p = owner->options.dropout;
  // Dropout while training only: not in generation, nor in the no-grad log-prob passes of RL.
  const bool drop = p > 0 && owner->is_training() && torch::GradMode::is_enabled();
  const auto input = drop ? torch::dropout(x, p, true) : x;
  const auto low = torch::matmul(input.to(a.scalar_type()), a.t());  // [..., rank]
  return base + (torch::matmul(low, b.t()) * owner->options.scale()).to(base.scalar_type());
}

LoraAdaptersImpl::LoraAdaptersImpl(const ModelConfig& config, const LoraOptions& o)
    : options(o), by_layer_(config.num_hidden_layers) {
  for (const auto& p : projections(config)) {
    if (!contains(o.targets, p.target)) continue;
    auto adapter = std::make_unique<LoraLinear>();
    adapter->a = register_parameter(parameter_name(p.prefix, "A"), torch::zeros({o.rank, p.in}));
    adapter->b = register_parameter(parameter_name(p.prefix, "B"), torch::zeros({p.out, o.rank}));
    adapter->owner = this;
    by_layer_[p.layer][p.target] = adapter.get();
    adapters.emplace_back(p.prefix, std::move(adapter));
  }
}

const LoraLinear* LoraAdaptersImpl::find(int64_t layer, const std::string& target) const {
  const auto& slots = by_layer_.at(layer);
  const auto it = slots.find(target);
  return it == slots.end() ? nullptr : it->second;
}

namespace {

// The frozen matrices of the base (the embedding, the seven projections, an untied LM head) in
// bf16; q/k/v and gate/up fused again, so that each group is still one multiply.
void store_frozen_matrices_in_bf16(TransformerImpl& model) {
  torch::NoGradGuard no_grad;
  for (auto& [name, weight] : model.local_weights()) {
    const bool matrix = weight.dim() == 2 && name.rfind("score.", 0) != 0;
    if (matrix && !weight.requires_grad()) weight.set_data(weight.to(torch::kBFloat16));
  }
  for (auto& layer : model.model->layer_list) {
    layer->self_attn->fuse_projections();
    layer->mlp->fuse_projections();
  }
}

}  // namespace

bool has_lora(const TransformerImpl& model) {
  return model.lora != nullptr;
}

void attach_lora(TransformerImpl& model, const LoraOptions& options, uint64_t seed,
                 const std::string& where) {
  check(!has_lora(model), where + ": the model already has LoRA adapters");
  check(model.tensor_parallel().single(),
        where + ": LoRA is not supported under tensor parallelism yet (run.tensor_parallel 1)");
  check_lora_options(options, model.config, where);
  torch::NoGradGuard no_grad;
  for (auto& parameter : model.parameters()) parameter.set_requires_grad(false);
  for (const auto& module : options.modules_to_save)
    for (auto& [name, weight] : model.local_weights())
      if (name == savable_weight_name(module)) weight.set_requires_grad(true);

  auto adapters = std::make_shared<LoraAdaptersImpl>(model.config, options);
  auto generator = compat::make_cpu_generator(seed);
  for (auto& [prefix, adapter] : adapters->adapters) {
    const int64_t in = adapter->a.size(1);
    if (options.init == "gaussian") {
      adapter->a.copy_(torch::randn(adapter->a.sizes(), generator, torch::kFloat) /
                       static_cast<double>(options.rank));
    } else {
      // nn.Linear's reset_parameters (kaiming_uniform_ with a = sqrt(5)): U(-1/sqrt(in),
      // 1/sqrt(in)).
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      adapter->a.copy_(torch::rand(adapter->a.sizes(), generator, torch::kFloat) * (2 * bound) -
                       bound);
    }
  }
  if (options.base_dtype == "bf16") store_frozen_matrices_in_bf16(model);
  const auto device = model.model->embed_tokens->weight.device();
  adapters->to(device);
  model.lora = model.register_module("lora", adapters);
  for (size_t l = 0; l < model.model->layer_list.size(); ++l)
    model.model->layer_list[l]->attach_lora(model.lora.get(), static_cast<int64_t>(l));
}

std::vector<std::pair<std::string, torch::Tensor>> lora_weights(TransformerImpl& model) {
  check(has_lora(model), "lora_weights: the model has no LoRA adapters");
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& [prefix, adapter] : model.lora->adapters) {
    out.emplace_back(kPeftPrefix + prefix + ".lora_A.weight", adapter->a);
    out.emplace_back(kPeftPrefix + prefix + ".lora_B.weight", adapter->b);
  }
  for (const auto& module : model.lora->options.modules_to_save)
    for (auto& [name, weight] : model.local_weights())
      if (name == savable_weight_name(module)) out.emplace_back(kPeftPrefix + name, weight);
  return out;
}

void load_lora_weights(TransformerImpl& model, const std::map<std::string, torch::Tensor>& weights,
                       const std::string& where) {
  auto expected = lora_weights(model);
  std::set<std::string> wanted;
  for (const auto& [name, tensor] : expected) {
    wanted.insert(name);
    const auto it = weights.find(name);
    check(it != weights.end(), where + ": the adapter has no tensor " + name +
                                   " (its targets or modules_to_save differ from the config's)");
    check(it->second.sizes() == tensor.sizes(),
          where + ": tensor " + name + " has shape " + shape_text(it->second.sizes()) +
              ", the base model needs " + shape_text(tensor.sizes()) +
              " (an adapter of another base model, or another rank)");
  }
  for (const auto& [name, tensor] : weights)
    check(wanted.count(name) > 0,
          where + ": unexpected tensor " + name + " (not an adapter of this model's targets)");
  torch::NoGradGuard no_grad;
  for (auto& [name, tensor] : expected) tensor.copy_(weights.at(name).to(tensor.options()));
}

std::vector<std::pair<std::string, torch::Tensor>> merged_weights(TransformerImpl& model) {
  auto weights = model.named_weights();
  if (!has_lora(model)) return weights;
  torch::NoGradGuard no_grad;
  for (auto& [name, weight] : weights)
    if (weight.scalar_type() == torch::kBFloat16) weight = weight.to(torch::kFloat);
  const double scale = model.lora->options.scale();
  std::map<std::string, const LoraLinear*> by_weight;
  for (const auto& [prefix, adapter] : model.lora->adapters)
    by_weight[prefix + ".weight"] = adapter.get();
  for (auto& [name, weight] : weights) {
    const auto it = by_weight.find(name);
    if (it == by_weight.end()) continue;
    const auto& adapter = *it->second;
    const auto delta = torch::matmul(adapter.b.to(torch::kDouble), adapter.a.to(torch::kDouble));
    weight = (weight.to(torch::kDouble) + scale * delta).to(torch::kFloat);
  }
  return weights;
}

int64_t share_frozen_base(TransformerImpl& model, TransformerImpl& source,
                          const std::string& where) {
  check(has_lora(model), where + ": only a model with LoRA adapters shares its frozen base");
  std::map<std::string, torch::Tensor> sources;
  for (auto& [name, tensor] : source.local_weights()) sources.emplace(name, tensor);
  int64_t shared = 0;
  torch::NoGradGuard no_grad;
  for (auto& [name, weight] : model.local_weights()) {
    if (weight.requires_grad()) continue;  // a module to save: this model's own
    const auto it = sources.find(name);
    check(it != sources.end(), where + ": the model to share with has no weight " + name);
    const torch::Tensor& from = it->second;
    check(from.sizes() == weight.sizes() && from.scalar_type() == weight.scalar_type() &&
              from.device() == weight.device(),
          where + ": weight " + name + " is " + shape_text(weight.sizes()) + " " +
              std::string(c10::toString(weight.scalar_type())) + " here but " +
              shape_text(from.sizes()) + " " + c10::toString(from.scalar_type()) +
              " in the model to share with");
    // set_data keeps `from`'s view of its storage, so fused q/k/v and gate/up stay fused.
    weight.set_data(from);
    shared += from.numel() * static_cast<int64_t>(from.element_size());
  }
  return shared;
}

LoraSwitchedOff::LoraSwitchedOff(TransformerImpl& model) : adapters_(model.lora.get()) {
  if (adapters_ == nullptr) return;
  was_active_ = adapters_->active;
  adapters_->active = false;
}

LoraSwitchedOff::~LoraSwitchedOff() {
  if (adapters_ != nullptr) adapters_->active = was_active_;
}

}  // namespace tiller
