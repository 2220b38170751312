#include "common/io/hf_dir.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <set>

#include "common/io/peft_adapter.h"
#include "common/io/safetensors.h"
#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

namespace fs = std::filesystem;

namespace {

const char* const kSingleFile = "model.safetensors";
const char* const kIndexFile = "model.safetensors.index.json";

bool is_head(const std::string& name) {
  return name.rfind("lm_head.", 0) == 0 || name.rfind("score.", 0) == 0;
}

std::string shape_string(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace

std::map<std::string, torch::Tensor> read_hf_weights(const std::string& dir) {
  check(is_directory(dir), "model directory " + dir + " does not exist");
  const std::string single = dir + "/" + kSingleFile, index = dir + "/" + kIndexFile;
  if (path_exists(single)) return read_safetensors(single);
  check(path_exists(index), dir + ": no " + kSingleFile + " nor " + kIndexFile);

  auto json = read_json_file(index);
  check(json.is_object() && json.contains("weight_map") && json["weight_map"].is_object(),
        index + ": missing weight_map object");
  std::map<std::string, std::set<std::string>> names_by_shard;
  for (auto it = json["weight_map"].begin(); it != json["weight_map"].end(); ++it) {
    check(it->is_string(), index + ": weight_map['" + it.key() + "'] is not a string");
    const std::string shard = it->get<std::string>();
    check(!shard.empty() && shard.find('/') == std::string::npos && shard != "." && shard != "..",
          index + ": shard name '" + shard + "' must be a plain file name in the directory");
    names_by_shard[shard].insert(it.key());
  }
  std::map<std::string, torch::Tensor> out;
  for (const auto& [shard, names] : names_by_shard) {
    SafetensorsFile file(dir + "/" + shard);
    for (const auto& name : names) {
      check(file.contains(name), index + ": tensor '" + name + "' is mapped to " + shard +
                                     ", which does not contain it");
      out[name] = file.tensor(name);
    }
  }
  return out;
}

void load_weights(TransformerImpl& model, const std::map<std::string, torch::Tensor>& weights,
                  const std::string& where, bool heads_optional) {
  torch::NoGradGuard no_grad;
  std::vector<std::string> missing, mismatched, unexpected;
  std::set<std::string> expected;
  const int tp_size = model.tensor_parallel().size();
  for (auto& [name, param] : model.local_weights()) {
    expected.insert(name);
    auto it = weights.find(name);
    if (it == weights.end()) {
      if (!(heads_optional && is_head(name))) missing.push_back(name);
      continue;
    }
    // The files hold full weights; a tensor-parallel shard takes its part of them.
    auto full_shape = param.sizes().vec();
    const int dim = TransformerImpl::sharded_dim(name);
    if (dim >= 0) full_shape[static_cast<size_t>(dim)] *= tp_size;
    if (it->second.sizes() != torch::IntArrayRef(full_shape)) {
      mismatched.push_back(name + " " + shape_string(it->second.sizes()) + " (model expects " +
                           shape_string(full_shape) + ")");
      continue;
    }
    param.copy_(model.local_part(name, it->second).to(param.scalar_type()));
  }
  for (const auto& [name, tensor] : weights) {
    if (expected.count(name)) continue;
    // Transformers may store the rotary table; it is derived, not a weight.
    if (name.find("rotary_emb.inv_freq") != std::string::npos) continue;
    // A tied model's file may still hold lm_head.weight (equal to the embedding).
    if (name == "lm_head.weight" && model.config.tie_word_embeddings &&
        model.config.num_labels == 0)
      continue;
    if (heads_optional && is_head(name)) continue;
    unexpected.push_back(name);
  }
  if (missing.empty() && mismatched.empty() && unexpected.empty()) return;
  std::string message = where + ": weights do not match the model:";
  auto list = [&](const char* label, const std::vector<std::string>& names) {
    if (names.empty()) return;
    message += std::string(" ") + label + " (" + std::to_string(names.size()) + "): ";
    for (size_t i = 0; i < names.size() && i < 8; ++i) message += (i ? ", " : "") + names[i];
    if (names.size() > 8) message += ", ...";
    message += ";";
  };
  list("missing", missing);
  list("wrong shape", mismatched);
  list("unexpected", unexpected);
  message.pop_back();
  throw Error(message);
}

std::optional<QuantizationConfig> quantization_of(const std::string& dir) {
  const std::string path = dir + "/config.json";
  if (!path_exists(path)) return std::nullopt;
  const auto json = read_json_file(path);
  if (!json.is_object() || !json.contains("quantization_config")) return std::nullopt;
  return parse_quantization_config(json["quantization_config"], path);
}

Transformer load_hf_model(const std::string& dir, int64_t num_labels, QuantizedModels quantized) {
  ModelConfig config = load_model_config(dir);
  const auto quantization = quantization_of(dir);
  check(!quantization || quantized == QuantizedModels::load_frozen,
        dir + " is a quantised model (" + (quantization ? describe(*quantization) : "") +
            "): it loads only where it stays frozen (generate, chat, eval, a reference or reward "
            "model); train from the full-precision model it was quantised from");
  const bool head_changes = num_labels >= 0 && num_labels != config.num_labels;
  if (num_labels >= 0) config.num_labels = num_labels;
  Transformer model(config);
  if (head_changes) model->init_weights(/*seed=*/0, /*heads_only=*/true);
  auto weights = read_hf_weights(dir);
  std::shared_ptr<QuantizedWeights> packed;
  if (quantization)
    packed = std::make_shared<QuantizedWeights>(unpack_stored(weights, *quantization, dir));
  load_weights(*model, weights, dir, /*heads_optional=*/head_changes);
  if (packed) {
    // Head weights dropped for a new head are not the model's any more.
    for (auto it = packed->matrices.begin(); it != packed->matrices.end();)
      it = head_changes && is_head(it->first) ? packed->matrices.erase(it) : std::next(it);
    model->quantized = packed;
    std::fprintf(stderr, "%s: a quantised model (%s), loaded frozen\n", dir.c_str(),
                 describe(*quantization).c_str());
  }
  model->eval();
  return model;
}

Transformer load_causal_lm(const std::string& dir, const std::string& role,
                           QuantizedModels quantized) {
  Transformer model = load_hf_model(dir, /*num_labels=*/-1, quantized);
  check(model->config.num_labels == 0,
        role + " " + dir + " has a score head; it must be a causal LM");
  return model;
}

void save_hf_model(TransformerImpl& model, const std::string& dir, const SaveOptions& options) {
  if (!has_lora(model)) return save_hf_model(model.config, model.named_weights(), dir, options);
  SaveOptions with_adapter = options;
  with_adapter.adapter_of = &model;
  save_hf_model(model.config, merged_weights(model), dir, with_adapter);
}

void save_hf_model(const ModelConfig& config,
                   const std::vector<std::pair<std::string, torch::Tensor>>& weights,
                   const std::string& dir, const SaveOptions& options) {
  fs::path target = fs::absolute(dir).lexically_normal();
  if (target.filename().empty()) target = target.parent_path();
  check(!target.filename().empty(), "cannot save a model to " + dir);
  make_directories(target.parent_path().string());
  const std::string tmp = target.string() + ".tmp-" + std::to_string(::getpid());
  remove_all(tmp);
  make_directories(tmp);
  try {
    auto config_json = model_config_to_hf_json(config);
    if (!options.quantization_config.is_null())
      config_json["quantization_config"] = options.quantization_config;
    write_file_atomic(tmp + "/config.json", config_json.dump(2) + "\n");

    // Split into shards in parameter order when the model is larger than one shard.
    std::vector<std::vector<std::pair<std::string, torch::Tensor>>> shards(1);
    int64_t shard_bytes = 0, total_bytes = 0;
    for (auto& [name, tensor] : weights) {
      const int64_t bytes = tensor.numel() * tensor.element_size();
      if (shard_bytes > 0 && shard_bytes + bytes > options.max_shard_bytes) {
        shards.emplace_back();
        shard_bytes = 0;
      }
      shards.back().emplace_back(name, tensor);
      shard_bytes += bytes;
      total_bytes += bytes;
    }
    const std::map<std::string, std::string> metadata = {{"format", "pt"}};
    if (shards.size() == 1) {
      write_safetensors(tmp + "/" + kSingleFile, shards[0], metadata);
    } else {
      nlohmann::json index;
      index["metadata"] = {{"total_size", total_bytes}};
      index["weight_map"] = nlohmann::json::object();
      for (size_t i = 0; i < shards.size(); ++i) {
        char name[64];
        std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
        write_safetensors(tmp + "/" + name, shards[i], metadata);
        for (const auto& [tensor_name, t] : shards[i]) index["weight_map"][tensor_name] = name;
      }
      write_file_atomic(tmp + "/" + kIndexFile, index.dump(2) + "\n");
    }
    const std::string& tokenizer = options.tokenizer_path;
    if (tokenizer.size() >= 5 && tokenizer.compare(tokenizer.size() - 5, 5, ".json") == 0) {
      write_file_atomic(tmp + "/tokenizer.json", read_file(tokenizer));
      const std::string beside =
          (fs::path(tokenizer).parent_path() / "tokenizer_config.json").string();
      if (path_exists(beside)) write_file_atomic(tmp + "/tokenizer_config.json", read_file(beside));
    } else if (!tokenizer.empty()) {
      write_file_atomic(tmp + "/tokenizer.model", read_file(tokenizer));
      nlohmann::json tokenizer_config = {{"tokenizer_class", "LlamaTokenizer"},
                                         {"add_bos_token", true},
                                         {"add_eos_token", false},
                                         {"legacy", true}};
      // The model's chat template and the special tokens it names travel with it (template: model).
      const std::string beside =
          (fs::path(tokenizer).parent_path() / "tokenizer_config.json").string();
      if (path_exists(beside)) {
        const nlohmann::json source = read_json_file(beside);
        for (const char* key : {"chat_template", "bos_token", "eos_token"})
          if (source.is_object() && source.contains(key)) tokenizer_config[key] = source[key];
      }
      write_file_atomic(tmp + "/tokenizer_config.json", tokenizer_config.dump(2) + "\n");
    }
    if (!tokenizer.empty()) {
      const std::string jinja =
          (fs::path(tokenizer).parent_path() / "chat_template.jinja").string();
      if (path_exists(jinja)) write_file_atomic(tmp + "/chat_template.jinja", read_file(jinja));
    }
    nlohmann::json generation = {
        {"bos_token_id",
         config.bos_token_id >= 0 ? nlohmann::json(config.bos_token_id) : nlohmann::json()},
        {"eos_token_id", config.eos_token_id}};
    write_file_atomic(tmp + "/generation_config.json", generation.dump(2) + "\n");
    if (options.adapter_of != nullptr) write_peft_adapter(*options.adapter_of, tmp + "/adapter");
    for (const auto& [name, contents] : options.extra_files)
      write_file_atomic(tmp + "/" + name, contents);
    fsync_directory(tmp);
    // Replace: move any old directory aside, rename the new one in, then delete the old.
    const std::string old = target.string() + ".old-" + std::to_string(::getpid());
    if (path_exists(target.string())) fs::rename(target, old);
    fs::rename(tmp, target);
    fsync_directory(target.parent_path().string());
    remove_all(old);
  } catch (const fs::filesystem_error& e) {
    remove_all(tmp);
    throw Error("cannot save model to " + target.string() + ": " + e.code().message());
  } catch (...) {
    remove_all(tmp);
    throw;
  }
}

std::string tokenizer_path_if_any(const std::string& dir) {
  // SentencePiece first: Llama 2 and Mistral directories ship a tokenizer.json beside their
  // tokenizer.model that is not byte-level BPE.
  for (const std::string file : {"/tokenizer.model", "/tokenizer.json"})
    if (path_exists(dir + file)) return dir + file;
  return "";
}

std::string tokenizer_path_in(const std::string& dir) {
  const std::string path = tokenizer_path_if_any(dir);
  check(!path.empty(), dir + ": no tokenizer.model or tokenizer.json (pass --tokenizer)");
  return path;
}

}  // namespace tiller
