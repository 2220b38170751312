// GGUF export (export/gguf.h) read back by an independent reader written from the specification
// (tests/oracle/gguf_reader.py, numpy): every metadata key, tensor name, shape, type and offset;
// every tensor's bytes against the reference encoding of the HF weights it came from; and the
// f32 export of stories260K, run greedily by the reader from the file alone, prints the golden
// text of llama2.c's run.c. Bad exports are one line with nothing written.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <set>

#include "common/io/hf_dir.h"
#include "common/util/files.h"
#include "export/gguf.h"
#include "tests/byte_level_symbols.h"
#include "tests/test_util.h"
#include "tiller_build_paths.h"

using namespace tiller;

namespace {

int run_tiller(const std::string& args, std::string* out) {
  return test::run_command(test::tiller_binary() + " " + args + " 2>&1", out);
}

nlohmann::json read_back(const std::string& python, const std::string& gguf, const std::string& hf,
                         const std::string& extra = "") {
  std::string out;
  const int code = test::run_command(
      test::shell_command({python, std::string(TILLER_SOURCE_DIR) + "/tests/oracle/gguf_reader.py",
                           gguf, "--hf", hf}) +
          extra + " 2>&1",
      &out);
  EXPECT_EQ(code, 0) << out;
  return code == 0 ? nlohmann::json::parse(out) : nlohmann::json::object();
}

// Llama 3's split regex as its tokenizer.json writes it, with `digits` for its numbers (Qwen2's
// takes them one at a time).
nlohmann::json split_then_bytes(const std::string& digits) {
  const std::string regex = R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|)" + digits +
                            R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  return {{"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}},
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
}

const nlohmann::json kGpt2Split = {{"type", "ByteLevel"},
                                   {"add_prefix_space", false},
                                   {"trim_offsets", true},
                                   {"use_regex", true}};

// A byte-level BPE tokenizer.json (bytes 0..255 by their GPT-2 symbols, five merges 256..260, no
// token 261, added tokens 262..265) with its tokenizer_config.json, in `dir`.
std::string write_bpe_tokenizer(const std::string& dir, const nlohmann::json& pre_tokenizer,
                                bool merges_as_pairs, bool template_bos,
                                const nlohmann::json& tokenizer_config) {
  using test::byte_level_symbols;
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level_symbols(std::string(1, static_cast<char>(b)))] = b;
  nlohmann::json merges = nlohmann::json::array();
  int next = 256;
  for (const auto& [left, right] : std::vector<std::pair<std::string, std::string>>{
           {" ", "t"}, {"h", "e"}, {" t", "he"}, {"1", "2"}, {"12", "3"}}) {
    const std::string l = byte_level_symbols(left), r = byte_level_symbols(right);
    merges.push_back(merges_as_pairs ? nlohmann::json::array({l, r}) : nlohmann::json(l + " " + r));
    vocab[l + r] = next++;
  }
  const auto added = [](int id, const std::string& content, bool special) {
    return nlohmann::json{{"id", id},          {"content", content}, {"single_word", false},
                          {"lstrip", false},   {"rstrip", false},    {"normalized", false},
                          {"special", special}};
  };
  nlohmann::json json = {{"version", "1.0"},
                         {"added_tokens",
                          {added(262, "<|begin_of_text|>", true), added(263, "<|eot_id|>", true),
                           added(264, "<tool>", false), added(265, "<|look|>", false)}},
                         {"normalizer", nullptr},
                         {"pre_tokenizer", pre_tokenizer},
                         {"post_processor", nullptr},
                         {"decoder", {{"type", "ByteLevel"}}},
                         {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
  if (template_bos)
    json["post_processor"] = nlohmann::json::parse(R"({"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}]})");
  make_directories(dir);
  write_file_atomic(dir + "/tokenizer.json", json.dump());
  write_file_atomic(dir + "/tokenizer_config.json", tokenizer_config.dump());
  return dir + "/tokenizer.json";
}

}  // namespace

TEST(Gguf, EveryTypeReadsBackByAnIndependentReaderAndF32GivesTheGoldenText) {
  TILLER_REQUIRE_SHARED(model, "models/stories260K/stories260K.bin");
  TILLER_REQUIRE_SHARED(tok, "models/stories260K/tok512.model");
  TILLER_REQUIRE_SHARED(golden, "models/stories260K/greedy_once_upon_a_time.txt");
  const std::string python = test::python_importing("numpy");
  if (python.empty()) GTEST_SKIP() << "skipped: no Python with numpy (Debian's python3-numpy)";
  const std::string dir = test::temp_dir("gguf");
  std::string out;
  ASSERT_EQ(
      run_tiller("convert --model '" + model + "' --tokenizer '" + tok + "' --out " + dir + "/hf",
                 &out),
      0)
      << out;

  // stories260K: 5 layers, width 64, 8 heads over 4 key/value heads, MLP 172, vocabulary 512,
  // tied head. llama.cpp's tensor names, each layer's in its order.
  std::vector<std::string> names = {"token_embd.weight"};
  for (int l = 0; l < 5; ++l)
    for (const char* part : {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
                             "ffn_gate", "ffn_up", "ffn_down"})
      names.push_back("blk." + std::to_string(l) + "." + part + ".weight");
  names.push_back("output_norm.weight");
  const std::map<std::string, std::vector<int64_t>> ne = {
      {"token_embd", {64, 512}}, {"attn_norm", {64}},     {"attn_q", {64, 64}},
      {"attn_k", {64, 32}},      {"attn_v", {64, 32}},    {"attn_output", {64, 64}},
      {"ffn_norm", {64}},        {"ffn_gate", {64, 172}}, {"ffn_up", {64, 172}},
      {"ffn_down", {172, 64}},   {"output_norm", {64}}};
  const std::set<std::string> keys = {"general.architecture",
                                      "general.name",
                                      "general.alignment",
                                      "general.file_type",
                                      "llama.vocab_size",
                                      "llama.context_length",
                                      "llama.embedding_length",
                                      "llama.block_count",
                                      "llama.feed_forward_length",
                                      "llama.rope.dimension_count",
                                      "llama.attention.head_count",
                                      "llama.attention.head_count_kv",
                                      "llama.attention.layer_norm_rms_epsilon",
                                      "llama.rope.freq_base",
                                      "tokenizer.ggml.model",
                                      "tokenizer.ggml.pre",
                                      "tokenizer.ggml.tokens",
                                      "tokenizer.ggml.scores",
                                      "tokenizer.ggml.token_type",
                                      "tokenizer.ggml.bos_token_id",
                                      "tokenizer.ggml.eos_token_id",
                                      "tokenizer.ggml.unknown_token_id",
                                      "tokenizer.ggml.padding_token_id",
                                      "tokenizer.ggml.add_bos_token",
                                      "tokenizer.ggml.add_eos_token"};
  struct Case {
    const char* type;
    int ggml, file_type;
    double max_error;  // relative to each tensor's largest magnitude
  };
  for (const Case& c : {Case{"f32", 0, 0, 0.0}, Case{"f16", 1, 1, 1e-3}, Case{"bf16", 30, 32, 8e-3},
                        Case{"q8_0", 8, 7, 1e-2}, Case{"q4_0", 2, 2, 0.15}}) {
    SCOPED_TRACE(c.type);
    const std::string gguf = dir + "/stories260K." + c.type + ".gguf";
    ASSERT_EQ(run_tiller(std::string("export --format gguf --type ") + c.type + " --model " + dir +
                             "/hf --out " + gguf,
                         &out),
              0)
        << out;
    const bool blocks = c.ggml == 8 || c.ggml == 2;
    // The MLP's down projection has rows of 172, not whole blocks of 32: f16, and said.
    EXPECT_EQ(out.find("5 matrices in f16 instead") != std::string::npos, blocks) << out;
    const auto r = read_back(python, gguf, dir + "/hf",
                             std::string(c.ggml == 0 ? " --prompt 'Once upon a time'"
                                                       " --total-tokens 121"
                                                     : ""));
    ASSERT_FALSE(r.empty());
    EXPECT_EQ(r["version"], 3);
    std::set<std::string> got_keys;
    for (const auto& item : r["metadata"].items()) got_keys.insert(item.key());
    if (blocks) got_keys.erase("general.quantization_version");
    EXPECT_EQ(got_keys, keys);
    const auto& m = r["metadata"];
    EXPECT_EQ(m["general.architecture"], "llama");
    EXPECT_EQ(m["general.file_type"], c.file_type);
    EXPECT_EQ(m["general.alignment"], 32);
    EXPECT_EQ(m["llama.block_count"], 5);
    EXPECT_EQ(m["llama.embedding_length"], 64);
    EXPECT_EQ(m["llama.feed_forward_length"], 172);
    EXPECT_EQ(m["llama.attention.head_count"], 8);
    EXPECT_EQ(m["llama.attention.head_count_kv"], 4);
    EXPECT_EQ(m["llama.rope.dimension_count"], 8);
    EXPECT_EQ(m["llama.context_length"], 512);
    EXPECT_FLOAT_EQ(m["llama.attention.layer_norm_rms_epsilon"].get<float>(), 1e-5f);
    EXPECT_EQ(m["llama.rope.freq_base"], 10000.0);
    EXPECT_EQ(m["tokenizer.ggml.model"], "llama");
    EXPECT_EQ(m["tokenizer.ggml.tokens"]["array"], 512);
    EXPECT_EQ(m["tokenizer.ggml.tokens"]["first"], nlohmann::json({"<unk>", "<s>", "</s>"}));
    EXPECT_EQ(m["tokenizer.ggml.token_type"]["first"], nlohmann::json({2, 3, 3}));
    EXPECT_EQ(m["tokenizer.ggml.bos_token_id"], 1);
    EXPECT_EQ(m["tokenizer.ggml.eos_token_id"], 2);
    EXPECT_EQ(r["metadata_types"]["tokenizer.ggml.scores"], 9);       // an array (of float32)
    EXPECT_EQ(r["metadata_types"]["llama.attention.head_count"], 4);  // uint32

    const auto& tensors = r["tensors"];
    ASSERT_EQ(tensors.size(), names.size());
    int64_t previous_offset = -1;
    for (size_t i = 0; i < names.size(); ++i) {
      const auto& t = tensors[i];
      EXPECT_EQ(t["name"], names[i]);
      const std::string part =
          names[i].rfind("blk.", 0) == 0 ? names[i].substr(names[i].find('.', 4) + 1) : names[i];
      const std::string short_name = part.substr(0, part.find(".weight"));
      EXPECT_EQ(t["ne"], nlohmann::json(ne.at(short_name))) << names[i];
      const bool norm = short_name.find("norm") != std::string::npos;
      const int expected_type = norm ? 0 : blocks && short_name == "ffn_down" ? 1 : c.ggml;
      EXPECT_EQ(t["type"], expected_type) << names[i];
      EXPECT_EQ(t["offset"].get<int64_t>() % 32, 0) << names[i];
      EXPECT_GT(t["offset"].get<int64_t>(), previous_offset) << names[i];
      previous_offset = t["offset"].get<int64_t>();
    }
    for (const auto& [type, error] : r["relative_error"].items())
      EXPECT_LE(error.get<double>(), type == "F32"   ? 0.0
                                     : type == "F16" ? 1e-3
                                                     : c.max_error)
          << type;
    if (c.ggml == 0) {
      EXPECT_EQ(r["greedy"].get<std::string>() + "\n", read_file(golden));
    }
  }
}

// An untied head (output.weight) and grouped-query attention with other head counts: the reader
// finds every HF weight in the file, q and k permuted by their own head counts, in f32 and q8_0.
TEST(Gguf, AnUntiedModelWithGroupedQueryAttentionReadsBack) {
  TILLER_REQUIRE_SHARED(tok, "models/stories260K/tok512.model");
  const std::string python = test::python_importing("numpy");
  if (python.empty()) GTEST_SKIP() << "skipped: no Python with numpy (Debian's python3-numpy)";
  const std::string dir = test::temp_dir("gguf_untied");
  ModelConfig config = test::llama_config(512, 64, 96, 2, 8, 2, 128);
  config.tie_word_embeddings = false;
  Transformer model(config);
  model->init_weights(5);
  SaveOptions options;
  options.tokenizer_path = tok;
  save_hf_model(*model, dir + "/hf", options);
  std::string out;
  for (const char* type : {"f32", "q8_0"}) {
    const std::string gguf = dir + "/" + type + ".gguf";
    ASSERT_EQ(
        run_tiller(std::string("export --type ") + type + " --model " + dir + "/hf --out " + gguf,
                   &out),
        0)
        << out;
    const auto r = read_back(python, gguf, dir + "/hf");
    ASSERT_FALSE(r.empty());
    EXPECT_EQ(r["tensors"].size(), 1u + 2u * 9u + 2u) << type;
    EXPECT_EQ(r["tensors"].back()["name"], "output.weight");
    EXPECT_EQ(r["tensors"].back()["ne"], nlohmann::json({64, 512}));
    EXPECT_EQ(r["metadata"]["llama.attention.head_count_kv"], 2);
    EXPECT_EQ(r["tensors"][3]["ne"], nlohmann::json({64, 16}));  // blk.0.attn_k: 2 heads of 8
  }
}

// llama.cpp itself (llama-cpp-python, which builds llama.cpp from source: not installed by
// scripts/setup.sh) loads the files and generates stories260K's golden text from the f32, f16 and
// bf16 ones. Runs where TILLER_LLAMA_CPP_PYTHON names a Python that imports llama_cpp.
TEST(Gguf, LlamaCppGeneratesTheGoldenText) {
  TILLER_REQUIRE_SHARED(model, "models/stories260K/stories260K.bin");
  TILLER_REQUIRE_SHARED(tok, "models/stories260K/tok512.model");
  TILLER_REQUIRE_SHARED(golden, "models/stories260K/greedy_once_upon_a_time.txt");
  const char* python = std::getenv("TILLER_LLAMA_CPP_PYTHON");
  std::string out;
  if (python == nullptr ||
      test::run_command(std::string(python) + " -c 'import llama_cpp' 2>&1", &out) != 0)
    GTEST_SKIP() << "skipped: set TILLER_LLAMA_CPP_PYTHON to a Python with llama-cpp-python "
                    "(python3 -m venv V && V/bin/pip install llama-cpp-python)";
  const std::string dir = test::temp_dir("gguf_llama_cpp");
  ASSERT_EQ(
      run_tiller("convert --model '" + model + "' --tokenizer '" + tok + "' --out " + dir + "/hf",
                 &out),
      0)
      << out;
  for (const char* type : {"f32", "f16", "bf16"}) {
    const std::string gguf = dir + "/" + type + ".gguf";
    ASSERT_EQ(
        run_tiller(std::string("export --type ") + type + " --model " + dir + "/hf --out " + gguf,
                   &out),
        0)
        << out;
    ASSERT_EQ(
        test::run_command(
            test::shell_command(
                {python, std::string(TILLER_SOURCE_DIR) + "/tests/oracle/llama_cpp_generate.py",
                 gguf, "--prompt", "Once upon a time", "--new-tokens", "116"}) +
                " 2>&1",
            &out),
        0)
        << out;
    const auto r = nlohmann::json::parse(out.substr(out.rfind('{')));
    EXPECT_EQ(r["prompt_ids"], nlohmann::json({1, 403, 407, 261, 378})) << type;
    EXPECT_EQ(r["text"].get<std::string>() + "\n", read_file(golden)) << type;
  }
}

TEST(Gguf, WhatItCannotCarryIsOneLineAndNothingIsWritten) {
  const std::string dir = test::temp_dir("gguf_bad");
  std::string out;
  // A reward model (a score head), from a tiny random model.
  ModelConfig reward = test::llama_config(40, 16, 32, 1, 2, 2, 16);
  reward.num_labels = 1;
  Transformer rm(reward);
  rm->init_weights(3);
  save_hf_model(*rm, dir + "/rm");
  EXPECT_EQ(run_tiller("export --model " + dir + "/rm --out " + dir + "/rm.gguf", &out), 1) << out;
  EXPECT_NE(out.find("a model with a score head (a reward model) is not a causal LM"),
            std::string::npos)
      << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/rm.gguf"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/rm.gguf.tmp"));
  // An unknown type, and a directory that is not a model.
  EXPECT_NE(run_tiller("export --type q5_k --model " + dir + "/rm --out " + dir + "/x.gguf", &out),
            0);
  EXPECT_NE(out.find("q5_k"), std::string::npos) << out;
  EXPECT_EQ(run_tiller("export --model " + dir + "/none --out " + dir + "/x.gguf", &out), 1) << out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/x.gguf"));
}

// Byte-level BPE (Llama 3, GPT-2, Qwen2, SmolLM tokenizer.json files) as llama.cpp's "gpt2"
// vocabulary: the reader checks every token, type and merge, the special ids, add_bos_token, the
// chat template and the pre-tokenizer's name against the directory's own files, and every tensor;
// and, from the file alone with llama.cpp's split regexes for its `pre`, encodes texts to Tiller's
// ids.
TEST(Gguf, ByteLevelBpeVocabulariesReadBackAsLlamaCppsGpt2Vocabulary) {
  const std::string python = test::python_importing("numpy");
  if (python.empty()) GTEST_SKIP() << "skipped: no Python with numpy (Debian's python3-numpy)";
  const std::string python_regex = test::python_importing("regex");
  if (python_regex.empty())
    std::cerr << "the encoding from the file alone is skipped: no Python with regex (PyPI's, or "
                 "Debian's python3-regex)\n";
  const std::string dir = test::temp_dir("gguf_bpe");
  // Split differently by each pre-tokenizer (digits: llama-bpe takes "412" then "34", gpt-2 the
  // whole number, qwen2 and smollm one digit at a time), with added tokens inside.
  const nlohmann::json texts = {"41234 the then", "it's 9 the.the  \n\n x",
                                "caf\u00e9 \u2705 <|eot_id|>the<tool>"};
  write_file_atomic(dir + "/texts.json", texts.dump());
  const std::string chat = "{% for m in messages %}{{ m['content'] }}<|eot_id|>{% endfor %}";
  struct Case {
    std::string name;
    nlohmann::json pre_tokenizer;
    std::string pre;  // llama.cpp's name for it
    bool merges_as_pairs, template_bos;
    nlohmann::json tokenizer_config;
    int64_t bos;  // tokenizer.ggml.bos_token_id, -1 for none
    bool add_bos;
  };
  const std::vector<Case> cases = {
      // Llama 3: BOS from the post-processor's template, a chat template.
      {"llama3",
       split_then_bytes(R"(\p{N}{1,3})"),
       "llama-bpe",
       false,
       true,
       {{"bos_token", "<|begin_of_text|>"}, {"eos_token", "<|eot_id|>"}, {"chat_template", chat}},
       262,
       true},
      // GPT-2: a bos_token transformers does not add; merges as [a, b] pairs.
      {"gpt2",
       kGpt2Split,
       "gpt-2",
       true,
       false,
       {{"bos_token", "<|begin_of_text|>"}, {"eos_token", {{"content", "<|eot_id|>"}}}},
       262,
       false},
      // Qwen2: digits one at a time; no bos_token, so config.json's bos_token_id (as gguf-py's
      // SpecialVocab), not added; pad named.
      {"qwen2",
       split_then_bytes(R"(\p{N})"),
       "qwen2",
       false,
       false,
       {{"bos_token", nullptr}, {"eos_token", "<|eot_id|>"}, {"pad_token", "<tool>"}},
       262,
       false},
      // SmolLM: Digits then GPT-2's split; BOS by add_bos_token.
      {"smollm",
       {{"type", "Sequence"},
        {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, kGpt2Split}}},
       "smollm",
       false,
       false,
       {{"add_bos_token", true}, {"bos_token", "<|begin_of_text|>"}, {"eos_token", "<|eot_id|>"}},
       262,
       true},
      // Named chat templates (tokenizer_config.json's list form): "default" is the template,
      // "tool use" is written as tokenizer.chat_template.tool_use.
      {"templates",
       kGpt2Split,
       "gpt-2",
       false,
       false,
       {{"eos_token", "<|eot_id|>"},
        {"chat_template",
         {{{"name", "default"}, {"template", chat}},
          {{"name", "tool use"}, {"template", "{{ tools }}"}}}}},
       262,
       false}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    SaveOptions options;
    options.tokenizer_path =
        write_bpe_tokenizer(dir + "/" + c.name + "/tok", c.pre_tokenizer, c.merges_as_pairs,
                            c.template_bos, c.tokenizer_config);
    // 272 embeddings for 265 tokens: ids 261 and 266..271 have none.
    ModelConfig config = test::llama_config(272, 64, 96, 2, 4, 2, 128);
    config.bos_token_id = 262;
    config.eos_token_id = 263;
    config.tie_word_embeddings = false;
    const std::string hf = dir + "/" + c.name + "/hf";
    save_hf_model(*test::sharp_random_model(config, 7), hf, options);
    for (const char* type : {"f32", "q8_0"}) {
      SCOPED_TRACE(type);
      const std::string gguf = dir + "/" + c.name + "/" + type + ".gguf";
      std::string out;
      ASSERT_EQ(
          run_tiller(std::string("export --type ") + type + " --model " + hf + " --out " + gguf,
                     &out),
          0)
          << out;
      const auto r = read_back(python, gguf, hf);
      ASSERT_FALSE(r.empty());
      const auto& m = r["metadata"];
      EXPECT_EQ(m["tokenizer.ggml.model"], "gpt2");
      EXPECT_EQ(m["tokenizer.ggml.pre"], c.pre);
      EXPECT_FALSE(m.contains("tokenizer.ggml.scores"));
      // Bytes 0, 1, 2 are GPT-2's U+0100, U+0101, U+0102.
      EXPECT_EQ(m["tokenizer.ggml.tokens"]["first"],
                nlohmann::json({"\u0100", "\u0101", "\u0102"}));
      EXPECT_EQ(m["tokenizer.ggml.merges"]["first"],
                nlohmann::json({"\u0120 t", "h e", "\u0120t he"}));
      const auto& v = r["gpt2_vocabulary"];  // the reader's own reading, compared in full
      EXPECT_EQ(v["tokens"], 272);
      EXPECT_EQ(v["merges"], 5);
      EXPECT_EQ(v["pre"], c.pre);
      // 261 normal (256 bytes, 5 merges); control: the two special tokens and "<|look|>", which
      // llama.cpp's converter takes as special by its look; "<tool>" user-defined; 7 unused.
      EXPECT_EQ(v["types"], nlohmann::json({{"1", 261}, {"3", 3}, {"4", 1}, {"5", 7}}));
      EXPECT_EQ(m.value("tokenizer.ggml.bos_token_id", nlohmann::json(-1)), c.bos);
      EXPECT_EQ(m["tokenizer.ggml.eos_token_id"], 263);
      EXPECT_EQ(m["tokenizer.ggml.add_bos_token"], c.add_bos);
      EXPECT_EQ(m.contains("tokenizer.ggml.padding_token_id"), c.name == "qwen2");
      EXPECT_EQ(m.contains("tokenizer.chat_template"), c.name == "llama3" || c.name == "templates");
      if (m.contains("tokenizer.chat_template")) {
        EXPECT_EQ(m["tokenizer.chat_template"], chat);
      }
      EXPECT_EQ(m.contains("tokenizer.chat_template.tool_use"), c.name == "templates");
      if (c.name == "templates") {
        EXPECT_EQ(m["tokenizer.chat_template.tool_use"], "{{ tools }}");
        EXPECT_EQ(m["tokenizer.chat_templates"]["first"], nlohmann::json({"tool_use"}));
      }
      // The reader encodes from the file alone as llama.cpp would (its split regexes for `pre`)
      // and gets Tiller's ids, which tests/tokenizer_reference checks against transformers.
      if (!python_regex.empty() && std::string(type) == "f32") {
        ASSERT_EQ(test::run_command(test::tiller_binary() + " tokenize --model " + hf +
                                        " --texts " + dir + "/texts.json",
                                    &out),
                  0)
            << out;
        nlohmann::json tiller_ids = nlohmann::json::array();
        for (const auto& encoded : nlohmann::json::parse(out)) tiller_ids.push_back(encoded["ids"]);
        ASSERT_EQ(test::run_command(test::shell_command({python_regex,
                                                         std::string(TILLER_SOURCE_DIR) +
                                                             "/tests/oracle/gguf_reader.py",
                                                         gguf, "--encode", dir + "/texts.json"}) +
                                        " 2>&1",
                                    &out),
                  0)
            << out;
        EXPECT_EQ(nlohmann::json::parse(out), tiller_ids);
        // "41234 the then": " the" is one token, " then" two; the merges 1 2 and 12 3 make
        // "412" "34" 4 tokens under llama-bpe, "41234" 3 under gpt-2, and 5 digits 5 otherwise.
        const nlohmann::json first = tiller_ids[0];
        EXPECT_EQ(first.size(), c.pre == "llama-bpe" ? 7u : c.pre == "gpt-2" ? 6u : 8u) << first;
      }
      // The tensors as for SentencePiece models: every one found in the HF weights by the reader.
      ASSERT_EQ(r["tensors"].size(), 1u + 2u * 9u + 2u);
      for (const auto& t : {r["tensors"].front(), r["tensors"].back()}) {
        EXPECT_EQ(t["ne"], nlohmann::json({64, 272}));
        EXPECT_EQ(t["type"], std::string(type) == "f32" ? 0 : 8);
      }
      EXPECT_EQ(r["tensors"].front()["name"], "token_embd.weight");
      EXPECT_EQ(r["tensors"].back()["name"], "output.weight");
    }
  }
}

// A byte-level BPE pre-tokenizer llama.cpp has no name for is refused in one line that quotes it,
// and nothing is written; a Qwen2 model (attention biases) is refused for its biases, not for its
// tokenizer.
TEST(Gguf, AByteLevelPreTokenizerLlamaCppCannotNameIsRefusedInOneLine) {
  const std::string dir = test::temp_dir("gguf_bpe_bad");
  const nlohmann::json unnamed = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Split"}, {"pattern", {{"Regex", R"(\s+|\w+)"}}}, {"behavior", "Isolated"}},
        {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  const nlohmann::json tokenizer_config = {{"eos_token", "<|eot_id|>"}};
  ModelConfig config = test::llama_config(272, 32, 64, 1, 2, 2, 64);
  config.eos_token_id = 263;
  SaveOptions options;
  options.tokenizer_path =
      write_bpe_tokenizer(dir + "/tok", unnamed, false, false, tokenizer_config);
  save_hf_model(*test::sharp_random_model(config, 1), dir + "/hf", options);
  std::string out;
  EXPECT_EQ(run_tiller("export --model " + dir + "/hf --out " + dir + "/x.gguf", &out), 1) << out;
  EXPECT_NE(
      out.find(dir +
               "/hf/tokenizer.json: its pre-tokenizer Split(Regex \"\\\\s+|\\\\w+\") + "
               "ByteLevel(add_prefix_space=false, use_regex=false) is not one llama.cpp names"),
      std::string::npos)
      << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/x.gguf"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/x.gguf.tmp"));

  ModelConfig qwen2 = config;
  qwen2.attention_bias = true;
  qwen2.model_type = "qwen2";
  options.tokenizer_path = write_bpe_tokenizer(dir + "/qwen_tok", split_then_bytes(R"(\p{N})"),
                                               false, false, tokenizer_config);
  save_hf_model(*test::sharp_random_model(qwen2, 1), dir + "/qwen2", options);
  EXPECT_EQ(run_tiller("export --model " + dir + "/qwen2 --out " + dir + "/q.gguf", &out), 1)
      << out;
  EXPECT_NE(out.find("attention biases (qwen2) are not exported to GGUF yet"), std::string::npos)
      << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/q.gguf"));
}

TEST(Gguf, QuantisedBlocksFollowGgmlsReferenceArithmetic) {
  // q8_0: scale amax / 127 in fp16, values rounded; q4_0: scale max / -8 with max the value of
  // largest magnitude (here -4, so the scale is +0.5), values + 8 in nibbles.
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[i] = static_cast<float>(i % 8) * 0.5f - 2.0f;  // -2 .. 1.5
  x[5] = -4.0f;
  const std::string q8 = quantize_q8_0(x.data(), 32);
  ASSERT_EQ(q8.size(), 34u);
  EXPECT_EQ(static_cast<int8_t>(q8[2 + 5]), -127);  // the extreme maps to -127
  EXPECT_EQ(static_cast<int8_t>(q8[2 + 0]), -64);   // -2 / (4 / 127) = -63.5 -> -64 (away from 0)
  const std::string q4 = quantize_q4_0(x.data(), 32);
  ASSERT_EQ(q4.size(), 18u);
  EXPECT_EQ(static_cast<uint8_t>(q4[1]) << 8 | static_cast<uint8_t>(q4[0]), 0x3800);  // fp16 0.5
  // Element 5 is -4 / 0.5 + 8 = 0 in the low nibble of byte 5; element 21 (= 0.5) is 9, high.
  EXPECT_EQ(static_cast<uint8_t>(q4[2 + 5]), 0 | (9 << 4));
  EXPECT_EQ(ggml_bytes(GgmlType::Q4_0, 64), 36);
  EXPECT_EQ(ggml_bytes(GgmlType::BF16, 10), 20);
}
