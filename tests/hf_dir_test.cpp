// HF model directories: save -> load is bit exact (single file, shards, Qwen2 shape, score head),
// config.json carries the HF keys, and broken directories give one clear error each.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <set>

#include "common/io/hf_dir.h"
#include "common/io/safetensors.h"
#include "common/torch_compat.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

ModelConfig tiny_llama() {
  ModelConfig c = test::llama_config(48, 32, 56, 2, 4, 2, 64);
  c.tie_word_embeddings = true;
  return c;
}

// A model whose every tensor (norms and biases included) holds distinct random values.
Transformer random_model(const ModelConfig& config, uint64_t seed) {
  Transformer model(config);
  torch::NoGradGuard no_grad;
  auto gen = compat::make_cpu_generator(seed);
  for (auto& p : model->parameters()) p.copy_(torch::randn(p.sizes(), gen, torch::kFloat));
  return model;
}

// Same names, shapes, dtypes and bits.
void expect_same_config(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(model_config_to_hf_json(a), model_config_to_hf_json(b));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Round trips

TEST(HfDir, RoundTripIsBitExact) {
  auto model = random_model(tiny_llama(), 1);
  const std::string dir = test::temp_dir("hf_roundtrip") + "/model";
  save_hf_model(*model, dir);
  EXPECT_TRUE(path_exists(dir + "/model.safetensors"));
  EXPECT_FALSE(path_exists(dir + "/model.safetensors.index.json"));
  EXPECT_TRUE(path_exists(dir + "/generation_config.json"));
  // Tied: the file holds no lm_head, as transformers writes it.
  SafetensorsFile file(dir + "/model.safetensors");
  EXPECT_FALSE(file.contains("lm_head.weight"));
  EXPECT_EQ(file.entries().size(), model->named_weights().size());

  auto json = read_json_file(dir + "/config.json");
  EXPECT_EQ(json["architectures"], nlohmann::json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(json["model_type"], "llama");
  EXPECT_EQ(json["num_key_value_heads"], 2);
  EXPECT_EQ(json["tie_word_embeddings"], true);
  EXPECT_FALSE(json.contains("pad_token_id"));
  EXPECT_FALSE(json.contains("num_labels"));

  auto loaded = load_hf_model(dir);
  expect_same_config(loaded->config, model->config);
  test::expect_same_weights(*model, *loaded);
  // No temporary directories left next to the output.
  for (const auto& entry : std::filesystem::directory_iterator(dir + "/.."))
    EXPECT_EQ(entry.path().filename(), "model");
}

TEST(HfDir, ShardedRoundTripWritesAnIndex) {
  auto model = random_model(tiny_llama(), 2);
  const std::string dir = test::temp_dir("hf_sharded") + "/model";
  SaveOptions options;
  options.max_shard_bytes = 24 * 1024;  // the model is ~100 KB
  save_hf_model(*model, dir, options);
  EXPECT_FALSE(path_exists(dir + "/model.safetensors"));
  auto index = read_json_file(dir + "/model.safetensors.index.json");
  ASSERT_TRUE(index["weight_map"].is_object());

  std::set<std::string> shards;
  int64_t total = 0, largest = 0;
  for (auto& [name, tensor] : model->named_weights()) {
    ASSERT_TRUE(index["weight_map"].contains(name)) << name;
    const std::string shard = index["weight_map"][name];
    EXPECT_TRUE(SafetensorsFile(dir + "/" + shard).contains(name)) << name;
    shards.insert(shard);
    const int64_t bytes = tensor.numel() * tensor.element_size();
    total += bytes;
    largest = std::max(largest, bytes);
  }
  EXPECT_EQ(index["weight_map"].size(), model->named_weights().size());
  EXPECT_EQ(index["metadata"]["total_size"], total);
  EXPECT_GE(shards.size(), 3u);
  const std::string last = "model-0000" + std::to_string(shards.size()) + "-of-0000" +
                           std::to_string(shards.size()) + ".safetensors";
  EXPECT_TRUE(shards.count(last)) << last;
  for (const auto& shard : shards) {
    int64_t bytes = 0;
    SafetensorsFile file(dir + "/" + shard);
    for (const auto& [name, entry] : file.entries())
      bytes += static_cast<int64_t>(entry.end - entry.begin);
    EXPECT_LE(bytes, std::max<int64_t>(options.max_shard_bytes, largest)) << shard;
  }

  auto loaded = load_hf_model(dir);
  test::expect_same_weights(*model, *loaded);

  // Saving again in one file replaces the directory: no stale shards or index remain.
  save_hf_model(*model, dir);
  EXPECT_TRUE(path_exists(dir + "/model.safetensors"));
  EXPECT_FALSE(path_exists(dir + "/model.safetensors.index.json"));
  EXPECT_FALSE(path_exists(dir + "/" + last));
}

TEST(HfDir, Qwen2ShapeRoundTrips) {
  ModelConfig c = tiny_llama();
  c.model_type = "qwen2";
  c.attention_bias = true;
  c.tie_word_embeddings = false;
  c.rope_theta = 1000000.0;
  c.rms_norm_eps = 1e-6;
  auto model = random_model(c, 3);
  const std::string dir = test::temp_dir("hf_qwen2") + "/model";
  save_hf_model(*model, dir);

  auto json = read_json_file(dir + "/config.json");
  EXPECT_EQ(json["architectures"], nlohmann::json::array({"Qwen2ForCausalLM"}));
  EXPECT_EQ(json["model_type"], "qwen2");
  EXPECT_EQ(json["tie_word_embeddings"], false);
  EXPECT_EQ(json["rope_theta"], 1000000.0);
  SafetensorsFile file(dir + "/model.safetensors");
  EXPECT_TRUE(file.contains("lm_head.weight"));
  EXPECT_TRUE(file.contains("model.layers.1.self_attn.q_proj.bias"));
  EXPECT_TRUE(file.contains("model.layers.1.self_attn.k_proj.bias"));
  EXPECT_TRUE(file.contains("model.layers.1.self_attn.v_proj.bias"));
  EXPECT_FALSE(file.contains("model.layers.1.self_attn.o_proj.bias"));

  auto loaded = load_hf_model(dir);
  EXPECT_TRUE(loaded->config.attention_bias);
  expect_same_config(loaded->config, c);
  test::expect_same_weights(*model, *loaded);
}

TEST(HfDir, ScoreHeadRoundTripsAsSequenceClassification) {
  ModelConfig c = tiny_llama();
  c.num_labels = 1;
  c.pad_token_id = 0;
  auto model = random_model(c, 4);
  const std::string dir = test::temp_dir("hf_score") + "/rm";
  save_hf_model(*model, dir);

  auto json = read_json_file(dir + "/config.json");
  EXPECT_EQ(json["architectures"], nlohmann::json::array({"LlamaForSequenceClassification"}));
  EXPECT_EQ(json["num_labels"], 1);
  EXPECT_EQ(json["pad_token_id"], 0);
  EXPECT_EQ(json["id2label"], nlohmann::json({{"0", "LABEL_0"}}));
  SafetensorsFile file(dir + "/model.safetensors");
  ASSERT_TRUE(file.contains("score.weight"));
  EXPECT_EQ(file.entries().at("score.weight").shape, (std::vector<int64_t>{1, 32}));
  EXPECT_FALSE(file.contains("lm_head.weight"));

  auto loaded = load_hf_model(dir);
  EXPECT_EQ(loaded->config.num_labels, 1);
  EXPECT_EQ(loaded->config.pad_token_id, 0);
  test::expect_same_weights(*model, *loaded);
  auto ids = torch::tensor({{1, 5, 7, 9}}, torch::kLong);
  auto mask = torch::ones_like(ids);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(model->sequence_scores(ids, mask), loaded->sequence_scores(ids, mask)));
}

TEST(HfDir, HeadOverrideKeepsTheBody) {
  // An LM directory initialising a reward model: the body loads, the score head is new.
  auto lm = random_model(tiny_llama(), 5);
  const std::string dir = test::temp_dir("hf_head") + "/lm";
  save_hf_model(*lm, dir);
  auto rm = load_hf_model(dir, /*num_labels=*/1);
  EXPECT_EQ(rm->config.num_labels, 1);
  ASSERT_TRUE(static_cast<bool>(rm->score));
  auto lm_weights = lm->named_weights();
  auto rm_weights = rm->named_weights();
  std::map<std::string, torch::Tensor> by_name(rm_weights.begin(), rm_weights.end());
  for (auto& [name, tensor] : lm_weights) {
    ASSERT_TRUE(by_name.count(name)) << name;
    EXPECT_TRUE(torch::equal(tensor, by_name[name])) << name;
  }
  EXPECT_EQ(rm_weights.size(), lm_weights.size() + 1);
}

// ---------------------------------------------------------------------------------------------
// Broken directories

TEST(HfDir, MissingUnexpectedAndMisshapenTensorsAreOneError) {
  auto model = random_model(tiny_llama(), 6);
  const std::string dir = test::temp_dir("hf_strict") + "/model";
  save_hf_model(*model, dir);
  auto weights = read_safetensors(dir + "/model.safetensors");
  weights.erase("model.layers.0.mlp.up_proj.weight");
  weights["model.layers.1.self_attn.k_proj.weight"] = torch::zeros({8, 32});
  weights["model.layers.7.extra.weight"] = torch::zeros({3});
  std::vector<std::pair<std::string, torch::Tensor>> list(weights.begin(), weights.end());
  write_safetensors(dir + "/model.safetensors", list);

  const std::string message = test::error_of([&] { load_hf_model(dir); });
  EXPECT_NE(message.find(dir), std::string::npos) << message;
  EXPECT_NE(message.find("missing (1): model.layers.0.mlp.up_proj.weight"), std::string::npos)
      << message;
  EXPECT_NE(message.find("wrong shape (1): model.layers.1.self_attn.k_proj.weight [8, 32] "
                         "(model expects [16, 32])"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("unexpected (1): model.layers.7.extra.weight"), std::string::npos)
      << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

TEST(HfDir, MissingPiecesAreNamed) {
  auto model = random_model(tiny_llama(), 7);
  const std::string root = test::temp_dir("hf_missing");

  const std::string no_dir = root + "/does-not-exist";
  std::string message = test::error_of([&] { load_hf_model(no_dir); });
  EXPECT_NE(message.find(no_dir), std::string::npos) << message;
  EXPECT_NE(message.find("does not exist"), std::string::npos) << message;

  const std::string no_config = root + "/no-config";
  save_hf_model(*model, no_config);
  std::filesystem::remove(no_config + "/config.json");
  message = test::error_of([&] { load_hf_model(no_config); });
  EXPECT_NE(message.find(no_config + "/config.json"), std::string::npos) << message;

  const std::string no_weights = root + "/no-weights";
  save_hf_model(*model, no_weights);
  std::filesystem::remove(no_weights + "/model.safetensors");
  message = test::error_of([&] { load_hf_model(no_weights); });
  EXPECT_NE(message.find(no_weights), std::string::npos) << message;
  EXPECT_NE(message.find("model.safetensors"), std::string::npos) << message;

  const std::string no_shard = root + "/no-shard";
  SaveOptions sharded;
  sharded.max_shard_bytes = 24 * 1024;
  save_hf_model(*model, no_shard, sharded);
  const std::string shard =
      read_json_file(no_shard + "/model.safetensors.index.json")["weight_map"]["model.norm.weight"];
  std::filesystem::remove(no_shard + "/" + shard);
  message = test::error_of([&] { load_hf_model(no_shard); });
  EXPECT_NE(message.find(no_shard + "/" + shard), std::string::npos) << message;

  message = test::error_of([&] { tokenizer_path_in(no_weights); });
  EXPECT_NE(message.find(no_weights + ": no tokenizer.model or tokenizer.json"), std::string::npos)
      << message;
  // A tokenizer.json alone (Llama 3, Qwen2) is the tokenizer; beside a tokenizer.model (Llama 2
  // ships both, its tokenizer.json not byte-level), the SentencePiece model is.
  std::ofstream(no_weights + "/tokenizer.json") << "{}";
  EXPECT_EQ(tokenizer_path_in(no_weights), no_weights + "/tokenizer.json");
  std::ofstream(no_weights + "/tokenizer.model") << "x";
  EXPECT_EQ(tokenizer_path_in(no_weights), no_weights + "/tokenizer.model");
}

TEST(HfDir, ASavedModelKeepsItsChatTemplate) {
  // template: model reads tokenizer_config.json beside the tokenizer: a stage's final/ must carry
  // the chat template (and the special tokens it names) of the SentencePiece model it started from.
  auto model = random_model(tiny_llama(), 12);
  const std::string root = test::temp_dir("hf_chat_template");
  std::filesystem::create_directories(root + "/source");
  write_file_atomic(root + "/source/tokenizer.model", "not read by the save");
  const nlohmann::json config = {{"chat_template", "{{ bos_token }}{{ messages[0].content }}"},
                                 {"bos_token", {{"content", "<s>"}}},
                                 {"eos_token", "</s>"},
                                 {"tokenizer_class", "LlamaTokenizerFast"}};
  write_file_atomic(root + "/source/tokenizer_config.json", config.dump());
  write_file_atomic(root + "/source/chat_template.jinja", "{{ messages }}");
  SaveOptions options;
  options.tokenizer_path = root + "/source/tokenizer.model";
  save_hf_model(*model, root + "/model", options);
  const auto saved = read_json_file(root + "/model/tokenizer_config.json");
  EXPECT_EQ(saved["chat_template"], config["chat_template"]);
  EXPECT_EQ(saved["bos_token"], config["bos_token"]);
  EXPECT_EQ(saved["eos_token"], "</s>");
  EXPECT_EQ(saved["tokenizer_class"], "LlamaTokenizer");
  EXPECT_EQ(read_file(root + "/model/chat_template.jinja"), "{{ messages }}");
}

TEST(HfDir, FailedSaveLeavesNothingBehind) {
  auto model = random_model(tiny_llama(), 10);
  const std::string root = test::temp_dir("hf_failed_save");
  SaveOptions options;
  options.tokenizer_path = root + "/no-such-tokenizer.model";
  const std::string message =
      test::error_of([&] { save_hf_model(*model, root + "/model", options); });
  EXPECT_NE(message.find(options.tokenizer_path), std::string::npos) << message;
  EXPECT_TRUE(std::filesystem::is_empty(root)) << "a partial output was left in " << root;

  // Over an existing model, a failed save keeps the old one intact.
  save_hf_model(*model, root + "/model");
  auto other = random_model(tiny_llama(), 11);
  EXPECT_FALSE(test::error_of([&] { save_hf_model(*other, root + "/model", options); }).empty());
  test::expect_same_weights(*model, *load_hf_model(root + "/model"));
  namespace fs = std::filesystem;
  EXPECT_EQ(std::distance(fs::directory_iterator(root), fs::directory_iterator()), 1);
}

TEST(HfDir, MalformedConfigNamesTheFile) {
  auto model = random_model(tiny_llama(), 8);
  const std::string dir = test::temp_dir("hf_badconfig") + "/model";
  save_hf_model(*model, dir);
  std::ofstream(dir + "/config.json") << "{\n  \"model_type\": \"llama\",\n  \"hidden_size\": }\n";
  std::string message = test::error_of([&] { load_hf_model(dir); });
  EXPECT_NE(message.find(dir + "/config.json:3:"), std::string::npos) << message;
  EXPECT_NE(message.find("invalid JSON"), std::string::npos) << message;

  std::ofstream(dir + "/config.json") << R"({"model_type": "llama", "hidden_size": "64"})";
  message = test::error_of([&] { load_hf_model(dir); });
  EXPECT_NE(message.find(dir + "/config.json"), std::string::npos) << message;
  EXPECT_NE(message.find("hidden_size"), std::string::npos) << message;
}

TEST(HfDir, ShardNamesMustStayInTheDirectory) {
  auto model = random_model(tiny_llama(), 9);
  const std::string root = test::temp_dir("hf_hostile_index");
  const std::string dir = root + "/model";
  SaveOptions sharded;
  sharded.max_shard_bytes = 24 * 1024;
  save_hf_model(*model, dir, sharded);
  const std::string index_path = dir + "/model.safetensors.index.json";
  auto index = read_json_file(index_path);
  const std::string first = index["weight_map"]["model.embed_tokens.weight"];
  // A valid safetensors file outside the directory that a '/' in the index could reach.
  std::filesystem::copy_file(dir + "/" + first, root + "/outside.safetensors");
  for (const std::string shard : {"../outside.safetensors", "/etc/passwd", "sub/x.safetensors"}) {
    auto hostile = index;
    hostile["weight_map"]["model.embed_tokens.weight"] = shard;
    write_file_atomic(index_path, hostile.dump());
    const std::string message = test::error_of([&] { read_hf_weights(dir); });
    EXPECT_NE(message.find(index_path), std::string::npos) << message;
    EXPECT_NE(message.find("'" + shard + "'"), std::string::npos) << message;
  }
  // A shard that does not hold the tensor the index maps to it.
  auto wrong = index;
  wrong["weight_map"]["model.norm.weight"] = first;
  write_file_atomic(index_path, wrong.dump());
  const std::string message = test::error_of([&] { read_hf_weights(dir); });
  EXPECT_NE(message.find("'model.norm.weight' is mapped to " + first), std::string::npos)
      << message;
}
