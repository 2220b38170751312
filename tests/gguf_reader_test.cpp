// The GGUF reader (export/gguf_reader.h): what export_gguf writes reads back (metadata, every
// tensor's values per type), and truncated or forged files are one tiller::Error naming where,
// at every truncation point of a valid file and for each forged field.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>

#include "common/io/hf_dir.h"
#include "common/util/files.h"
#include "export/gguf.h"
#include "export/gguf_reader.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

// A GGUF file built field by field (ggml's docs/gguf.md), so that each field can be forged.
struct GgufBuilder {
  std::string out;
  template <typename T>
  GgufBuilder& put(T v) {
    out.append(reinterpret_cast<const char*>(&v), sizeof(T));
    return *this;
  }
  GgufBuilder& str(const std::string& s) {
    put<uint64_t>(s.size());
    out += s;
    return *this;
  }
  GgufBuilder& header(uint64_t tensors, uint64_t keys, uint32_t version = 3) {
    out += "GGUF";
    return put<uint32_t>(version).put<uint64_t>(tensors).put<uint64_t>(keys);
  }
  GgufBuilder& u32_key(const std::string& key, uint32_t v) {
    return str(key).put<uint32_t>(4).put(v);
  }
  // One tensor's info: 1-D of `n` values of `type` at `offset`.
  GgufBuilder& tensor(const std::string& name, uint64_t n, uint32_t type, uint64_t offset) {
    return str(name).put<uint32_t>(1).put<uint64_t>(n).put<uint32_t>(type).put<uint64_t>(offset);
  }
  GgufBuilder& align() {
    out.append((32 - out.size() % 32) % 32, '\0');
    return *this;
  }
};

// A valid file: one key, an f32 tensor of 4 values and a q8_0 block.
std::string valid_file() {
  GgufBuilder b;
  b.header(2, 1)
      .u32_key("general.alignment", 32)
      .tensor("w", 4, 0, 0)
      .tensor("q", 32, 8, 32)
      .align();
  const float w[4] = {1, -2, 3, 0.5f};
  b.out.append(reinterpret_cast<const char*>(w), sizeof(w));
  b.out.append(16, '\0');
  const c10::Half scale(0.5f);
  b.out.append(reinterpret_cast<const char*>(&scale), 2);
  for (int i = 0; i < 32; ++i) b.out.push_back(static_cast<char>(i - 16));
  return b.out;
}

std::string error_parsing(const std::string& bytes) {
  return test::error_of([&] { parse_gguf(bytes, "f.gguf"); });
}

}  // namespace

TEST(GgufReader, AValidFileReadsBackItsValues) {
  const std::string bytes = valid_file();
  const GgufFile f = parse_gguf(bytes, "f.gguf");
  EXPECT_EQ(f.version, 3u);
  ASSERT_EQ(f.tensors.size(), 2u);
  EXPECT_EQ(*f.find("general.alignment"), 32);
  EXPECT_TRUE(torch::equal(read_gguf_tensor(f, bytes, f.tensors[0]),
                           torch::tensor({1.0f, -2.0f, 3.0f, 0.5f})));
  const auto q = read_gguf_tensor(f, bytes, f.tensors[1]);
  EXPECT_TRUE(torch::equal(q, (torch::arange(32, torch::kFloat) - 16) * 0.5));
}

TEST(GgufReader, EveryTruncationIsOneErrorNamingWhere) {
  const std::string bytes = valid_file();
  for (size_t n = 0; n < bytes.size(); ++n) {
    const std::string message = error_parsing(bytes.substr(0, n));
    EXPECT_NE(message, "") << "cut at " << n;
    EXPECT_NE(message.find("f.gguf: "), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

TEST(GgufReader, ForgedFieldsAreRefusedByName) {
  auto forged = [](const std::function<void(GgufBuilder&)>& build) {
    GgufBuilder b;
    build(b);
    return error_parsing(b.out);
  };
  EXPECT_NE(error_parsing("GGML\3\0\0\0").find("not a GGUF file"), std::string::npos);
  EXPECT_NE(forged([](GgufBuilder& b) { b.header(0, 0, 4); }).find("GGUF version 4"),
            std::string::npos);
  EXPECT_NE(forged([](GgufBuilder& b) { b.header(~uint64_t{0}, 0); }).find("the tensor count is"),
            std::string::npos);
  EXPECT_NE(forged([](GgufBuilder& b) {
              b.header(0, 1).put<uint64_t>(~uint64_t{0} / 2);
            }).find("needs 9223372036854775807 bytes"),
            std::string::npos);
  EXPECT_NE(forged([](GgufBuilder& b) {
              b.header(0, 1).str("b").put<uint32_t>(7).put<uint8_t>(2);
            }).find("b: a bool of value 2"),
            std::string::npos);
  EXPECT_NE(forged([](GgufBuilder& b) {
              b.header(0, 1).str("x").put<uint32_t>(13);
            }).find("x: unknown value type 13"),
            std::string::npos);
  EXPECT_NE(forged([](GgufBuilder& b) {
              b.header(0, 2).u32_key("k", 1).u32_key("k", 2);
            }).find("metadata key 'k' appears twice"),
            std::string::npos);
  EXPECT_NE(forged([](GgufBuilder& b) {
              b.header(0, 1).str("a").put<uint32_t>(9).put<uint32_t>(4).put<uint64_t>(1u << 20);
            }).find("a's 1048576 elements needs 4194304 bytes"),
            std::string::npos);
  EXPECT_NE(
      forged([](GgufBuilder& b) {  // an array of arrays of arrays
        b.header(0, 1).str("n").put<uint32_t>(9).put<uint32_t>(9).put<uint64_t>(1);
        b.put<uint32_t>(9).put<uint64_t>(1).put<uint32_t>(4).put<uint64_t>(1).put<uint32_t>(1);
      })
          .find("nested deeper than two levels"),
      std::string::npos);
  EXPECT_NE(forged([](GgufBuilder& b) {
              b.header(0, 1).u32_key("general.alignment", 48);
            }).find("general.alignment must be a power of two"),
            std::string::npos);
  EXPECT_NE(forged([](GgufBuilder& b) {
              b.header(1, 0).str("t").put<uint32_t>(5);
            }).find("tensor t has 5 dimensions"),
            std::string::npos);
  EXPECT_NE(forged([](GgufBuilder& b) {
              b.header(1, 0).str("t").put<uint32_t>(1).put<uint64_t>(0);
            }).find("tensor t has a dimension of 0"),
            std::string::npos);
  EXPECT_NE(forged([](GgufBuilder& b) {
              b.header(1, 0).tensor("t", 4, 12, 0);
            }).find("ggml type 12 is not one this reader knows"),
            std::string::npos);
  EXPECT_NE(forged([](GgufBuilder& b) {
              b.header(1, 0).tensor("t", 33, 8, 0);
            }).find("33 values are not whole blocks of 32"),
            std::string::npos);
  EXPECT_NE(forged([](GgufBuilder& b) {
              b.header(1, 0).tensor("t", 4, 0, 8);
            }).find("offset 8 is not aligned to 32"),
            std::string::npos);
  EXPECT_NE(forged([](GgufBuilder& b) {
              b.header(2, 0).tensor("t", 4, 0, 0).tensor("t", 4, 0, 32);
            }).find("tensor 't' appears twice"),
            std::string::npos);
  EXPECT_NE(forged([](GgufBuilder& b) {
              b.header(1, 0).tensor("t", 1024, 0, 0).align();
              b.out.append(64, '\0');
            }).find("lies beyond the file's end"),
            std::string::npos);
}

// What `tiller export` writes, read back: the metadata, and each type's values against the
// weights they came from (f32 exactly, f16/bf16 as torch rounds them, q8_0 and q4_0 within half
// of their block's step).
TEST(GgufReader, ExportsReadBackWithTheirWeights) {
  const std::string model = test::shared_file("models/stories260K/stories260K.bin");
  const std::string tok = test::shared_file("models/stories260K/tok512.model");
  if (model.empty() || tok.empty()) GTEST_SKIP() << "needs shared data: models/stories260K";
  const std::string dir = test::temp_dir("gguf_reader");
  std::string output;
  ASSERT_EQ(test::run_command(test::tiller_binary() + " convert --model '" + model +
                                  "' --tokenizer '" + tok + "' --out " + dir + "/hf",
                              &output),
            0)
      << output;
  const auto weights = read_hf_weights(dir + "/hf");
  const auto& up = weights.at("model.layers.1.mlp.up_proj.weight");  // [172, 64]: rows of 64
  for (const std::string type : {"f32", "f16", "bf16", "q8_0", "q4_0"}) {
    SCOPED_TRACE(type);
    const std::string path = dir + "/m-" + type + ".gguf";
    export_gguf(dir + "/hf", type, path);
    const GgufFile f = read_gguf(path);
    const std::string bytes = read_file(path);
    EXPECT_EQ(*f.find("general.architecture"), "llama");
    EXPECT_EQ(*f.find("llama.block_count"), 5);
    EXPECT_EQ(f.find("tokenizer.ggml.tokens")->size(), 512u);
    const GgufTensorInfo* info = nullptr;
    for (const auto& t : f.tensors)
      if (t.name == "blk.1.ffn_up.weight") info = &t;
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(info->dims, (std::vector<int64_t>{64, 172}));
    const auto got = read_gguf_tensor(f, bytes, *info);
    ASSERT_EQ(got.sizes(), up.sizes());
    if (type == "f32" || type == "f16" || type == "bf16") {
      const auto dtype = type == "f32"   ? torch::kFloat
                         : type == "f16" ? torch::kHalf
                                         : torch::kBFloat16;
      EXPECT_TRUE(torch::equal(got, up.to(dtype).to(torch::kFloat)));
    }
    if (type == "q8_0" || type == "q4_0") {
      // Each block of 32, plus the fp16 scale's rounding: q8_0 within half its step amax/127;
      // q4_0 within amax/8 (its step is amax/8, and a value of the other sign beyond 15/16 of
      // amax is clamped to code 15, 7/8 of amax).
      const auto blocks = up.reshape({-1, 32}), got_blocks = got.reshape({-1, 32});
      const auto amax = std::get<0>(blocks.abs().max(1, true));
      const auto bound = type == "q8_0" ? amax / 254.0 : amax / 8.0;
      EXPECT_TRUE(((got_blocks - blocks).abs() <= bound + amax * 2e-3 + 1e-7).all().item<bool>());
    }
  }
  // A file cut short, through the command: one line, a non-zero exit.
  write_file_atomic(dir + "/cut.gguf", read_file(dir + "/m-q4_0.gguf").substr(0, 5000));
  EXPECT_NE(test::run_command(test::tiller_binary() + " inspect " + dir + "/cut.gguf", &output), 0);
  EXPECT_NE(output.find("cut.gguf: at byte"), std::string::npos) << output;
  EXPECT_EQ(
      test::run_command(test::tiller_binary() + " inspect --json " + dir + "/m-q8_0.gguf", &output),
      0)
      << output;
  EXPECT_EQ(nlohmann::json::parse(output)["metadata"]["general.architecture"], "llama");
}
