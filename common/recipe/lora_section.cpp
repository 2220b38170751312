#include "common/recipe/lora_section.h"

#include <algorithm>
#include <cstdio>

#include "common/io/peft_adapter.h"
#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

namespace {

bool listed(const std::vector<std::string>& list, const std::string& name) {
  return std::find(list.begin(), list.end(), name) != list.end();
}

// A string or a list of strings; mistakes reported at `key`.
std::vector<std::string> names(ConfigReader& r, const std::string& key,
                               const std::vector<std::string>& fallback) {
  const nlohmann::json& value = r.raw(key);
  if (!r.has(key)) return fallback;
  std::vector<std::string> out;
  if (value.is_string()) return {value.get<std::string>()};
  if (value.is_array() && std::all_of(value.begin(), value.end(),
                                      [](const nlohmann::json& v) { return v.is_string(); })) {
    for (const auto& item : value) out.push_back(item.get<std::string>());
    return out;
  }
  r.require(false, key, "expected a name or a list of names");
  return fallback;
}

int64_t trainable_count(TransformerImpl& model) {
  int64_t count = 0;
  for (const auto& p : model.parameters())
    if (p.requires_grad()) count += p.numel();
  return count;
}

}  // namespace

LoraSection read_lora_section(ConfigReader& stage, ConfigErrors& errors, const std::string& key) {
  LoraSection s;
  if (!stage.has(key)) return s;
  s.enabled = true;
  ConfigReader r(stage.object(key), stage.path_of(key), errors);
  LoraOptions& o = s.options;
  o.rank = r.integer("rank", 8);
  o.alpha = r.number("alpha", 16.0);
  o.dropout = r.number("dropout", 0.0);
  o.init = r.string("init", "kaiming");
  o.rslora = r.boolean("rslora", false);
  o.base_dtype = r.string("base_dtype", "fp32");
  r.one_of("base_dtype", o.base_dtype, {"fp32", "bf16"});
  r.require(o.rank >= 1, "rank", "must be at least 1");
  r.require(o.alpha > 0, "alpha", "must be > 0");
  r.require(o.dropout >= 0 && o.dropout < 1, "dropout", "must be in [0, 1)");
  r.one_of("init", o.init, {"kaiming", "gaussian"});

  o.targets = names(r, "targets", {"all-linear"});
  if (o.targets == std::vector<std::string>{"all-linear"}) o.targets = lora_target_names();
  r.require(!o.targets.empty(), "targets", "name at least one projection");
  for (const auto& target : o.targets)
    r.require(listed(lora_target_names(), target), "targets",
              "\"" + target +
                  "\" is not a projection (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
                  "down_proj, or all-linear)");
  o.modules_to_save = names(r, "modules_to_save", {});
  for (const auto& module : o.modules_to_save)
    r.require(listed(lora_savable_modules(), module), "modules_to_save",
              "\"" + module + "\" is not one of score, lm_head, embed_tokens");

  s.init_adapter = r.string("init_adapter", "");
  if (!s.init_adapter.empty() && !path_exists(s.init_adapter + "/adapter_config.json"))
    errors.add(r.path_of("init_adapter"),
               s.init_adapter + " is not a PEFT adapter directory (no adapter_config.json)");
  return s;
}

void train_score_head_whole(LoraSection& s) {
  auto& saved = s.options.modules_to_save;
  if (s.enabled && !listed(saved, "score")) saved.push_back("score");
}

void refuse_modules_to_save_beside_switched_off_reference(const LoraSection& s, ConfigReader& stage,
                                                          ConfigErrors& errors) {
  if (!s.enabled || s.options.modules_to_save.empty()) return;
  errors.add(stage.path_of("lora") + ".modules_to_save",
             "the reference is this policy with its adapters switched off, which would keep the "
             "trained " +
                 s.options.modules_to_save[0] +
                 "; train adapters only, or name a separate reference model");
}

nlohmann::json lora_section_values(const LoraSection& s) {
  const LoraOptions& o = s.options;
  // All seven projections are stated as the recipe names them, which parses back the same.
  const nlohmann::json targets =
      o.targets == lora_target_names() ? nlohmann::json("all-linear") : nlohmann::json(o.targets);
  nlohmann::json values = {{"rank", o.rank},
                           {"alpha", o.alpha},
                           {"dropout", o.dropout},
                           {"targets", targets},
                           {"init", o.init},
                           {"rslora", o.rslora},
                           {"base_dtype", o.base_dtype},
                           {"modules_to_save", o.modules_to_save}};
  if (!s.init_adapter.empty()) values["init_adapter"] = s.init_adapter;
  return values;
}

void apply_lora_section(TransformerImpl& model, const LoraSection& s, const std::string& base,
                        uint64_t seed, const std::string& stage) {
  if (!s.enabled) return;
  const int64_t full = trainable_count(model);
  attach_lora(model, s.options, seed, "stage " + stage);
  model.lora->base_model = base;
  if (!s.init_adapter.empty()) {
    LoraOptions saved = read_peft_adapter_config(s.init_adapter);
    auto wanted = s.options.targets;
    std::sort(saved.targets.begin(), saved.targets.end());
    std::sort(wanted.begin(), wanted.end());
    check(saved.rank == s.options.rank && saved.targets == wanted,
          "stage " + stage + ": lora.init_adapter " + s.init_adapter + " has rank " +
              std::to_string(saved.rank) +
              " and its own targets; the stage's lora rank and targets must be the same");
    load_peft_adapter_weights(model, s.init_adapter);
  }
  const int64_t trained = trainable_count(model);
  std::printf(
      "[%s] LoRA rank %lld on %zu projections per layer: %lld of %lld parameters train "
      "(%.2f%%)\n",
      stage.c_str(), static_cast<long long>(s.options.rank), s.options.targets.size(),
      static_cast<long long>(trained), static_cast<long long>(full),
      100.0 * static_cast<double>(trained) / static_cast<double>(std::max<int64_t>(full, 1)));
}

}  // namespace tiller
