// Byte-level BPE tokenizer.json (GPT-2's scheme: Llama 3, Qwen2, SmolLM) on small tokenizers
// written here, where the right answer follows from the rules by hand: round trips of any UTF-8,
// merges by rank, the pre-tokenizer's pieces (Oniguruma's reading of `{n,m}+`), added tokens and
// their strip flags, ignore_merges, NFC and NFKC, the special tokens of tokenizer_config.json,
// what is refused, and an SFT stage that starts from an HF directory whose tokenizer is a
// tokenizer.json.
//
// Against transformers' own tokenizers (the Rust `tokenizers` library) and tiktoken on eleven
// real tokenizers that PyPI packages ship: tests/tokenizer_reference/compare.sh, the ctest
// TokenizerReference.RealTokenizers (skipped unless scripts/setup.sh --tokenizer-reference ran).
#include "common/tokenizer/byte_level_bpe.h"

#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>

#include "common/io/hf_dir.h"
#include "common/model/model_config.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "tests/byte_level_symbols.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

std::string byte_symbol(int byte) {
  return test::byte_level_symbols(std::string(1, static_cast<char>(byte)));
}

// "Ġ" for a space and so on: the symbols of a UTF-8 string's bytes.
std::string symbols(const std::string& text) {
  return test::byte_level_symbols(text);
}

struct Spec {
  std::vector<std::pair<std::string, std::string>> merges;  // plain text, in rank order
  std::vector<std::string> extra_tokens;                    // in the vocabulary without a merge
  nlohmann::json added = nlohmann::json::array();
  nlohmann::json pre_tokenizer = {{"type", "ByteLevel"},
                                  {"add_prefix_space", false},
                                  {"trim_offsets", true},
                                  {"use_regex", true}};
  nlohmann::json normalizer = nullptr;
  bool ignore_merges = false;
};

// Byte b has id b; merged and extra tokens follow in order; added tokens take the ids given.
nlohmann::json tokenizer_json(const Spec& spec) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_symbol(b)] = b;
  nlohmann::json merges = nlohmann::json::array();
  int next = 256;
  for (const auto& [left, right] : spec.merges) {
    merges.push_back(symbols(left) + " " + symbols(right));
    if (!vocab.contains(symbols(left + right))) vocab[symbols(left + right)] = next++;
  }
  for (const std::string& token : spec.extra_tokens) vocab[symbols(token)] = next++;
  return {{"version", "1.0"},
          {"added_tokens", spec.added},
          {"normalizer", spec.normalizer},
          {"pre_tokenizer", spec.pre_tokenizer},
          {"post_processor", nullptr},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model",
           {{"type", "BPE"},
            {"ignore_merges", spec.ignore_merges},
            {"vocab", vocab},
            {"merges", merges}}}};
}

std::string write_tokenizer(const std::string& dir, const nlohmann::json& json) {
  make_directories(dir);
  std::ofstream(dir + "/tokenizer.json") << json.dump();
  return dir + "/tokenizer.json";
}

std::string write_tokenizer(const std::string& dir, const Spec& spec) {
  return write_tokenizer(dir, tokenizer_json(spec));
}

int64_t id_of(const ByteLevelBpe& bpe, const std::string& text) {
  const int64_t id = bpe.id_of(symbols(text));
  EXPECT_GE(id, 0) << "no token for '" << text << "'";
  return id;
}

std::vector<int64_t> bytes_of(const std::string& text) {
  return std::vector<int64_t>(reinterpret_cast<const unsigned char*>(text.data()),
                              reinterpret_cast<const unsigned char*>(text.data()) + text.size());
}

nlohmann::json added_token(int64_t id, const std::string& content, bool special,
                           bool strip = false) {
  return {{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", strip},
          {"rstrip", strip}, {"normalized", false}, {"special", special}};
}

}  // namespace

TEST(ByteLevelBpe, AnyUtf8TextRoundTrips) {
  Spec spec;
  spec.merges = {{"t", "h"}, {"th", "e"}, {" ", "the"}, {"\xC3", "\xA9"}};  // é's two bytes
  spec.added = nlohmann::json::array({added_token(300, "<|end|>", true)});
  const std::string path = write_tokenizer(test::temp_dir("bpe_round_trip"), spec);
  const ByteLevelBpe bpe(path);
  const std::vector<std::string> pool = {
      "a",    "Z",      " ",  "  ",  "\n",  "\t", "\r\n", "é",      "ß",      "中",     "文", "👍",
      "🏽", "\u0301", "'s", "123", "the", "!",  "\x0b", "\u00a0", "\u2028", "\u3000", "ǅ"};
  std::mt19937 rng(5);
  for (int i = 0; i < 500; ++i) {
    std::string text;
    const int pieces = static_cast<int>(rng() % 20);
    for (int k = 0; k < pieces; ++k) text += pool[rng() % pool.size()];
    EXPECT_EQ(bpe.decode(bpe.encode(text)), text) << text;
  }
  // Special added tokens are left out of the decoded text, as SentencePiece leaves out EOS.
  EXPECT_EQ(bpe.decode(bpe.encode("the end<|end|>")), "the end");
  EXPECT_EQ(bpe.vocab_size(), 301);
}

TEST(ByteLevelBpe, MergesApplyLowestRankFirstWithinEachWord) {
  const std::string dir = test::temp_dir("bpe_ranks");
  Spec el_first;
  el_first.merges = {{"e", "l"}, {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}};
  const ByteLevelBpe a(write_tokenizer(dir + "/a", el_first));
  // "hel": e+l (rank 0) before h+e (rank 1), and nothing joins h with el.
  EXPECT_EQ(a.encode("hel"), (std::vector<int64_t>{'h', id_of(a, "el")}));
  // "hello": e+l takes the first l; "h", "el", "l", "o" has no further merge.
  EXPECT_EQ(a.encode("hello"), (std::vector<int64_t>{'h', id_of(a, "el"), 'l', 'o'}));

  Spec he_first;
  he_first.merges = {{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {"e", "l"}};
  const ByteLevelBpe b(write_tokenizer(dir + "/b", he_first));
  EXPECT_EQ(b.encode("hel"), (std::vector<int64_t>{id_of(b, "he"), 'l'}));
  EXPECT_EQ(b.encode("hello"), (std::vector<int64_t>{id_of(b, "hello")}));
  // Each occurrence of the best pair merges, left to right: "lll" -> "ll", "l".
  EXPECT_EQ(b.encode("lll"), (std::vector<int64_t>{id_of(b, "ll"), 'l'}));
  // A long word without spaces: "ab" everywhere first, then "ab"+"ab" pairs from the left.
  Spec pairs_of_pairs;
  pairs_of_pairs.merges = {{"a", "b"}, {"ab", "ab"}};
  const ByteLevelBpe c(write_tokenizer(dir + "/c", pairs_of_pairs));
  std::string long_word;
  for (int i = 0; i < 10001; ++i) long_word += "ab";
  std::vector<int64_t> want(5000, id_of(c, "abab"));
  want.push_back(id_of(c, "ab"));
  EXPECT_EQ(c.encode(long_word), want);

  // Merges as [a, b] pairs (newer transformers) read the same.
  auto json = tokenizer_json(he_first);
  for (auto& m : json["model"]["merges"]) {
    const std::string both = m.get<std::string>();
    const size_t space = both.find(' ');
    m = nlohmann::json::array({both.substr(0, space), both.substr(space + 1)});
  }
  const ByteLevelBpe pairs(write_tokenizer(dir + "/pairs", json));
  EXPECT_EQ(pairs.encode("hello hel"), b.encode("hello hel"));
}

TEST(ByteLevelBpe, MergesNeverCrossThePreTokenizersPieces) {
  const std::string dir = test::temp_dir("bpe_pieces");
  Spec gpt2;
  gpt2.merges = {{" ", " "}, {"I", "'"}, {"3", "4"}, {"1", "2"}, {"a", " "}};
  const ByteLevelBpe bpe(write_tokenizer(dir + "/gpt2", gpt2));
  // GPT-2's split: "a", " ", " b" (a space run keeps its last space for the next word), so no
  // "  " token and no "a " token.
  EXPECT_EQ(bpe.encode("a  b"), (std::vector<int64_t>{'a', ' ', ' ', 'b'}));
  EXPECT_EQ(bpe.encode("a   "), (std::vector<int64_t>{'a', id_of(bpe, "  "), ' '}));
  // "I", "'m": the contraction is a piece of its own.
  EXPECT_EQ(bpe.encode("I'm"), (std::vector<int64_t>{'I', '\'', 'm'}));
  // GPT-2 keeps a digit run whole: 3+4 (rank 2) before 1+2 (rank 3).
  EXPECT_EQ(bpe.encode("12345"), (std::vector<int64_t>{id_of(bpe, "12"), id_of(bpe, "34"), '5'}));

  // Llama 3's split: digits in runs of at most three, "123" then "45".
  Spec llama3 = gpt2;
  llama3.pre_tokenizer = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Split"},
         {"pattern",
          {{"Regex",
            R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
         {"behavior", "Isolated"},
         {"invert", false}},
        {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  const ByteLevelBpe l3(write_tokenizer(dir + "/llama3", llama3));
  EXPECT_EQ(l3.encode("12345"), (std::vector<int64_t>{id_of(l3, "12"), '3', '4', '5'}));
  // (?i:'m): "I'M" splits as "I", "'M" here too.
  EXPECT_EQ(l3.encode("I'M"), (std::vector<int64_t>{'I', '\'', 'M'}));

  // Digits (individual_digits) before GPT-2's split: no digit merges at all.
  Spec digits = gpt2;
  digits.pre_tokenizer = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Digits"}, {"individual_digits", true}},
        {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}}}};
  const ByteLevelBpe d(write_tokenizer(dir + "/digits", digits));
  EXPECT_EQ(d.encode("12345"), bytes_of("12345"));

  // A vertical tab is white space (Unicode White_Space, in ICU's \s as in the Rust library's):
  // "\v\vab" splits as "\v", "\v", "ab" (a white-space run leaves its last character to the
  // word after it), so the two tabs do not merge; at the end of the text they do.
  Spec vt;
  vt.merges = {{"\x0b", "\x0b"}};
  const ByteLevelBpe v(write_tokenizer(dir + "/vt", vt));
  EXPECT_EQ(v.encode("\x0b\x0b"
                     "ab"),
            (std::vector<int64_t>{0x0b, 0x0b, 'a', 'b'}));
  EXPECT_EQ(v.encode("!\x0b\x0b"), (std::vector<int64_t>{'!', id_of(v, "\x0b\x0b")}));
}

TEST(ByteLevelBpe, AddedTokensComeFirstWithTheirStripFlags) {
  Spec spec;
  spec.merges = {{"h", "i"}};
  spec.added = nlohmann::json::array(
      {added_token(300, "<|end|>", true), added_token(301, "<|end|>x", true),
       added_token(302, "<sep>", true, /*strip=*/true), added_token(303, "[X]", false)});
  const ByteLevelBpe bpe(write_tokenizer(test::temp_dir("bpe_added"), spec));
  const int64_t hi = id_of(bpe, "hi");
  EXPECT_EQ(bpe.encode("hi<|end|>hi"), (std::vector<int64_t>{hi, 300, hi}));
  // The longest added token wins where two start at the same place.
  EXPECT_EQ(bpe.encode("<|end|>xhi"), (std::vector<int64_t>{301, hi}));
  // Without strip flags the spaces stay with the text; with them they go.
  EXPECT_EQ(bpe.encode("hi <|end|> hi"), (std::vector<int64_t>{hi, ' ', 300, ' ', hi}));
  EXPECT_EQ(bpe.encode("hi  <sep>  hi"), (std::vector<int64_t>{hi, 302, hi}));
  // Not special: decoded as its text.
  EXPECT_EQ(bpe.decode(bpe.encode("a[X]b")), "a[X]b");
  EXPECT_EQ(bpe.decode({hi, 302, hi}), "hihi");
  EXPECT_EQ(bpe.id_of("<sep>"), 302);
  EXPECT_EQ(bpe.piece(302), "<sep>");
  EXPECT_EQ(bpe.piece(' '), "Ġ");
  // Ids without a token (an embedding padded past the vocabulary) decode to nothing.
  EXPECT_EQ(bpe.decode({hi, 999, 299, hi}), "hihi");
  EXPECT_NE(test::error_of([&] { bpe.decode({-1}); }).find("negative id -1"), std::string::npos);
}

TEST(ByteLevelBpe, DecodedTextIsAlwaysUtf8) {
  auto json = tokenizer_json(Spec{});
  json["model"]["vocab"]["\u2581x"] = 400;  // a character outside the byte alphabet
  const ByteLevelBpe bpe(write_tokenizer(test::temp_dir("bpe_utf8"), json));
  // "é" is C3 A9: a response cut after C3, or C3 before another character, shows U+FFFD there,
  // as transformers' decoder does.
  EXPECT_EQ(bpe.decode({0xC3, 0xA9}), "\u00e9");
  EXPECT_EQ(bpe.decode({'a', 0xC3}), "a\ufffd");
  EXPECT_EQ(bpe.decode({0xC3, 'a', 0xA9, 0xA9}), "\ufffda\ufffd\ufffd");
  EXPECT_EQ(bpe.decode({0xF0, 0x9F, 0xA6}), "\ufffd");  // three bytes of a four-byte emoji
  // A token the byte alphabet cannot spell is its own text.
  EXPECT_EQ(bpe.decode({'a', 400}), "a\u2581x");
}

TEST(ByteLevelBpe, IgnoreMergesTakesAWholeWordFromTheVocabulary) {
  const std::string dir = test::temp_dir("bpe_ignore_merges");
  Spec spec;
  spec.extra_tokens = {"abc"};
  const ByteLevelBpe merging(write_tokenizer(dir + "/off", spec));
  EXPECT_EQ(merging.encode("abc"), bytes_of("abc"));
  spec.ignore_merges = true;
  const ByteLevelBpe whole(write_tokenizer(dir + "/on", spec));
  EXPECT_EQ(whole.encode("abc abc"),
            (std::vector<int64_t>{whole.id_of(symbols("abc")), ' ', 'a', 'b', 'c'}));
}

TEST(ByteLevelBpe, NfcNormalizerComposesBeforeSplitting) {
  const std::string dir = test::temp_dir("bpe_nfc");
  Spec spec;
  const std::string composed = "caf\u00e9", decomposed = "cafe\u0301";
  const ByteLevelBpe plain(write_tokenizer(dir + "/plain", spec));
  EXPECT_NE(plain.encode(decomposed), plain.encode(composed));
  spec.normalizer = {{"type", "NFC"}};
  const ByteLevelBpe nfc(write_tokenizer(dir + "/nfc", spec));
  EXPECT_EQ(nfc.encode(decomposed), plain.encode(composed));
}

TEST(ByteLevelBpe, NfkcNormalizerAlsoFoldsCompatibilityForms) {
  // Claude's tokenizer.json has NFKC: the ligature, the fraction, the superscript and the
  // full-width letter become their plain forms, and a decomposed é is composed.
  const std::string dir = test::temp_dir("bpe_nfkc");
  Spec spec;
  const ByteLevelBpe plain(write_tokenizer(dir + "/plain", spec));
  spec.normalizer = {{"type", "NFKC"}};
  const ByteLevelBpe nfkc(write_tokenizer(dir + "/nfkc", spec));
  EXPECT_EQ(nfkc.encode("\ufb01 \u00bd x\u00b2 \uff46 cafe\u0301"),
            plain.encode("fi 1\u20442 x2 f caf\u00e9"));
}

TEST(ByteLevelBpe, AnIntervalBeforePlusRepeatsAsTransformersReadsIt) {
  // Oniguruma, the regex engine of transformers' tokenizers, reads `X{1,3}+` as `(?:X{1,3})+`,
  // where ICU (and tiktoken) take it as possessive: cl100k_base's `\p{N}{1,3}+`, in a
  // tokenizer.json converted from tiktoken's, takes whole digit runs in transformers. The pieces
  // show through ignore_merges (a piece in the vocabulary is one token); the expected pieces
  // are those tokenizers 0.19.1 gives.
  const std::string dir = test::temp_dir("bpe_interval_plus");
  Spec spec;
  spec.extra_tokens = {"12345", "1234", "123", "45", "3333"};
  spec.ignore_merges = true;
  auto split_by = [&](const std::string& name, const std::string& regex) {
    Spec s = spec;
    s.pre_tokenizer = {
        {"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern", {{"Regex", regex}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
    return std::make_unique<ByteLevelBpe>(write_tokenizer(dir + "/" + name, s));
  };
  const auto runs = split_by("runs", R"(\p{N}{1,3}+|\s+|[^\s\p{N}]+)");
  EXPECT_EQ(runs->encode("12345"), (std::vector<int64_t>{id_of(*runs, "12345")}));
  const auto threes = split_by("threes", R"(\p{N}{1,3}|\s+|[^\s\p{N}]+)");
  EXPECT_EQ(threes->encode("12345"),
            (std::vector<int64_t>{id_of(*threes, "123"), id_of(*threes, "45")}));
  // After a class, a group and an escape in braces alike.
  for (const char* regex :
       {R"([0-9]{2}+|\s+|[^\s0-9]+|[0-9])", R"((?:[0-9]){2}+|\s+|[^\s0-9]+|[0-9])"}) {
    const auto pairs = split_by("pairs", regex);
    EXPECT_EQ(pairs->encode("12345"), (std::vector<int64_t>{id_of(*pairs, "1234"), '5'})) << regex;
  }
  const auto escape = split_by("escape", R"(\x{33}{2}+|\s+|[^\s3]+|3)");
  EXPECT_EQ(escape->encode("333334"), (std::vector<int64_t>{id_of(*escape, "3333"), '3', '4'}));
}

TEST(ByteLevelBpe, WhatItCannotTokenizeAlikeIsRefusedByName) {
  const std::string dir = test::temp_dir("bpe_refused");
  auto error_for = [&](const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json json = tokenizer_json(Spec{});
    edit(json);
    const std::string path = write_tokenizer(dir + "/" + name, json);
    const std::string error = test::error_of([&] { ByteLevelBpe bpe(path); });
    EXPECT_NE(error.find(path), std::string::npos) << error;
    EXPECT_EQ(error.find('\n'), std::string::npos) << error;
    return error;
  };
  auto has = [](const std::string& error, const std::string& part) {
    EXPECT_NE(error.find(part), std::string::npos) << error;
  };
  has(error_for("wordpiece", [](auto& j) { j["model"]["type"] = "WordPiece"; }),
      "model type WordPiece is not supported");
  has(error_for("lowercase",
                [](auto& j) {
                  j["normalizer"] = {{"type", "Lowercase"}};
                }),
      "normalizer Lowercase is not supported");
  has(error_for("metaspace",
                [](auto& j) {
                  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "▁"}};
                }),
      "pre-tokenizer Metaspace is not supported");
  has(error_for("no_pre", [](auto& j) { j["pre_tokenizer"] = nullptr; }),
      "not a byte-level BPE tokenizer");
  has(error_for("split_only",
                [](auto& j) {
                  j["pre_tokenizer"] = {
                      {"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Isolated"}};
                }),
      "has no ByteLevel step");
  has(error_for("removed",
                [](auto& j) {
                  j["pre_tokenizer"] = {
                      {"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Removed"}};
                }),
      "behavior other than Isolated");
  has(error_for("bad_regex",
                [](auto& j) {
                  j["pre_tokenizer"] = {{"type", "Split"},
                                        {"pattern", {{"Regex", "(unclosed"}}},
                                        {"behavior", "Isolated"}};
                }),
      "cannot compile the pre-tokenizer regex '(unclosed'");
  has(error_for("single_word",
                [](auto& j) {
                  j["added_tokens"] = nlohmann::json::array({added_token(300, "<w>", true)});
                  j["added_tokens"][0]["single_word"] = true;
                }),
      "added_tokens[0]: single_word tokens are not supported");
  has(error_for("unknown_merge",
                [](auto& j) { j["model"]["merges"] = nlohmann::json::array({"a zz"}); }),
      "model.merges[0] names a token that is not in the vocabulary");
  has(error_for("bad_merge", [](auto& j) { j["model"]["merges"] = nlohmann::json::array({"ab"}); }),
      "model.merges[0] is not 'a b'");
  has(error_for("negative_id", [](auto& j) { j["model"]["vocab"]["x"] = -3; }),
      "model.vocab['x'] is not an id");
  has(error_for("no_vocab", [](auto& j) { j["model"].erase("vocab"); }),
      "model.vocab is missing or empty");
  has(error_for("suffix", [](auto& j) { j["model"]["end_of_word_suffix"] = "</w>"; }),
      "model.end_of_word_suffix is not supported");

  const std::string broken = dir + "/broken.json";
  std::ofstream(broken) << R"({"model": {"vocab": )";
  const std::string error = test::error_of([&] { ByteLevelBpe bpe(broken); });
  EXPECT_NE(error.find(broken + ": not a tokenizer.json"), std::string::npos) << error;
}

TEST(ByteLevelBpe, TokenizerTakesSpecialTokensFromTokenizerConfig) {
  const std::string dir = test::temp_dir("bpe_special");
  Spec spec;
  spec.added = nlohmann::json::array({added_token(300, "<s>", true), added_token(301, "</s>", true),
                                      added_token(302, "<pad>", true)});
  const std::string path = write_tokenizer(dir, spec);

  // No tokenizer_config.json: no special ids; a model cannot be matched without EOS.
  {
    const Tokenizer tok(path);
    EXPECT_EQ(tok.bos_id(), -1);
    EXPECT_EQ(tok.eos_id(), -1);
    EXPECT_EQ(tok.encode("ab", /*add_bos=*/true), bytes_of("ab"));
    ModelConfig config;
    config.vocab_size = 303;
    EXPECT_NE(test::error_of([&] { tok.check_matches(config, "m"); }).find("defines no EOS"),
              std::string::npos);
  }
  // A bos_token alone is not added (GPT-2's tokenizer_config names one; transformers adds none).
  std::ofstream(dir + "/tokenizer_config.json") << R"({"bos_token": "<s>", "eos_token": "</s>"})";
  EXPECT_EQ(Tokenizer(path).bos_id(), -1);
  EXPECT_EQ(Tokenizer(path).encode("ab", true), bytes_of("ab"));
  std::ofstream(dir + "/tokenizer_config.json") << R"({"add_bos_token": true, "bos_token": "<s>",
             "eos_token": {"content": "</s>", "special": true},
             "pad_token": "<pad>", "chat_template": "ignored here"})";
  const Tokenizer tok(path);
  EXPECT_EQ(tok.bos_id(), 300);
  EXPECT_EQ(tok.eos_id(), 301);
  EXPECT_EQ(tok.pad_id(), 302);
  EXPECT_EQ(tok.vocab_size(), 303);
  EXPECT_EQ(tok.encode("ab", true, true), (std::vector<int64_t>{300, 'a', 'b', 301}));
  EXPECT_EQ(tok.decode({300, 'a', 'b', 301}), "ab");
  // The embedding may be larger than the vocabulary (padded, as Qwen2's), not smaller.
  ModelConfig config;
  config.vocab_size = 320;
  EXPECT_EQ(test::error_of([&] { tok.check_matches(config, "m"); }), "");
  config.vocab_size = 302;
  EXPECT_NE(test::error_of([&] { tok.check_matches(config, "m"); }).find("vocabulary mismatch"),
            std::string::npos);

  std::ofstream(dir + "/tokenizer_config.json") << R"({"eos_token": "<|eot|>"})";
  const std::string error = test::error_of([&] { Tokenizer again(path); });
  EXPECT_NE(error.find("eos_token '<|eot|>' is not a token"), std::string::npos) << error;

  // A post-processor whose template starts with a special token (Llama 3's newer tokenizer.json,
  // inside a Sequence) adds it as BOS, with no add_bos_token.
  auto json = tokenizer_json(spec);
  json["post_processor"] = nlohmann::json::parse(R"({"type": "Sequence", "processors": [
      {"type": "ByteLevel"},
      {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                {"Sequence": {"id": "A", "type_id": 0}}]}]})");
  const std::string templated = write_tokenizer(dir + "/templated", json);
  std::ofstream(dir + "/templated/tokenizer_config.json") << R"({"eos_token": "</s>"})";
  EXPECT_EQ(Tokenizer(templated).encode("ab", true), (std::vector<int64_t>{300, 'a', 'b'}));
}

TEST(ByteLevelBpe, SftStageStartsFromAnHfDirectoryWithTokenizerJson) {
  const std::string dir = test::temp_dir("bpe_sft");
  Spec spec;
  spec.merges = {{"t", "h"}, {"th", "e"}, {" ", "the"}, {"o", "n"}, {"i", "s"}};
  spec.added = nlohmann::json::array({added_token(300, "<|im_start|>", true),
                                      added_token(301, "<|im_end|>", true),
                                      added_token(302, "<|endoftext|>", true)});
  const std::string tokenizer = write_tokenizer(dir + "/tok", spec);
  std::ofstream(dir + "/tok/tokenizer_config.json")
      << R"({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": null})";
  ModelConfig config = test::llama_config(303, 32, 64, 2, 4, 2, 128);
  config.bos_token_id = 300;
  config.eos_token_id = 301;
  SaveOptions options;
  options.tokenizer_path = tokenizer;
  save_hf_model(*test::sharp_random_model(config, 4), dir + "/base", options);
  EXPECT_EQ(tokenizer_path_in(dir + "/base"), dir + "/base/tokenizer.json");
  EXPECT_EQ(read_file(dir + "/base/tokenizer_config.json"),
            read_file(dir + "/tok/tokenizer_config.json"));

  {
    std::ofstream data(dir + "/sft.jsonl");
    for (int i = 0; i < 24; ++i)
      data << R"({"messages": [{"role": "user", "content": "is the sun on? )" << i
           << R"("}, {"role": "assistant", "content": "the sun is on )" << i % 3 << R"("}]})"
           << "\n";
  }
  std::ofstream(dir + "/recipe.json") << R"({
    "run": {"name": "bpe", "dir": ")" << dir
                                      << R"(/run", "seed": 2, "threads": 1},
    "base": {"hf": ")" << dir << R"(/base"},
    "stages": [{"name": "sft", "type": "sft", "init": "@base",
                "data": {"train": ")" << dir
                                      << R"(/sft.jsonl", "format": "messages",
                         "template": "chatml", "val_fraction": 0.2},
                "train": {"steps": 8, "batch_size": 4, "lr": 3e-3, "max_seq_len": 64,
                          "eval_every": 4, "log_every": 1, "checkpoint_every": 4}}]})";
  std::string out;
  ASSERT_EQ(test::run_command(test::tiller_binary() + " run " + dir + "/recipe.json", &out), 0)
      << out;
  const std::string final_dir = dir + "/run/sft/final";
  EXPECT_EQ(read_file(final_dir + "/tokenizer.json"), read_file(tokenizer));
  EXPECT_FALSE(path_exists(final_dir + "/tokenizer.model"));
  // The stage learned from the response tokens: validation loss fell.
  const auto summary = read_json_file(dir + "/run/sft/complete.json");
  EXPECT_LT(summary["final_val_loss"].get<double>(), summary["initial_val_loss"].get<double>())
      << out;
  // And the result generates through the same tokenizer.
  ASSERT_EQ(test::run_command(test::tiller_binary() + " generate --model " + final_dir +
                                  " --prompt 'is the sun on?' --max-new-tokens 6 --seed 1",
                              &out),
            0)
      << out;
  ASSERT_EQ(test::run_command(test::tiller_binary() + " tokenize --model " + final_dir +
                                  " --text '<|im_start|>the sun'",
                              &out),
            0)
      << out;
  const Tokenizer tok(tokenizer);
  const auto ids = tok.encode("<|im_start|>the sun");
  std::string want;
  for (size_t i = 0; i < ids.size(); ++i) want += (i ? " " : "") + std::to_string(ids[i]);
  EXPECT_EQ(out, want + "\n");
}
