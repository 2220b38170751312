// llama2.c checkpoints: export/import are inverse (stories260K and an untied model), the v1 format
// imports like the legacy one, its tokenizer.bin reads as the SentencePiece model it came from, and
// broken or hostile files give one clear error each.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "common/io/llama2c.h"
#include "common/io/llama2c_tokenizer.h"
#include "common/rollout/generator.h"
#include "common/tokenizer/tokenizer.h"
#include "common/torch_compat.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

const char* const kModel = "models/stories260K/stories260K.bin";
const char* const kTokenizer = "models/stories260K/tok512.model";
const char* const kMetaTokenizer = "models/llama2-tokenizer/tokenizer.model";

struct Header {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

Header header_of(const std::string& bytes) {
  Header h{};
  std::memcpy(&h, bytes.data(), sizeof(h));
  return h;
}

// A tiny random Llama; every tensor (norms included) holds distinct values.
Transformer random_model(bool tied, uint64_t seed) {
  ModelConfig c = test::llama_config(40, 32, 48, 2, 4, 2, 24);
  c.tie_word_embeddings = tied;
  Transformer model(c);
  torch::NoGradGuard no_grad;
  auto gen = compat::make_cpu_generator(seed);
  for (auto& p : model->parameters()) p.copy_(torch::randn(p.sizes(), gen, torch::kFloat));
  model->eval();
  return model;
}

void expect_same_model(TransformerImpl& a, TransformerImpl& b) {
  EXPECT_EQ(model_config_to_hf_json(a.config), model_config_to_hf_json(b.config));
  test::expect_same_weights(a, b);
}

// Byte ranges of a legacy file's sections, in file order.
struct Section {
  std::string name;
  size_t begin, bytes;
};

std::vector<Section> legacy_sections(const Header& h) {
  const size_t D = h.dim, H = h.hidden_dim, L = h.n_layers, V = std::abs(h.vocab_size),
               KV = static_cast<size_t>(h.n_kv_heads) * h.dim / h.n_heads, S = h.seq_len,
               HD = h.dim / h.n_heads;
  std::vector<std::pair<std::string, size_t>> floats = {
      {"emb", V * D},     {"att_norm", L * D}, {"wq", L * D * D},   {"wk", L * KV * D},
      {"wv", L * KV * D}, {"wo", L * D * D},   {"ffn_norm", L * D}, {"w1", L * H * D},
      {"w2", L * D * H},  {"w3", L * H * D},   {"final", D},        {"freq_cis", S * HD}};
  if (h.vocab_size < 0) floats.emplace_back("classifier", V * D);
  std::vector<Section> out;
  size_t pos = sizeof(Header);
  for (const auto& [name, n] : floats) {
    out.push_back({name, pos, n * 4});
    pos += n * 4;
  }
  return out;
}

// Rewrites a legacy file in llama2.c's export.py version1_export layout: magic, version 1, the 7
// ints (vocab positive), the shared-classifier byte, zeros to 256 bytes; then all attention
// norms, all ffn norms, the final norm, the embedding, wq, wk, wv, wo, w1, w2, w3, and the
// classifier when it is not shared.
std::string legacy_to_v1(const std::string& legacy) {
  Header h = header_of(legacy);
  const bool shared = h.vocab_size > 0;
  std::map<std::string, std::string> part;
  for (const auto& s : legacy_sections(h)) part[s.name] = legacy.substr(s.begin, s.bytes);
  h.vocab_size = std::abs(h.vocab_size);
  std::string out;
  const uint32_t magic = 0x616b3432;
  const int32_t version = 1;
  out.append(reinterpret_cast<const char*>(&magic), 4);
  out.append(reinterpret_cast<const char*>(&version), 4);
  out.append(reinterpret_cast<const char*>(&h), sizeof(h));
  out.push_back(shared ? 1 : 0);
  out.resize(256, '\0');
  for (const char* name :
       {"att_norm", "ffn_norm", "final", "emb", "wq", "wk", "wv", "wo", "w1", "w2", "w3"})
    out += part.at(name);
  if (!shared) out += part.at("classifier");
  return out;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string import_error(const std::string& path) {
  try {
    import_llama2c(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Round trips

TEST(Llama2c, Stories260KExportReimportIsIdentical) {
  TILLER_REQUIRE_SHARED(model_path, kModel);
  TILLER_REQUIRE_SHARED(tok_path, kTokenizer);
  const std::string original = read_file(model_path);
  auto model = import_llama2c(model_path);
  const Header h = header_of(original);
  EXPECT_EQ(model->config.hidden_size, h.dim);
  EXPECT_EQ(model->config.num_key_value_heads, h.n_kv_heads);
  EXPECT_EQ(model->config.vocab_size, h.vocab_size);
  EXPECT_TRUE(model->config.tie_word_embeddings);
  // The built-in shape used by benchmarks is this model's.
  EXPECT_EQ(model_config_to_hf_json(builtin_shape("stories260k")),
            model_config_to_hf_json(model->config));
  EXPECT_EQ(model->config.parameter_count(), [&] {
    int64_t n = 0;
    for (auto& p : model->parameters()) n += p.numel();
    return n;
  }());

  const std::string path = test::temp_dir("l2c_stories") + "/exported.bin";
  export_llama2c(*model, path);
  const std::string exported = read_file(path);
  ASSERT_EQ(exported.size(), original.size());
  // Every weight byte is the original's (the RoPE tables are recomputed, and no reader uses them).
  for (const auto& s : legacy_sections(h)) {
    if (s.name == "freq_cis") continue;
    EXPECT_TRUE(exported.compare(s.begin, s.bytes, original, s.begin, s.bytes) == 0) << s.name;
  }
  EXPECT_EQ(exported.compare(0, sizeof(Header), original, 0, sizeof(Header)), 0);

  auto reimported = import_llama2c(path);
  expect_same_model(*model, *reimported);
  Tokenizer tok(tok_path);
  SamplingOptions o;
  o.temperature = 0;
  o.max_new_tokens = 60;
  const auto prompt = tok.encode("Once upon a time", true);
  auto a = generate(*model, {prompt}, o);
  auto b = generate(*reimported, {prompt}, o);
  EXPECT_EQ(tok.decode(a.response(0)), tok.decode(b.response(0)));
  EXPECT_EQ(a.response(0).size(), 60u);
}

TEST(Llama2c, UntiedModelRoundTrips) {
  auto model = random_model(/*tied=*/false, 1);
  const std::string path = test::temp_dir("l2c_untied") + "/m.bin";
  export_llama2c(*model, path);
  const std::string bytes = read_file(path);
  const Header h = header_of(bytes);
  EXPECT_EQ(h.vocab_size, -40);  // a negative vocab_size announces the classifier
  EXPECT_EQ(bytes.size(), legacy_sections(h).back().begin + legacy_sections(h).back().bytes);
  auto reimported = import_llama2c(path);
  EXPECT_FALSE(reimported->config.tie_word_embeddings);
  expect_same_model(*model, *reimported);
  // The same model, tied, is smaller by one [V, D] classifier.
  auto tied = random_model(/*tied=*/true, 1);
  export_llama2c(*tied, path);
  EXPECT_EQ(read_file(path).size(), bytes.size() - 40 * 32 * 4);
  expect_same_model(*tied, *import_llama2c(path));
}

TEST(Llama2c, Version1ImportsLikeLegacy) {
  TILLER_REQUIRE_SHARED(model_path, kModel);
  const std::string dir = test::temp_dir("l2c_v1");
  const std::string v1 = legacy_to_v1(read_file(model_path));
  ASSERT_EQ(v1.size() % 4, 0u);
  write_bytes(dir + "/v1.bin", v1);
  auto legacy_model = import_llama2c(model_path);
  auto v1_model = import_llama2c(dir + "/v1.bin");
  expect_same_model(*legacy_model, *v1_model);

  // Untied: the classifier comes last, after w3.
  auto untied = random_model(/*tied=*/false, 2);
  export_llama2c(*untied, dir + "/untied.bin");
  write_bytes(dir + "/untied_v1.bin", legacy_to_v1(read_file(dir + "/untied.bin")));
  expect_same_model(*untied, *import_llama2c(dir + "/untied_v1.bin"));
}

// ---------------------------------------------------------------------------------------------
// Broken and hostile files

TEST(Llama2c, WrongFileSizeIsAnError) {
  const std::string dir = test::temp_dir("l2c_size");
  auto model = random_model(true, 3);
  export_llama2c(*model, dir + "/ok.bin");
  const std::string bytes = read_file(dir + "/ok.bin");
  const std::string n = std::to_string(bytes.size());

  write_bytes(dir + "/short.bin", bytes.substr(0, bytes.size() - 4));
  std::string message = import_error(dir + "/short.bin");
  EXPECT_NE(message.find(dir + "/short.bin: file is " + std::to_string(bytes.size() - 4) +
                         " bytes but a llama2.c legacy checkpoint"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("is " + n + " bytes"), std::string::npos) << message;

  write_bytes(dir + "/long.bin", bytes + std::string(4, '\0'));
  message = import_error(dir + "/long.bin");
  EXPECT_NE(message.find(dir + "/long.bin: file is " + std::to_string(bytes.size() + 4)),
            std::string::npos)
      << message;

  // Truncated in the header itself, and empty.
  write_bytes(dir + "/header.bin", bytes.substr(0, 10));
  message = import_error(dir + "/header.bin");
  EXPECT_NE(message.find(dir + "/header.bin: file ends inside the header"), std::string::npos)
      << message;
  write_bytes(dir + "/empty.bin", "");
  EXPECT_NE(import_error(dir + "/empty.bin").find("file ends inside the header"),
            std::string::npos);

  // A v1 file cut short.
  const std::string v1 = legacy_to_v1(bytes);
  write_bytes(dir + "/v1_short.bin", v1.substr(0, v1.size() - 8));
  message = import_error(dir + "/v1_short.bin");
  EXPECT_NE(message.find("llama2.c v1 checkpoint"), std::string::npos) << message;

  message = import_error(dir + "/absent.bin");
  EXPECT_NE(message.find("cannot open " + dir + "/absent.bin"), std::string::npos) << message;
}

TEST(Llama2c, HostileHeaderIsAnError) {
  const std::string dir = test::temp_dir("l2c_header");
  auto model = random_model(true, 4);
  export_llama2c(*model, dir + "/ok.bin");
  const std::string bytes = read_file(dir + "/ok.bin");
  auto with_header = [&](const std::string& name, const std::function<void(Header&)>& edit) {
    Header h = header_of(bytes);
    edit(h);
    std::string out = bytes;
    std::memcpy(out.data(), &h, sizeof(h));
    write_bytes(dir + "/" + name, out);
    return import_error(dir + "/" + name);
  };
  std::string message = with_header("dim0.bin", [](Header& h) { h.dim = 0; });
  EXPECT_NE(message.find(dir + "/dim0.bin: header field dim is 0"), std::string::npos) << message;
  message = with_header("layers.bin", [](Header& h) { h.n_layers = -3; });
  EXPECT_NE(message.find("header field n_layers is -3"), std::string::npos) << message;
  message = with_header("seq.bin", [](Header& h) { h.seq_len = -1; });
  EXPECT_NE(message.find("header field seq_len is -1"), std::string::npos) << message;
  message = with_header("vocab.bin", [](Header& h) { h.vocab_size = 0; });
  EXPECT_NE(message.find("header field vocab_size is 0"), std::string::npos) << message;
  message = with_header("vocab_min.bin", [](Header& h) { h.vocab_size = INT32_MIN; });
  EXPECT_NE(message.find("header field vocab_size is -2147483648"), std::string::npos) << message;
  message = with_header("heads.bin", [](Header& h) { h.n_kv_heads = 3; });
  EXPECT_NE(message.find("not divisible by num_key_value_heads 3"), std::string::npos) << message;
  // Huge dimensions in a small file: refused before anything is allocated.
  message = with_header("huge.bin", [](Header& h) {
    h.dim = 65536;
    h.n_layers = 1024;
    h.hidden_dim = 262144;
  });
  EXPECT_NE(message.find(dir + "/huge.bin"), std::string::npos) << message;
  EXPECT_NE(message.find("bytes but a llama2.c legacy checkpoint"), std::string::npos) << message;
  message = with_header("absurd.bin", [](Header& h) { h.dim = 1 << 30; });
  EXPECT_NE(message.find("implausibly large"), std::string::npos) << message;

  std::string v1 = legacy_to_v1(bytes);
  const int32_t version = 2;
  std::memcpy(v1.data() + 4, &version, 4);
  write_bytes(dir + "/v2.bin", v1);
  message = import_error(dir + "/v2.bin");
  EXPECT_NE(message.find("format version 2 is not supported"), std::string::npos) << message;
}

TEST(Llama2c, ExportRefusesModelsTheFormatCannotHold) {
  ModelConfig c = random_model(true, 5)->config;
  c.num_labels = 1;
  Transformer scorer(c);
  EXPECT_NE(
      test::error_of([&] { export_llama2c(*scorer, "/nonexistent/x.bin"); }).find("score head"),
      std::string::npos);
  c.num_labels = 0;
  c.attention_bias = true;
  Transformer biased(c);
  EXPECT_NE(test::error_of([&] { export_llama2c(*biased, "/nonexistent/x.bin"); }).find("biases"),
            std::string::npos);
  c.attention_bias = false;
  c.rope_scaling.type = "linear";
  c.rope_scaling.factor = 2.0;
  Transformer stretched(c);
  EXPECT_NE(test::error_of([&] {
              export_llama2c(*stretched, "/nonexistent/x.bin");
            }).find("no rope_scaling"),
            std::string::npos);
}

TEST(Llama2c, TokenizerOfAnotherVocabularyIsRejected) {
  TILLER_REQUIRE_SHARED(model_path, kModel);
  TILLER_REQUIRE_SHARED(meta_path, kMetaTokenizer);
  TILLER_REQUIRE_SHARED(tok_path, kTokenizer);
  auto model = import_llama2c(model_path);
  EXPECT_EQ(test::error_of([&] { Tokenizer(tok_path).check_matches(model->config, model_path); }),
            "");
  const std::string message =
      test::error_of([&] { Tokenizer(meta_path).check_matches(model->config, model_path); });
  EXPECT_NE(message.find("vocabulary mismatch"), std::string::npos) << message;
  EXPECT_NE(message.find(meta_path + " has 32000 pieces"), std::string::npos) << message;
  EXPECT_NE(message.find(model_path + " has vocab_size 512"), std::string::npos) << message;

  // The CLI refuses to convert with it: one error line, non-zero exit, no output left behind.
  const std::string out = test::temp_dir("l2c_vocab") + "/hf";
  std::string log;
  const int rc =
      test::run_command("'" + test::tiller_binary() + "' convert --model '" + model_path +
                            "' --tokenizer '" + meta_path + "' --out " + out,
                        &log);
  EXPECT_NE(rc, 0);
  EXPECT_NE(log.find("tiller: error: vocabulary mismatch"), std::string::npos) << log;
  EXPECT_FALSE(path_exists(out));
}

// llama2.c's tokenizer.bin (tok512.bin) read back as a SentencePiece model is the vocabulary of
// tok512.model: every piece, score and kind, the special ids, and the same ids for story text.
// Whitespace is kept as run.c keeps it (tok512.model removes extra spaces: the one difference).
// Broken files are one line each.
TEST(Llama2c, TokenizerBinIsTheVocabularyOfTheSentencePieceModel) {
  TILLER_REQUIRE_SHARED(spm, kTokenizer);
  TILLER_REQUIRE_SHARED(bin, "models/stories260K/tok512.bin");
  TILLER_REQUIRE_SHARED(corpus, "corpus/tinystories_head.txt");
  const std::string dir = test::temp_dir("llama2c_tokenizer");
  write_file_atomic(dir + "/tok.model", sentencepiece_model_from_llama2c_tokenizer(bin, 512));
  const Tokenizer converted(dir + "/tok.model"), reference(spm);
  ASSERT_EQ(converted.vocab_size(), reference.vocab_size());
  for (int64_t id = 0; id < reference.vocab_size(); ++id) {
    const auto a = converted.sentencepiece_entry(id), b = reference.sentencepiece_entry(id);
    EXPECT_EQ(a.piece, b.piece) << id;
    EXPECT_EQ(a.score, b.score) << id;
    EXPECT_EQ(a.kind, b.kind) << id;
  }
  EXPECT_EQ(converted.bos_id(), reference.bos_id());
  EXPECT_EQ(converted.eos_id(), reference.eos_id());
  EXPECT_EQ(converted.unk_id(), reference.unk_id());
  EXPECT_EQ(converted.pad_id(), reference.pad_id());
  std::ifstream lines(corpus);
  std::string line;
  int compared = 0;
  while (std::getline(lines, line) && compared < 300) {
    if (line.empty() || line.find("  ") != std::string::npos || line.front() == ' ' ||
        line.back() == ' ')
      continue;  // where the two normalisations differ (below)
    ASSERT_EQ(converted.encode(line, true), reference.encode(line, true)) << line;
    ++compared;
  }
  EXPECT_EQ(compared, 300);
  const std::string spaced = "Tom  ran.   Then \xc3\xa9t\xc3\xa9 \xf0\x9f\x98\x80";  // été 😀
  EXPECT_EQ(converted.decode(converted.encode(spaced)), spaced);
  EXPECT_NE(reference.decode(reference.encode(spaced)), spaced);

  const std::string bytes = read_file(bin);
  write_file_atomic(dir + "/cut.bin", bytes.substr(0, bytes.size() - 3));
  write_file_atomic(dir + "/zero.bin", std::string(8, '\0'));
  for (const auto& [file, expected] :
       {std::pair{dir + "/cut.bin", "cut.bin: the file ends inside entry 511"},
        std::pair{dir + "/zero.bin", "zero.bin: max_token_length 0 is not"},
        std::pair{std::string(bin), "512 entries, but the checkpoint's vocabulary has 32000"}}) {
    const std::string path = file;  // a structured binding cannot be captured in C++17
    const std::string error = test::error_of(
        [&] { sentencepiece_model_from_llama2c_tokenizer(path, path == bin ? 32000 : 512); });
    EXPECT_NE(error.find(expected), std::string::npos) << error;
  }
}

// `tiller convert --tokenizer tokenizer.bin`: the output ships the converted tokenizer.model and
// generates the golden text; a broken tokenizer.bin is one line and no output directory.
TEST(Llama2c, ConvertWithTokenizerBinGeneratesTheGoldenText) {
  TILLER_REQUIRE_SHARED(model, kModel);
  TILLER_REQUIRE_SHARED(bin, "models/stories260K/tok512.bin");
  TILLER_REQUIRE_SHARED(greedy, "models/stories260K/greedy_once_upon_a_time.txt");
  const std::string dir = test::temp_dir("llama2c_convert_bin");
  std::string out;
  ASSERT_EQ(test::run_command(test::tiller_binary() + " convert --model " + model +
                                  " --tokenizer " + bin + " --out " + dir + "/m 2>&1",
                              &out),
            0)
      << out;
  EXPECT_TRUE(std::filesystem::exists(dir + "/m/tokenizer.model"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/m.tokenizer-model.tmp"));
  ASSERT_EQ(test::run_command(test::tiller_binary() + " generate --model " + dir +
                                  "/m --prompt 'Once upon a time' --max-new-tokens 116"
                                  " --temperature 0",
                              &out),
            0);
  EXPECT_EQ(out, read_file(greedy));

  const std::string bytes = read_file(bin);
  write_file_atomic(dir + "/cut.bin", bytes.substr(0, bytes.size() - 3));
  EXPECT_NE(test::run_command(test::tiller_binary() + " convert --model " + model +
                                  " --tokenizer " + dir + "/cut.bin --out " + dir + "/bad 2>&1",
                              &out),
            0);
  EXPECT_NE(out.find("cut.bin: the file ends inside"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/bad"));
}
