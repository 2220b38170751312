#include "common/io/peft_adapter.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <sstream>

#include "common/io/hf_dir.h"
#include "common/io/safetensors.h"
#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

namespace {

const char* kConfigFile = "adapter_config.json";
const char* kWeightsFile = "adapter_model.safetensors";

std::vector<std::string> string_list(const nlohmann::json& value, const std::string& where) {
  std::vector<std::string> out;
  if (value.is_null()) return out;
  if (value.is_string()) return {value.get<std::string>()};
  check(value.is_array(), where + ": expected a string or a list of strings");
  for (const auto& item : value) {
    check(item.is_string(), where + ": expected a list of strings");
    out.push_back(item.get<std::string>());
  }
  return out;
}

// Whether a config key holds something other than its "not used" values (absent, null, false,
// empty).
bool set(const nlohmann::json& config, const char* key) {
  if (!config.contains(key)) return false;
  const auto& value = config.at(key);
  if (value.is_null()) return false;
  if (value.is_boolean()) return value.get<bool>();
  if (value.is_object() || value.is_array() || value.is_string()) return !value.empty();
  return true;
}

// PEFT matches a target to every module whose name ends with it ("self_attn.q_proj": every
// layer's q_proj); Tiller's adapted projections and modules to save are named by the last part.
// A target naming one layer ("model.layers.0.self_attn.q_proj") would adapt that layer alone,
// which Tiller does not do: refused rather than widened to every layer.
std::string tiller_target(const std::string& name, const std::string& where) {
  std::string part;
  std::istringstream parts(name);
  while (std::getline(parts, part, '.'))
    check(part.empty() || part.find_first_not_of("0123456789") != std::string::npos,
          where + ": \"" + name +
              "\" names one layer's module; Tiller adapts a projection in every layer");
  const auto dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

}  // namespace

void write_peft_adapter(TransformerImpl& model, const std::string& dir) {
  check(has_lora(model), "write_peft_adapter: the model has no LoRA adapters");
  const LoraOptions& o = model.lora->options;
  nlohmann::json config = {
      {"peft_type", "LORA"},
      {"task_type", model.config.num_labels > 0 ? "SEQ_CLS" : "CAUSAL_LM"},
      {"base_model_name_or_path", model.lora->base_model},
      {"r", o.rank},
      {"lora_alpha", o.alpha},
      {"lora_dropout", o.dropout},
      {"target_modules", o.targets},
      {"modules_to_save",
       o.modules_to_save.empty() ? nlohmann::json(nullptr) : nlohmann::json(o.modules_to_save)},
      {"use_rslora", o.rslora},
      {"init_lora_weights",
       o.init == "gaussian" ? nlohmann::json("gaussian") : nlohmann::json(true)},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"use_dora", false},
      {"inference_mode", true},
      {"layers_to_transform", nullptr},
      {"rank_pattern", nlohmann::json::object()},
      {"alpha_pattern", nlohmann::json::object()},
      {"revision", nullptr}};
  make_directories(dir);
  write_file_atomic(dir + "/" + kConfigFile, config.dump(2) + "\n");
  std::vector<std::pair<std::string, torch::Tensor>> weights;
  for (const auto& [name, tensor] : lora_weights(model))
    weights.emplace_back(name, tensor.detach().to(torch::kCPU, torch::kFloat).contiguous());
  write_safetensors(dir + "/" + kWeightsFile, weights, {{"format", "pt"}});
}

LoraOptions read_peft_adapter_config(const std::string& dir) {
  const std::string path = dir + "/" + kConfigFile;
  check(path_exists(path), dir + ": not a PEFT adapter directory (no " + kConfigFile + ")");
  const nlohmann::json config = read_json_file(path);
  check(config.is_object(), path + ": expected a JSON object");
  auto where = [&](const std::string& key) { return path + ": " + key; };
  const std::string type = config.value("peft_type", "");
  check(type == "LORA", where("peft_type") + " is \"" + type + "\"; only LORA adapters are read");
  for (const char* unsupported :
       {"use_dora", "fan_in_fan_out", "rank_pattern", "alpha_pattern", "layers_to_transform",
        "layers_pattern", "megatron_config", "loftq_config"})
    check(!set(config, unsupported),
          where(unsupported) + " is set; Tiller does not run such adapters");
  check(config.value("bias", std::string("none")) == "none",
        where("bias") + " must be \"none\" (trained biases are not supported)");
  LoraOptions o;
  try {
    o.rank = config.at("r").get<int64_t>();
    o.alpha = config.value("lora_alpha", 8.0);
    o.dropout = config.value("lora_dropout", 0.0);
    o.rslora = config.value("use_rslora", false);
    const auto& init = config.value("init_lora_weights", nlohmann::json(true));
    o.init = init.is_string() && init.get<std::string>() == "gaussian" ? "gaussian" : "kaiming";
    o.targets.clear();
    for (const auto& name :
         string_list(config.value("target_modules", nlohmann::json()), where("target_modules")))
      o.targets.push_back(name == "all-linear" ? name
                                               : tiller_target(name, where("target_modules")));
    if (o.targets.size() == 1 && o.targets[0] == "all-linear") o.targets = lora_target_names();
    // PEFT adds "classifier" and "score" to a SEQ_CLS adapter's modules_to_save whatever the user
    // named (peft 0.11 saves ["score", "classifier", "score"]): Llama's head is "score", so
    // "classifier" names nothing here, and a name given twice is one module.
    for (const auto& name :
         string_list(config.value("modules_to_save", nlohmann::json()), where("modules_to_save"))) {
      const std::string module = tiller_target(name, where("modules_to_save"));
      if (module == "classifier") continue;
      if (std::find(o.modules_to_save.begin(), o.modules_to_save.end(), module) ==
          o.modules_to_save.end())
        o.modules_to_save.push_back(module);
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": " + std::string(e.what()));
  }
  return o;
}

void load_peft_adapter_weights(TransformerImpl& model, const std::string& dir) {
  const std::string path = dir + "/" + kWeightsFile;
  check(path_exists(path), dir + ": no " + std::string(kWeightsFile) +
                               " (adapter_model.bin is not read: save with safetensors)");
  auto weights = read_safetensors(path);
  // Older PEFT versions kept the adapter name in the saved keys (lora_A.default.weight).
  std::map<std::string, torch::Tensor> renamed;
  for (auto& [name, tensor] : weights) {
    std::string key = name;
    const auto at = key.find(".default.");
    if (at != std::string::npos) key.erase(at, 8);
    renamed[key] = tensor;
  }
  load_lora_weights(model, renamed, path);
}

void attach_peft_adapter(TransformerImpl& model, const std::string& dir) {
  const LoraOptions options = read_peft_adapter_config(dir);
  attach_lora(model, options, /*seed=*/0, dir + "/" + kConfigFile);
  model.lora->base_model =
      read_json_file(dir + "/" + kConfigFile).value("base_model_name_or_path", std::string());
  load_peft_adapter_weights(model, dir);
}

Transformer load_hf_model_with_adapter(const std::string& model_dir, const std::string& adapter_dir,
                                       int64_t num_labels, QuantizedModels quantized) {
  Transformer model = load_hf_model(model_dir, num_labels, quantized);
  if (adapter_dir.empty()) return model;
  try {
    attach_peft_adapter(*model, adapter_dir);
  } catch (const Error& e) {
    throw Error("adapter " + adapter_dir + " on the model in " + model_dir + ": " + e.what());
  }
  return model;
}

}  // namespace tiller
