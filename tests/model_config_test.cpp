// ModelConfig: HF config.json written and read back, configs as transformers writes them,
// parameter counts against built models, and invalid or malformed configs named in errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <functional>

#include "common/model/model_config.h"
#include "common/model/transformer.h"
#include "common/util/error.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

ModelConfig small_llama() {
  return test::llama_config(100, 48, 80, 3, 6, 2, 128);
}

std::string parse_error(const nlohmann::json& json) {
  return test::error_of([&] { model_config_from_hf_json(json, "cfg.json"); });
}

void expect_equal(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.resolved_head_dim(), b.resolved_head_dim());
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
  EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
  EXPECT_EQ(a.rope_scaling.low_freq_factor, b.rope_scaling.low_freq_factor);
  EXPECT_EQ(a.rope_scaling.high_freq_factor, b.rope_scaling.high_freq_factor);
  EXPECT_EQ(a.rope_scaling.original_max_position_embeddings,
            b.rope_scaling.original_max_position_embeddings);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.attention_bias, b.attention_bias);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_id, b.eos_token_id);
  EXPECT_EQ(a.pad_token_id, b.pad_token_id);
  EXPECT_EQ(a.num_labels, b.num_labels);
}

}  // namespace

TEST(ModelConfig, HfJsonRoundTrips) {
  ModelConfig llama = small_llama();
  llama.tie_word_embeddings = true;
  llama.rope_theta = 500000.0;
  llama.rms_norm_eps = 1e-6;
  llama.bos_token_id = 5;
  llama.eos_token_id = 7;

  ModelConfig qwen = small_llama();
  qwen.model_type = "qwen2";
  qwen.attention_bias = true;
  qwen.head_dim = 16;  // not hidden / heads

  ModelConfig scorer = small_llama();
  scorer.num_labels = 1;
  scorer.pad_token_id = 3;

  for (const ModelConfig& c : {llama, qwen, scorer}) {
    SCOPED_TRACE(c.model_type + " num_labels " + std::to_string(c.num_labels));
    expect_equal(model_config_from_hf_json(model_config_to_hf_json(c), "cfg"), c);
  }

  auto j = model_config_to_hf_json(scorer);
  EXPECT_EQ(j["architectures"], nlohmann::json::array({"LlamaForSequenceClassification"}));
  EXPECT_EQ(j["num_labels"], 1);
  EXPECT_EQ(j["pad_token_id"], 3);
  EXPECT_EQ(j["hidden_act"], "silu");
  j = model_config_to_hf_json(qwen);
  EXPECT_EQ(j["architectures"], nlohmann::json::array({"Qwen2ForCausalLM"}));
  EXPECT_EQ(j["head_dim"], 16);
  EXPECT_FALSE(j.contains("pad_token_id"));
  j = model_config_to_hf_json(llama);
  EXPECT_EQ(j["architectures"], nlohmann::json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(j["tie_word_embeddings"], true);
  EXPECT_FALSE(j.contains("num_labels"));
  // No BOS (Qwen2 models built from scratch on a tokenizer without one): written as null, read
  // back as none.
  ModelConfig no_bos = small_llama();
  no_bos.bos_token_id = -1;
  EXPECT_TRUE(model_config_to_hf_json(no_bos)["bos_token_id"].is_null());
  expect_equal(no_bos, model_config_from_hf_json(model_config_to_hf_json(no_bos), "again"));
}

TEST(ModelConfig, ReadsConfigsAsTransformersWritesThem) {
  // A TinyLlama-style config: no head_dim, eos as a list (Llama 3 style), extra keys ignored.
  auto lm = model_config_from_hf_json(nlohmann::json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
    "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
    "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 512,
    "max_position_embeddings": 256, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
    "bos_token_id": 1, "eos_token_id": [2, 9], "torch_dtype": "bfloat16",
    "transformers_version": "4.40.0", "rope_scaling": null, "pretraining_tp": 1})"),
                                      "lm");
  EXPECT_EQ(lm.resolved_head_dim(), 8);
  EXPECT_EQ(lm.eos_token_id, 2);
  EXPECT_EQ(lm.pad_token_id, -1);
  EXPECT_EQ(lm.num_labels, 0);
  EXPECT_FALSE(lm.tie_word_embeddings);

  // TRL's reward model: the label count comes from id2label; heads default to attention heads.
  auto rm = model_config_from_hf_json(nlohmann::json::parse(R"({
    "architectures": ["LlamaForSequenceClassification"], "model_type": "llama",
    "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
    "num_attention_heads": 8, "vocab_size": 512, "pad_token_id": 0,
    "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}})"),
                                      "rm");
  EXPECT_EQ(rm.num_labels, 1);
  EXPECT_EQ(rm.num_key_value_heads, 8);
  EXPECT_EQ(rm.pad_token_id, 0);

  auto qwen = model_config_from_hf_json(
      nlohmann::json::parse(R"({"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 300, "tie_word_embeddings": true})"),
      "qwen");
  EXPECT_TRUE(qwen.attention_bias);  // Qwen2 always has q/k/v biases
  EXPECT_TRUE(qwen.tie_word_embeddings);
}

TEST(ModelConfig, ParameterCountMatchesTheBuiltModel) {
  ModelConfig tied = small_llama();
  tied.tie_word_embeddings = true;
  ModelConfig untied = small_llama();
  ModelConfig qwen = small_llama();
  qwen.model_type = "qwen2";
  qwen.attention_bias = true;
  qwen.head_dim = 16;
  ModelConfig scorer = small_llama();
  scorer.num_labels = 1;
  for (const ModelConfig& c : {tied, untied, qwen, scorer}) {
    Transformer model(c);
    int64_t n = 0;
    for (auto& p : model->parameters()) n += p.numel();
    EXPECT_EQ(c.parameter_count(), n) << model_config_to_hf_json(c).dump();
  }
  // Untying adds exactly one [V, D] matrix.
  EXPECT_EQ(untied.parameter_count() - tied.parameter_count(), 100 * 48);
}

TEST(ModelConfig, InvalidConfigsNameTheProblem) {
  auto base = model_config_to_hf_json(small_llama());
  auto with = [&](const char* key, nlohmann::json value) {
    auto j = base;
    j[key] = std::move(value);
    return parse_error(j);
  };
  std::string m = with("num_key_value_heads", 4);
  EXPECT_NE(m.find("cfg.json: num_attention_heads 6 is not divisible by num_key_value_heads 4"),
            std::string::npos)
      << m;
  base.erase("head_dim");  // with an explicit head_dim, hidden_size need not divide
  m = with("hidden_size", 50);
  EXPECT_NE(m.find("hidden_size 50 is not divisible by num_attention_heads 6"), std::string::npos)
      << m;
  m = with("vocab_size", 0);
  EXPECT_NE(m.find("vocab_size must be positive, got 0"), std::string::npos) << m;
  m = with("num_hidden_layers", -2);
  EXPECT_NE(m.find("num_hidden_layers must be positive, got -2"), std::string::npos) << m;
  m = with("model_type", "gpt_neox");
  EXPECT_NE(m.find("model_type 'gpt_neox' is not supported"), std::string::npos) << m;
  m = with("hidden_act", "gelu");
  EXPECT_NE(m.find("hidden_act 'gelu' is not supported"), std::string::npos) << m;
  m = with("rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}});
  EXPECT_NE(m.find("cfg.json: rope_scaling: type 'dynamic' is not supported (linear, llama3)"),
            std::string::npos)
      << m;
  m = with("rope_scaling", {{"rope_type", "linear"}, {"factor", 0.5}});
  EXPECT_NE(m.find("rope_scaling factor must be at least 1, got 0.5"), std::string::npos) << m;
  m = with("rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}});
  EXPECT_NE(m.find("rope_scaling: llama3 needs 'low_freq_factor'"), std::string::npos) << m;
  m = with("rope_scaling", {{"factor", 2.0}});
  EXPECT_NE(m.find("rope_scaling: a factor without a type"), std::string::npos) << m;
  m = with("rope_scaling", {{"type", "linear"}, {"factor", "2"}});
  EXPECT_NE(m.find("rope_scaling: key 'factor' has the wrong type (string)"), std::string::npos)
      << m;
  m = with("rope_scaling", "linear");
  EXPECT_NE(m.find("rope_scaling must be an object or null"), std::string::npos) << m;
  m = with("hidden_size", "48");
  EXPECT_NE(m.find("cfg.json: key 'hidden_size' has the wrong type (string)"), std::string::npos)
      << m;
  m = with("num_hidden_layers", 1.5);
  EXPECT_NE(m.find("key 'num_hidden_layers' has the wrong type (number)"), std::string::npos) << m;
  m = with("hidden_size", true);
  EXPECT_NE(m.find("key 'hidden_size' has the wrong type (boolean)"), std::string::npos) << m;
  m = with("tie_word_embeddings", 1);
  EXPECT_NE(m.find("key 'tie_word_embeddings' has the wrong type (number)"), std::string::npos)
      << m;
  m = with("pad_token_id", 100);
  EXPECT_NE(m.find("pad_token_id 100 is outside the vocabulary"), std::string::npos) << m;
  m = with("eos_token_id", "</s>");
  EXPECT_NE(m.find("eos_token_id"), std::string::npos) << m;
  m = with("vocab_size", int64_t{1} << 40);
  EXPECT_NE(m.find("implausibly large"), std::string::npos) << m;
  // Found by model_config_fuzz: an unbounded head_dim overflowed int64 in parameter_count (UB).
  m = with("head_dim", int64_t{1} << 62);
  EXPECT_NE(m.find("cfg.json: head_dim 4611686018427387904 is out of range"), std::string::npos)
      << m;
  m = with("head_dim", -8);
  EXPECT_NE(m.find("head_dim -8 is out of range"), std::string::npos) << m;
  EXPECT_NE(parse_error(nlohmann::json::array()).find("expected a JSON object"), std::string::npos);
  EXPECT_EQ(parse_error(base), "");  // the base itself is valid: the errors above are the edits'
}

TEST(ModelConfig, RopeScalingAsLlama2LongContextAndLlama31WriteIt) {
  // Llama 3.1's rope_scaling as its config.json has it, and a Llama 2 long-context fine-tune's.
  auto json = model_config_to_hf_json(small_llama());
  json["rope_scaling"] = {{"factor", 8.0},
                          {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0},
                          {"original_max_position_embeddings", 8192},
                          {"rope_type", "llama3"}};
  const ModelConfig llama3 = model_config_from_hf_json(json, "llama3.json");
  EXPECT_EQ(llama3.rope_scaling.type, "llama3");
  EXPECT_EQ(llama3.rope_scaling.factor, 8.0);
  EXPECT_EQ(llama3.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(llama3.rope_scaling.original_max_position_embeddings, 8192);
  expect_equal(llama3, model_config_from_hf_json(model_config_to_hf_json(llama3), "again"));

  json["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  const ModelConfig linear = model_config_from_hf_json(json, "linear.json");
  EXPECT_EQ(linear.rope_scaling.type, "linear");
  EXPECT_EQ(linear.rope_scaling.factor, 4.0);
  const auto written = model_config_to_hf_json(linear);
  EXPECT_EQ(written["rope_scaling"]["rope_type"], "linear");
  EXPECT_EQ(written["rope_scaling"]["type"], "linear");  // what transformers < 4.43 reads
  expect_equal(linear, model_config_from_hf_json(written, "again"));

  json["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_TRUE(model_config_from_hf_json(json, "default.json").rope_scaling.type.empty());
  EXPECT_TRUE(model_config_to_hf_json(small_llama())["rope_scaling"].is_null());
}

TEST(ModelConfig, MalformedConfigFileNamesFileAndLine) {
  const std::string dir = test::temp_dir("config_malformed");
  std::ofstream(dir + "/config.json")
      << "{\n  \"model_type\": \"llama\",\n  \"vocab_size\": 12,,\n}\n";
  std::string m = test::error_of([&] { load_model_config(dir); });
  EXPECT_NE(m.find(dir + "/config.json:3:"), std::string::npos) << m;
  EXPECT_NE(m.find("invalid JSON"), std::string::npos) << m;

  std::ofstream(dir + "/config.json") << R"({"model_type": "llama", "num_hidden_layers": 1.5})";
  m = test::error_of([&] { load_model_config(dir); });
  EXPECT_NE(m.find(dir + "/config.json: key 'num_hidden_layers' has the wrong type"),
            std::string::npos)
      << m;

  m = test::error_of([&] { load_model_config(dir + "/nope"); });
  EXPECT_NE(m.find(dir + "/nope does not exist"), std::string::npos) << m;
}

// The sizes `tiller bench --help` states for the GPU-sized shapes (cli/bench_cmd.cpp), and the
// grouped-query attention they share.
TEST(ModelConfig, GpuSizedBuiltinShapesHaveTheParameterCountsTheHelpStates) {
  const ModelConfig small = builtin_shape("llama-500m"), large = builtin_shape("llama-1b");
  EXPECT_EQ(std::llround(small.parameter_count() / 1e6), 513);
  EXPECT_EQ(std::llround(large.parameter_count() / 1e7), 104);  // 1.04B
  EXPECT_EQ(large.num_attention_heads / large.num_key_value_heads, 4);
  EXPECT_EQ(large.resolved_head_dim(), 64);
  EXPECT_EQ(small.resolved_head_dim(), 64);
}

TEST(ModelConfig, UnknownBuiltinShapeIsAnError) {
  EXPECT_NE(test::error_of([] { builtin_shape("gpt-5"); }).find("unknown model shape 'gpt-5'"),
            std::string::npos);
}
