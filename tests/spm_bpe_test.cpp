// SpmBpe (common/tokenizer/spm_bpe.h): Tiller's own SentencePiece BPE encoder gives exactly the
// SentencePiece library's ids, on Llama 2's and stories260K's models, variants of them with other
// normalizer settings or no byte fallback, TinyStories, hostile strings and random strings from a
// fixed seed; models it cannot reproduce stay on the library.
#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "common/tokenizer/tokenizer.h"
#include "common/util/files.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

const char* kLlama2 = "models/llama2-tokenizer/tokenizer.model";
const char* kTok512 = "models/stories260K/tok512.model";
const char* kCorpus = "corpus/tinystories_head.txt";

std::string printable(const std::string& s) {
  std::ostringstream out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7F && c != '\\')
      out << c;
    else {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "\\x%02x", c);
      out << hex;
    }
  }
  return out.str();
}

// Encodes every text both ways; returns how many differ, failing with the first few.
size_t count_differences(const Tokenizer& tok, const std::vector<std::string>& texts) {
  size_t differences = 0;
  for (const std::string& text : texts) {
    const auto fast = tok.encode(text, true, true);
    const auto library = tok.encode_with_library(text, true, true);
    if (fast == library) continue;
    if (++differences <= 5) {
      std::ostringstream ids;
      for (int64_t id : fast) ids << id << ' ';
      ids << "| library:";
      for (int64_t id : library) ids << ' ' << id;
      ADD_FAILURE() << tok.path() << ": \"" << printable(text) << "\" -> " << ids.str();
    }
  }
  return differences;
}

std::vector<std::string> corpus_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

const std::vector<std::string>& hostile_strings() {
  static const std::vector<std::string> t = [] {
    std::vector<std::string> v = {
        "",
        " ",
        "  ",
        "     ",
        " leading",
        "   leading three",
        "trailing ",
        "trailing three   ",
        "multiple    spaces   between     words",
        "\t",
        "\n",
        "\ttab\tseparated\t\tvalues\t",
        "line one\nline two\n\nline four\n",
        "\r\n windows \r\n",
        "中文分词测试：你好，世界。",
        "日本語のテキスト、ひらがなとカタカナ。",
        "한국어 텍스트",
        "emoji 😀🎉 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 skin 👍🏽 "
        "🏳️‍🌈",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈 \xf0\x9f\xa7\xaa",
        "e\xcc\x81 a\xcc\x8a\xcc\x81 combining marks: n\xcc\x83o",
        "control \x01\x02\x03 bell \x07 del \x7f esc \x1b",
        std::string("nul \0 inside", 12),
        "\xe2\x96\x81",
        "\xe2\x96\x81\xe2\x96\x81 two meta spaces",
        "a\xe2\x96\x81"
        "b \xe2\x96\x81 c\xe2\x96\x81",
        " \xe2\x96\x81 ",
        "trailing meta \xe2\x96\x81",
        "trailing meta then space \xe2\x96\x81 ",
        "<s> </s> <unk> <0x41> <pad>",
        "malformed \xff\xfe bytes \xc3 cut \xe2\x96 cut \xed\xa0\x80 surrogate",
        "\xf4\x90\x80\x80 beyond U+10FFFF, \xc0\x80 overlong, \xef\xbf\xbd replacement",
        "\x80\x80\x80",
        "\xc2\xa0nbsp\xe3\x80\x80ideographic space\xe2\x80\x8bzwsp",
        "1234567890 3.14159 -42 1e-5 2024-01-01 0x7fff",
        "!@#$%^&*()_+-=[]{}|;':\",./<>?`~ ... --- !!!",
        "int main() { return a[i] + b->c * 2; }  // comment",
    };
    v.push_back(std::string(1000, 'a'));
    v.push_back(std::string(1000, 'x') + " tail");
    std::string mixed;
    for (int i = 0; i < 200; ++i) mixed += "ab\xe4\xb8\xad";
    v.push_back(mixed);
    std::string repeated;
    for (int i = 0; i < 500; ++i) repeated += "the dog ";
    v.push_back(repeated);
    std::string repeated_no_space;
    for (int i = 0; i < 300; ++i) repeated_no_space += "ha";
    v.push_back(repeated_no_space);
    std::string spaces(300, ' ');
    v.push_back(spaces + "x" + spaces);
    return v;
  }();
  return t;
}

// Strings from a fixed seed: fragments of the kinds above and raw bytes, mixed.
std::vector<std::string> random_strings(size_t count, uint32_t seed) {
  static const std::vector<std::string> fragments = {"a",
                                                     "the",
                                                     " ",
                                                     "  ",
                                                     "\t",
                                                     "\n",
                                                     "dog",
                                                     " cat",
                                                     "The",
                                                     "Lily",
                                                     ",",
                                                     ".",
                                                     "!",
                                                     "'s",
                                                     "123",
                                                     "9",
                                                     "日本",
                                                     "語",
                                                     "中",
                                                     "😀",
                                                     "👍🏽",
                                                     "e\xcc\x81",
                                                     "\x01",
                                                     "\x7f",
                                                     "\xe2\x96\x81",
                                                     "\xe2\x96\x81\xe2\x96\x81",
                                                     "<s>",
                                                     "<unk>",
                                                     "<0x41>",
                                                     "\xff",
                                                     "\xc3",
                                                     "\xed\xa0\x80",
                                                     "\xef\xbf\xbd",
                                                     "\xf0\x9f",
                                                     "ing",
                                                     "ed",
                                                     " and",
                                                     "ly",
                                                     "\xc2\xa0",
                                                     "x",
                                                     "zz",
                                                     "qu",
                                                     "ab",
                                                     "🇫🇷",
                                                     "\r",
                                                     "   "};
  std::mt19937 rng(seed);
  std::vector<std::string> out;
  for (size_t i = 0; i < count; ++i) {
    std::string s;
    const int parts = std::uniform_int_distribution<int>(0, 24)(rng);
    for (int p = 0; p < parts; ++p) {
      if (rng() % 8 == 0) {
        s.push_back(static_cast<char>(rng() % 256));
      } else {
        s += fragments[rng() % fragments.size()];
      }
    }
    out.push_back(s);
  }
  return out;
}

std::string write_model(const std::string& name, const std::string& bytes) {
  static const std::string dir = test::temp_dir("spm_bpe");  // temp_dir empties it each call
  const std::string path = dir + "/" + name + ".model";
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

uint64_t read_varint(const std::string& s, size_t* i) {
  uint64_t value = 0;
  for (int shift = 0; *i < s.size(); shift += 7) {
    const unsigned char c = static_cast<unsigned char>(s[(*i)++]);
    value |= static_cast<uint64_t>(c & 0x7F) << shift;
    if (c < 0x80) break;
  }
  return value;
}

// The model without its BYTE pieces (ModelProto.pieces whose type is 6), and byte_fallback off.
std::string without_byte_pieces(const std::string& model) {
  std::string out;
  for (size_t i = 0; i < model.size();) {
    const size_t start = i;
    const uint64_t key = read_varint(model, &i);
    size_t end = i;
    bool byte_piece = false;
    if ((key & 7) == 2) {
      const uint64_t n = read_varint(model, &i);
      end = i + n;
      if (key >> 3 == 1) {
        const std::string piece = model.substr(i, n);
        // type is field 3, a varint: bytes 0x18 0x06 at the end of a piece message as written.
        byte_piece = piece.size() >= 2 && piece.compare(piece.size() - 2, 2, "\x18\x06") == 0;
      }
    } else if ((key & 7) == 0) {
      read_varint(model, &i);
      end = i;
    } else {
      end = i + ((key & 7) == 5 ? 4 : 8);
    }
    if (!byte_piece) out += model.substr(start, end - start);
    i = end;
  }
  return out + std::string("\x12\x03\x98\x02\x00", 5);  // trainer_spec { byte_fallback: false }
}

// Appended fields merge into the proto (the last value wins).
const std::string kUnigram("\x12\x02\x18\x01", 4);                // trainer_spec { model_type: 1 }
const std::string kRemoveExtraOn("\x1a\x02\x20\x01", 4);          // normalizer_spec { ...: true }
const std::string kRemoveExtraOff("\x1a\x02\x20\x00", 4);         // remove_extra_whitespaces false
const std::string kNoDummyPrefix("\x1a\x02\x18\x00", 4);          // add_dummy_prefix false
const std::string kUserDefined("\x0a\x06\x0a\x02zz\x18\x04", 8);  // pieces { "zz" USER_DEFINED }

// The real models and variants of them, all on the fast path.
std::vector<std::string> fast_models() {
  const std::string llama = test::shared_file(kLlama2), tok512 = test::shared_file(kTok512);
  std::vector<std::string> paths;
  if (!llama.empty()) {
    paths.push_back(llama);
    paths.push_back(write_model("llama2_remove_extra", read_file(llama) + kRemoveExtraOn));
  }
  if (!tok512.empty()) {
    paths.push_back(tok512);
    const std::string bytes = read_file(tok512);
    paths.push_back(write_model("tok512_plain", bytes + kRemoveExtraOff + kNoDummyPrefix));
    paths.push_back(write_model("tok512_no_bytes", without_byte_pieces(bytes)));
  }
  return paths;
}

}  // namespace

TEST(SpmBpe, RealModelsTakeTheFastPath) {
  TILLER_REQUIRE_SHARED(llama, kLlama2);
  TILLER_REQUIRE_SHARED(tok512, kTok512);
  for (const std::string& path : fast_models()) {
    Tokenizer tok(path);
    EXPECT_EQ(tok.encoder_name(), "tiller-bpe") << path << ": " << tok.library_reason();
  }
}

TEST(SpmBpe, ExactOnEveryTinyStoriesLine) {
  TILLER_REQUIRE_SHARED(corpus, kCorpus);
  TILLER_REQUIRE_SHARED(llama, kLlama2);
  std::vector<std::string> texts = corpus_lines(corpus);
  ASSERT_GT(texts.size(), 1000u);
  // Documents as prepare sees them: many lines with their newlines.
  const std::string whole = read_file(corpus);
  for (size_t at = 0; at < whole.size(); at += 4096) texts.push_back(whole.substr(at, 4096));
  for (const std::string& path : fast_models()) {
    Tokenizer tok(path);
    ASSERT_EQ(tok.encoder_name(), "tiller-bpe") << tok.library_reason();
    EXPECT_EQ(count_differences(tok, texts), 0u) << path << " over " << texts.size() << " texts";
  }
}

TEST(SpmBpe, ExactOnHostileStrings) {
  TILLER_REQUIRE_SHARED(llama, kLlama2);
  for (const std::string& path : fast_models()) {
    Tokenizer tok(path);
    // Twice: the second pass reads the word cache.
    for (int pass = 0; pass < 2; ++pass)
      EXPECT_EQ(count_differences(tok, hostile_strings()), 0u) << path;
  }
}

TEST(SpmBpe, ExactOnRandomStrings) {
  TILLER_REQUIRE_SHARED(llama, kLlama2);
  const auto texts = random_strings(4000, 20240601);
  for (const std::string& path : fast_models()) {
    Tokenizer tok(path);
    EXPECT_EQ(count_differences(tok, texts), 0u) << path << " over " << texts.size() << " texts";
  }
}

TEST(SpmBpe, ThreadsEncodeAlike) {
  TILLER_REQUIRE_SHARED(corpus, kCorpus);
  TILLER_REQUIRE_SHARED(llama, kLlama2);
  const Tokenizer tok(llama);
  const auto lines = corpus_lines(corpus);
  std::vector<std::vector<int64_t>> expected;
  for (const auto& line : lines) expected.push_back(tok.encode_with_library(line));
  size_t mismatches[2] = {0, 0};
  auto work = [&](int t) {
    for (size_t i = t; i < lines.size(); i += 1 + t)  // overlapping subsets, other orders
      if (tok.encode(lines[i]) != expected[i]) ++mismatches[t];
  };
  std::thread a(work, 0), b(work, 1);
  a.join();
  b.join();
  EXPECT_EQ(mismatches[0] + mismatches[1], 0u);
}

TEST(SpmBpe, OtherModelsStayOnTheLibrary) {
  TILLER_REQUIRE_SHARED(tok512, kTok512);
  const std::string bytes = read_file(tok512);
  const std::vector<std::pair<std::string, std::string>> models = {
      {"unigram", bytes + kUnigram}, {"user_defined", bytes + kUserDefined}};
  for (const auto& [name, model] : models) {
    Tokenizer tok(write_model(name, model));
    EXPECT_EQ(tok.encoder_name(), "sentencepiece") << name;
    EXPECT_FALSE(tok.library_reason().empty()) << name;
    const auto ids = tok.encode("Once upon a time, zz and Lily played.");
    EXPECT_FALSE(ids.empty()) << name;
    EXPECT_EQ(ids, tok.encode_with_library("Once upon a time, zz and Lily played.")) << name;
  }
}
