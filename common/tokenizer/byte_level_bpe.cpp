#include "common/tokenizer/byte_level_bpe.h"

#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/uregex.h>
#include <unicode/utext.h>
#include <unicode/utf8.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <climits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <tuple>
#include <unordered_map>

#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

namespace {

// Ids above this are refused: the tables are indexed by id (the largest vocabularies in use are
// ~256k tokens).
constexpr int64_t kMaxId = int64_t{1} << 22;

// GPT-2's pre-tokenizer split, what ByteLevel's use_regex applies.
constexpr const char* kGpt2Split =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// GPT-2's bytes_to_unicode: every byte as a printable code point, UTF-8 encoded.
std::vector<std::string> byte_symbols() {
  std::vector<int32_t> code(256, -1);
  for (int b = '!'; b <= '~'; ++b) code[b] = b;
  for (int b = 0xA1; b <= 0xAC; ++b) code[b] = b;
  for (int b = 0xAE; b <= 0xFF; ++b) code[b] = b;
  int32_t next = 256;
  for (int b = 0; b < 256; ++b)
    if (code[b] < 0) code[b] = next++;
  std::vector<std::string> out(256);
  for (int b = 0; b < 256; ++b) {
    char buf[4];
    int32_t n = 0;
    U8_APPEND_UNSAFE(buf, n, code[b]);
    out[b].assign(buf, static_cast<size_t>(n));
  }
  return out;
}

// A Split pattern as the Rust library's engine (Oniguruma, Ruby syntax) reads it, in ICU's
// syntax. The two agree but for one construct: a `+` or `*` after an interval quantifier
// ({n}, {n,}, {n,m}) repeats the quantified atom in Oniguruma, while ICU (as tiktoken's engine)
// takes `{n,m}+` as possessive. tiktoken's cl100k_base pattern has `\p{N}{1,3}+`, which a
// tokenizer.json converted from it keeps: transformers takes a whole digit run there, and so must
// Tiller. Each such atom is wrapped in a group: `X{1,3}+` becomes `(?:X{1,3})+`.
std::string oniguruma_to_icu(const std::string& pattern) {
  std::string out;
  std::vector<size_t> groups;       // where in `out` each open group began
  size_t atom = std::string::npos;  // where in `out` the last atom began
  size_t i = 0;
  auto copy_to = [&](size_t end) {  // copies pattern[i, end) as it is
    out.append(pattern, i, end - i);
    i = end;
  };
  while (i < pattern.size()) {
    const char c = pattern[i];
    if (c == '\\') {
      atom = out.size();
      size_t end = std::min(i + 2, pattern.size());
      const char kind = end == i + 2 ? pattern[i + 1] : '\0';
      if (std::string("pPxNkg").find(kind) != std::string::npos && end < pattern.size() &&
          pattern[end] == '{') {
        const size_t close = pattern.find('}', end);
        end = close == std::string::npos ? pattern.size() : close + 1;
      } else if (kind == 'x' || kind == 'u') {  // \xhh, \uhhhh
        size_t digits = kind == 'x' ? 2 : 4;
        while (digits-- > 0 && end < pattern.size() &&
               std::isxdigit(static_cast<unsigned char>(pattern[end])))
          ++end;
      }
      copy_to(end);
    } else if (c == '[') {  // a class, perhaps nested; `]` first in it is a literal
      atom = out.size();
      size_t j = i + 1, depth = 1;
      if (j < pattern.size() && pattern[j] == '^') ++j;
      if (j < pattern.size() && pattern[j] == ']') ++j;
      for (; j < pattern.size() && depth > 0; ++j) {
        if (pattern[j] == '\\') {
          ++j;
        } else if (pattern[j] == '[') {
          ++depth;
        } else if (pattern[j] == ']') {
          --depth;
        }
      }
      copy_to(std::min(j, pattern.size()));
    } else if (c == '(') {
      groups.push_back(out.size());
      atom = std::string::npos;
      copy_to(i + 1);
    } else if (c == ')') {
      atom = groups.empty() ? std::string::npos : groups.back();
      if (!groups.empty()) groups.pop_back();
      copy_to(i + 1);
    } else if (c == '|') {
      atom = std::string::npos;
      copy_to(i + 1);
    } else if (c == '{') {
      // An interval is {n}, {n,}, {n,m} or {,m}; any other brace is a literal character.
      size_t j = i + 1;
      bool digits = false, comma = false;
      for (; j < pattern.size(); ++j) {
        if (std::isdigit(static_cast<unsigned char>(pattern[j]))) {
          digits = true;
        } else if (pattern[j] == ',' && !comma) {
          comma = true;
        } else {
          break;
        }
      }
      const bool interval = digits && j < pattern.size() && pattern[j] == '}';
      if (!interval) {
        atom = out.size();
        copy_to(i + 1);
      } else if (atom != std::string::npos && j + 1 < pattern.size() &&
                 (pattern[j + 1] == '+' || pattern[j + 1] == '*')) {
        out.insert(atom, "(?:");
        copy_to(j + 1);
        out += ')';
      } else {
        copy_to(j + 1);
      }
    } else if (c == '*' || c == '+' || c == '?') {
      copy_to(i + 1);  // a quantifier: the atom before it stays the last atom
    } else {
      atom = out.size();
      size_t end = i + 1;  // a whole UTF-8 character
      while (end < pattern.size() && (static_cast<unsigned char>(pattern[end]) & 0xC0) == 0x80)
        ++end;
      copy_to(end);
    }
  }
  return out;
}

// A compiled ICU regex; matching is serialized by the tokenizer's lock.
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where) {
    UErrorCode status = U_ZERO_ERROR;
    UParseError parse{};
    UText* text =
        utext_openUTF8(nullptr, pattern.data(), static_cast<int64_t>(pattern.size()), &status);
    regex_ = uregex_openUText(text, 0, &parse, &status);
    utext_close(text);
    // A pattern that backtracks without end fails the text instead of hanging (the units are
    // the engine's steps, of the order of a millisecond each).
    if (U_SUCCESS(status)) uregex_setTimeLimit(regex_, 10000, &status);
    check(U_SUCCESS(status), where + ": cannot compile the pre-tokenizer regex '" + pattern +
                                 "' (" + u_errorName(status) + " at offset " +
                                 std::to_string(parse.offset) + ")");
  }
  ~Regex() { uregex_close(regex_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // [begin, end) byte ranges of every match in text, left to right.
  std::vector<std::pair<size_t, size_t>> matches(const std::string& text) const {
    std::vector<std::pair<size_t, size_t>> out;
    UErrorCode status = U_ZERO_ERROR;
    UText* utext = utext_openUTF8(nullptr, text.data(), static_cast<int64_t>(text.size()), &status);
    uregex_setUText(regex_, utext, &status);
    while (U_SUCCESS(status) && uregex_findNext(regex_, &status)) {
      const int64_t begin = uregex_start64(regex_, 0, &status);
      const int64_t end = uregex_end64(regex_, 0, &status);
      if (U_SUCCESS(status) && end > begin)
        out.emplace_back(static_cast<size_t>(begin), static_cast<size_t>(end));
    }
    uregex_reset64(regex_, 0, &status);
    utext_close(utext);
    check(U_SUCCESS(status), std::string("pre-tokenizer regex failed: ") + u_errorName(status));
    return out;
  }

 private:
  URegularExpression* regex_ = nullptr;
};

// One step of the pre-tokenizer: splits each piece of text further.
struct Step {
  enum Kind { kRegex, kLiteral, kDigits, kByteLevel } kind;
  std::shared_ptr<Regex> regex;  // kRegex, and kByteLevel with use_regex
  std::string literal;           // kLiteral
  bool individual_digits = false;
  bool add_prefix_space = false;  // kByteLevel
};

struct AddedToken {
  int64_t id;
  std::string content;
  bool lstrip, rstrip, special;
};

// Calls visit(begin, end, code point) for each UTF-8 character of text, left to right; an
// ill-formed sequence comes as one call with a negative code point.
template <typename Visit>
void for_each_character(const std::string& text, Visit visit) {
  int32_t i = 0;
  const int32_t n = static_cast<int32_t>(text.size());
  while (i < n) {
    const int32_t start = i;
    UChar32 c;
    U8_NEXT(text.data(), i, n, c);
    visit(static_cast<size_t>(start), static_cast<size_t>(i), c);
  }
}

bool is_numeric(UChar32 c) {
  const int8_t type = u_charType(c);
  return type == U_DECIMAL_DIGIT_NUMBER || type == U_LETTER_NUMBER || type == U_OTHER_NUMBER;
}

// Isolated pieces: each match is a piece, and so is each stretch between matches.
void split_isolated(const std::string& piece, const std::vector<std::pair<size_t, size_t>>& found,
                    std::vector<std::string>& out) {
  size_t at = 0;
  for (const auto& [begin, end] : found) {
    if (begin > at) out.push_back(piece.substr(at, begin - at));
    out.push_back(piece.substr(begin, end - begin));
    at = end;
  }
  if (at < piece.size()) out.push_back(piece.substr(at));
}

std::vector<std::pair<size_t, size_t>> literal_matches(const std::string& text,
                                                       const std::string& literal) {
  std::vector<std::pair<size_t, size_t>> out;
  for (size_t at = text.find(literal); at != std::string::npos && !literal.empty();
       at = text.find(literal, at + literal.size()))
    out.emplace_back(at, at + literal.size());
  return out;
}

std::vector<std::pair<size_t, size_t>> digit_matches(const std::string& text, bool individual) {
  std::vector<std::pair<size_t, size_t>> out;
  for_each_character(text, [&](size_t begin, size_t end, UChar32 c) {
    if (c < 0 || !is_numeric(c)) return;
    if (!individual && !out.empty() && out.back().second == begin)
      out.back().second = end;
    else
      out.emplace_back(begin, end);
  });
  return out;
}

const nlohmann::json* member(const nlohmann::json& object, const char* key) {
  auto it = object.find(key);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

std::string type_of(const nlohmann::json& object, const std::string& where) {
  check(object.is_object(), where + " is not an object");
  const auto* type = member(object, "type");
  check(type != nullptr && type->is_string(), where + " has no type");
  return type->get<std::string>();
}

bool flag(const nlohmann::json& object, const char* key, bool fallback) {
  const auto* value = member(object, key);
  return value != nullptr && value->is_boolean() ? value->get<bool>() : fallback;
}

}  // namespace

struct ByteLevelBpe::State {
  std::string path;
  std::unordered_map<std::string, int64_t> vocab;
  std::vector<std::string> pieces;  // by id; "" where no token has the id
  // (left id << 32 | right id) -> (rank, merged id)
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;
  bool ignore_merges = false;
  // The normalizer's Unicode form: none, NFC or NFKC (Claude's tokenizer.json).
  const icu::Normalizer2* (*normal_form)(UErrorCode&) = nullptr;
  std::string normal_form_name;
  int64_t template_bos = -1;
  std::string pre_tokenizer_json;
  std::vector<Step> steps;
  std::vector<AddedToken> added;         // longest content first
  std::array<bool, 256> starts_added{};  // by byte: some added token begins with it
  std::vector<bool> special;             // by id
  std::vector<bool> is_added;            // by id: an added token, whose content is plain text
  std::vector<std::string> byte_symbol;
  std::unordered_map<std::string, uint8_t> symbol_byte;
  std::vector<int32_t> byte_id;  // the vocabulary id of each byte's symbol (-1: none)

  mutable std::mutex lock;  // the regexes and the cache
  mutable std::unordered_map<std::string, std::vector<int64_t>> cache;

  void parse(const nlohmann::json& json);
  const nlohmann::json& read_model_settings(const nlohmann::json& json);
  int64_t read_vocab(const nlohmann::json& model);
  int64_t read_added_tokens(const nlohmann::json& json);
  void index_tokens_by_id(int64_t largest_id);
  void read_merges(const nlohmann::json& model);
  void read_normalizer(const nlohmann::json& json);
  void read_pre_tokenizer(const nlohmann::json& json);
  void read_post_processor(const nlohmann::json& json);
  void map_bytes_to_symbols();
  void parse_step(const nlohmann::json& step, const std::string& where, int depth = 0);
  std::vector<std::string> pre_tokenize(const std::string& text) const;
  void bpe(const std::string& word, std::vector<int64_t>& out) const;
  void encode_plain(const std::string& text, std::vector<int64_t>& out) const;
};

ByteLevelBpe::ByteLevelBpe(const std::string& path) : state_(std::make_unique<State>()) {
  state_->path = path;
  check(path_exists(path), "tokenizer " + path + " does not exist");
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": not a tokenizer.json (" + std::string(e.what()) + ")");
  }
  state_->parse(json);
}

ByteLevelBpe::~ByteLevelBpe() = default;

// Reads the whole tokenizer.json, its sections in this order (the order of the checks, and so of
// which error a file with several faults gets).
void ByteLevelBpe::State::parse(const nlohmann::json& json) {
  check(json.is_object(), path + ": not a tokenizer.json (not a JSON object)");
  const nlohmann::json& model = read_model_settings(json);
  const int64_t largest_vocab_id = read_vocab(model);
  const int64_t largest_added_id = read_added_tokens(json);
  index_tokens_by_id(std::max(largest_vocab_id, largest_added_id));
  read_merges(model);
  read_normalizer(json);
  read_pre_tokenizer(json);
  read_post_processor(json);
  map_bytes_to_symbols();
}

// The model section's type and options; the vocabulary and merges are read apart.
const nlohmann::json& ByteLevelBpe::State::read_model_settings(const nlohmann::json& json) {
  const auto* model = member(json, "model");
  check(model != nullptr && model->is_object(), path + ": no model");
  const std::string model_type =
      model->contains("type") ? type_of(*model, path + ": model") : "BPE";
  check(model_type == "BPE",
        path + ": model type " + model_type + " is not supported (byte-level BPE only)");
  for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const auto* value = member(*model, affix);
    check(value == nullptr || (value->is_string() && value->get<std::string>().empty()),
          path + ": model." + affix + " is not supported");
  }
  ignore_merges = flag(*model, "ignore_merges", false);
  return *model;
}

// Returns the largest id in the vocabulary.
int64_t ByteLevelBpe::State::read_vocab(const nlohmann::json& model) {
  const auto* vocab_json = member(model, "vocab");
  check(vocab_json != nullptr && vocab_json->is_object() && !vocab_json->empty(),
        path + ": model.vocab is missing or empty");
  int64_t largest = -1;
  for (const auto& [token, id] : vocab_json->items()) {
    check(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < kMaxId,
          path + ": model.vocab['" + token + "'] is not an id in [0, 2^22)");
    vocab[token] = id.get<int64_t>();
    largest = std::max(largest, id.get<int64_t>());
  }
  return largest;
}

// Added tokens (special ones among them), longest content first; returns their largest id (-1
// when there are none).
int64_t ByteLevelBpe::State::read_added_tokens(const nlohmann::json& json) {
  int64_t largest = -1;
  if (const auto* tokens = member(json, "added_tokens")) {
    check(tokens->is_array(), path + ": added_tokens is not a list");
    for (size_t i = 0; i < tokens->size(); ++i) {
      const auto& t = (*tokens)[i];
      const std::string where = path + ": added_tokens[" + std::to_string(i) + "]";
      check(t.is_object() && t.contains("id") && t["id"].is_number_integer() &&
                t["id"].get<int64_t>() >= 0 && t["id"].get<int64_t>() < kMaxId &&
                t.contains("content") && t["content"].is_string() &&
                !t["content"].get<std::string>().empty(),
            where + " needs an id in [0, 2^22) and a non-empty content");
      check(!flag(t, "single_word", false), where + ": single_word tokens are not supported");
      added.push_back({t["id"].get<int64_t>(), t["content"].get<std::string>(),
                       flag(t, "lstrip", false), flag(t, "rstrip", false),
                       flag(t, "special", false)});
      largest = std::max(largest, added.back().id);
    }
  }
  std::stable_sort(added.begin(), added.end(), [](const AddedToken& a, const AddedToken& b) {
    return a.content.size() > b.content.size();
  });
  for (const AddedToken& t : added) starts_added[static_cast<unsigned char>(t.content[0])] = true;
  return largest;
}

// The tables by id, for ids 0..largest_id; an added token's content joins the vocabulary.
void ByteLevelBpe::State::index_tokens_by_id(int64_t largest_id) {
  pieces.assign(static_cast<size_t>(largest_id + 1), std::string());
  special.assign(static_cast<size_t>(largest_id + 1), false);
  is_added.assign(static_cast<size_t>(largest_id + 1), false);
  for (const auto& [token, id] : vocab) pieces[static_cast<size_t>(id)] = token;
  for (const AddedToken& t : added) {
    pieces[static_cast<size_t>(t.id)] = t.content;
    special[static_cast<size_t>(t.id)] = t.special;
    is_added[static_cast<size_t>(t.id)] = true;
    vocab.emplace(t.content, t.id);
  }
}

// Merges, in rank order; each names tokens of the vocabulary (added tokens included).
void ByteLevelBpe::State::read_merges(const nlohmann::json& model) {
  const auto* merges_json = member(model, "merges");
  check(merges_json == nullptr || merges_json->is_array(), path + ": model.merges is not a list");
  for (size_t rank = 0; merges_json != nullptr && rank < merges_json->size(); ++rank) {
    const auto& m = (*merges_json)[rank];
    const std::string where = path + ": model.merges[" + std::to_string(rank) + "]";
    std::string left, right;
    if (m.is_string()) {
      const std::string both = m.get<std::string>();
      const size_t space = both.find(' ', 1);
      check(space != std::string::npos && space + 1 < both.size(), where + " is not 'a b'");
      left = both.substr(0, space);
      right = both.substr(space + 1);
    } else {
      check(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(),
            where + " is neither 'a b' nor [a, b]");
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    }
    const auto l = vocab.find(left), r = vocab.find(right), merged = vocab.find(left + right);
    check(l != vocab.end() && r != vocab.end() && merged != vocab.end(),
          where + " names a token that is not in the vocabulary");
    const uint64_t key = static_cast<uint64_t>(l->second) << 32 | static_cast<uint64_t>(r->second);
    merges.emplace(
        key, std::make_pair(static_cast<int32_t>(rank), static_cast<int32_t>(merged->second)));
  }
}

// None, NFC, NFKC, or an empty Sequence.
void ByteLevelBpe::State::read_normalizer(const nlohmann::json& json) {
  if (const auto* normalizer = member(json, "normalizer")) {
    const std::string type = type_of(*normalizer, path + ": normalizer");
    bool empty_sequence = type == "Sequence" && normalizer->contains("normalizers") &&
                          (*normalizer)["normalizers"].is_array() &&
                          (*normalizer)["normalizers"].empty();
    check(type == "NFC" || type == "NFKC" || empty_sequence,
          path + ": normalizer " + type + " is not supported (none, NFC or NFKC)");
    if (type == "NFC") normal_form = icu::Normalizer2::getNFCInstance;
    if (type == "NFKC") normal_form = icu::Normalizer2::getNFKCInstance;
    normal_form_name = type;
  }
}

// The pre-tokenizer must map bytes to symbols (ByteLevel) somewhere.
void ByteLevelBpe::State::read_pre_tokenizer(const nlohmann::json& json) {
  const auto* pre = member(json, "pre_tokenizer");
  check(pre != nullptr, path +
                            ": no pre_tokenizer: not a byte-level BPE tokenizer (a "
                            "SentencePiece-style tokenizer.json comes with tokenizer.model)");
  parse_step(*pre, path + ": pre_tokenizer");
  pre_tokenizer_json = pre->dump();
  check(std::any_of(steps.begin(), steps.end(),
                    [](const Step& s) { return s.kind == Step::kByteLevel; }),
        path + ": the pre_tokenizer has no ByteLevel step: not a byte-level BPE tokenizer");
}

// Only whether a template puts a special token first (BOS); the rest of what the post-processor
// does (type ids, pairs) does not change the ids of one text.
void ByteLevelBpe::State::read_post_processor(const nlohmann::json& json) {
  std::vector<const nlohmann::json*> processors;
  if (const auto* post = member(json, "post_processor"); post != nullptr && post->is_object())
    processors.push_back(post);
  for (size_t i = 0; i < processors.size() && i < 16; ++i) {
    const nlohmann::json& p = *processors[i];
    if (const auto* list = member(p, "processors"); list != nullptr && list->is_array())
      for (const auto& inner : *list)
        if (inner.is_object()) processors.push_back(&inner);
    const auto* single = member(p, "single");
    if (!p.contains("type") || p["type"] != "TemplateProcessing" || single == nullptr ||
        !single->is_array() || single->empty() || !(*single)[0].is_object())
      continue;
    const auto* first = member((*single)[0], "SpecialToken");
    if (first == nullptr || !first->is_object() || !first->contains("id") ||
        !(*first)["id"].is_string())
      continue;
    const std::string token = (*first)["id"].get<std::string>();
    auto it = vocab.find(token);
    check(it != vocab.end(),
          path + ": post_processor's template starts with '" + token + "', which is not a token");
    template_bos = it->second;
  }
}

// Each byte's printable symbol, back, and its vocabulary id.
void ByteLevelBpe::State::map_bytes_to_symbols() {
  byte_symbol = byte_symbols();
  byte_id.assign(256, -1);
  for (int b = 0; b < 256; ++b) {
    symbol_byte[byte_symbol[b]] = static_cast<uint8_t>(b);
    auto it = vocab.find(byte_symbol[b]);
    if (it != vocab.end()) byte_id[b] = static_cast<int32_t>(it->second);
  }
}

void ByteLevelBpe::State::parse_step(const nlohmann::json& step, const std::string& where,
                                     int depth) {
  check(depth < 8, where + ": Sequences nested too deep");
  const std::string type = type_of(step, where);
  if (type == "Sequence") {
    const auto* list = member(step, "pretokenizers");
    check(list != nullptr && list->is_array(), where + ": Sequence without pretokenizers");
    for (size_t i = 0; i < list->size(); ++i)
      parse_step((*list)[i], where + ".pretokenizers[" + std::to_string(i) + "]", depth + 1);
  } else if (type == "Split") {
    const auto* behavior = member(step, "behavior");
    check(behavior != nullptr && behavior->is_string() && *behavior == "Isolated",
          where + ": Split behavior other than Isolated is not supported");
    check(!flag(step, "invert", false), where + ": an inverted Split is not supported");
    const auto* pattern = member(step, "pattern");
    check(pattern != nullptr && pattern->is_object(), where + ": Split without a pattern");
    Step s{};
    if (const auto* regex = member(*pattern, "Regex"); regex != nullptr && regex->is_string()) {
      s.kind = Step::kRegex;
      s.regex = std::make_shared<Regex>(oniguruma_to_icu(regex->get<std::string>()), where);
    } else if (const auto* text = member(*pattern, "String");
               text != nullptr && text->is_string() && !text->get<std::string>().empty()) {
      s.kind = Step::kLiteral;
      s.literal = text->get<std::string>();
    } else {
      throw Error(where + ": Split pattern is neither Regex nor a non-empty String");
    }
    steps.push_back(std::move(s));
  } else if (type == "Digits") {
    Step s{};
    s.kind = Step::kDigits;
    s.individual_digits = flag(step, "individual_digits", false);
    steps.push_back(std::move(s));
  } else if (type == "ByteLevel") {
    Step s{};
    s.kind = Step::kByteLevel;
    s.add_prefix_space = flag(step, "add_prefix_space", true);
    if (flag(step, "use_regex", true)) s.regex = std::make_shared<Regex>(kGpt2Split, where);
    steps.push_back(std::move(s));
  } else {
    throw Error(where + ": pre-tokenizer " + type +
                " is not supported (ByteLevel, Split, Digits, Sequence)");
  }
}

std::vector<std::string> ByteLevelBpe::State::pre_tokenize(const std::string& text) const {
  std::vector<std::string> pieces_now = {text}, next;
  for (const Step& step : steps) {
    next.clear();
    for (std::string& piece : pieces_now) {
      if (step.kind == Step::kByteLevel && step.add_prefix_space && piece.front() != ' ')
        piece.insert(piece.begin(), ' ');
      switch (step.kind) {
        case Step::kRegex:
          split_isolated(piece, step.regex->matches(piece), next);
          break;
        case Step::kLiteral:
          split_isolated(piece, literal_matches(piece, step.literal), next);
          break;
        case Step::kDigits:
          split_isolated(piece, digit_matches(piece, step.individual_digits), next);
          break;
        case Step::kByteLevel:
          if (step.regex)
            split_isolated(piece, step.regex->matches(piece), next);
          else
            next.push_back(piece);
          break;
      }
    }
    pieces_now.swap(next);
  }
  return pieces_now;
}

// GPT-2's bpe(): the lowest-ranked adjacent pair merges first, its occurrences left to right,
// until no adjacent pair has a merge. As transformers does it, with a heap of candidate merges
// over a linked list of symbols: O(n log n) in a word's length (a long run without spaces, such
// as base64 in a corpus, would take O(n^2) rescanning the word after each merge).
void ByteLevelBpe::State::bpe(const std::string& word, std::vector<int64_t>& out) const {
  constexpr size_t kLongestCached = 256;
  auto cached = cache.find(word);
  if (cached != cache.end()) {
    out.insert(out.end(), cached->second.begin(), cached->second.end());
    return;
  }
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // -1 at the ends
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  std::string symbols_text;
  for (unsigned char byte : word) {
    check(byte_id[byte] >= 0, path + ": the vocabulary has no token for byte " +
                                  std::to_string(static_cast<int>(byte)));
    const int32_t at = static_cast<int32_t>(symbols.size());
    symbols.push_back({byte_id[byte], at - 1, at + 1, true});
    if (ignore_merges) symbols_text += byte_symbol[byte];
  }
  if (!symbols.empty()) symbols.back().next = -1;

  std::vector<int64_t> result;
  auto whole = ignore_merges ? vocab.find(symbols_text) : vocab.end();
  if (whole != vocab.end()) {
    result.push_back(whole->second);
  } else {
    // (rank, left position, merged id); the smallest rank, then the leftmost, first.
    using Candidate = std::tuple<int32_t, int32_t, int32_t>;
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
    auto merge_of = [&](int32_t left) -> const std::pair<int32_t, int32_t>* {
      const int32_t right = symbols[static_cast<size_t>(left)].next;
      if (right < 0) return nullptr;
      const uint64_t key =
          static_cast<uint64_t>(static_cast<uint32_t>(symbols[static_cast<size_t>(left)].id))
              << 32 |
          static_cast<uint32_t>(symbols[static_cast<size_t>(right)].id);
      auto it = merges.find(key);
      return it == merges.end() ? nullptr : &it->second;
    };
    auto push = [&](int32_t left) {
      if (const auto* m = merge_of(left)) heap.emplace(m->first, left, m->second);
    };
    for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) push(i);
    while (!heap.empty()) {
      const auto [rank, left, merged] = heap.top();
      heap.pop();
      Symbol& l = symbols[static_cast<size_t>(left)];
      // Stale: the left symbol was merged into its neighbour, or the pair has changed since.
      const auto* now = l.alive ? merge_of(left) : nullptr;
      if (now == nullptr || now->first != rank || now->second != merged) continue;
      Symbol& r = symbols[static_cast<size_t>(l.next)];
      l.id = merged;
      r.alive = false;
      l.next = r.next;
      if (r.next >= 0) symbols[static_cast<size_t>(r.next)].prev = left;
      if (l.prev >= 0) push(l.prev);
      push(left);
    }
    for (const Symbol& symbol : symbols)
      if (symbol.alive) result.push_back(symbol.id);
  }
  if (word.size() <= kLongestCached) {
    if (cache.size() > 200000) cache.clear();
    cache.emplace(word, result);
  }
  out.insert(out.end(), result.begin(), result.end());
}

void ByteLevelBpe::State::encode_plain(const std::string& text, std::vector<int64_t>& out) const {
  if (text.empty()) return;
  std::string normalized = text;
  if (normal_form != nullptr) {
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* normalizer = normal_form(status);
    const icu::UnicodeString unicode = icu::UnicodeString::fromUTF8(text);
    if (U_SUCCESS(status) && !normalizer->isNormalized(unicode, status) && U_SUCCESS(status)) {
      normalized.clear();
      normalizer->normalize(unicode, status).toUTF8String(normalized);
    }
    check(U_SUCCESS(status), path + ": " + normal_form_name + " normalization failed");
  }
  for (const std::string& word : pre_tokenize(normalized)) bpe(word, out);
}

std::vector<int64_t> ByteLevelBpe::encode(const std::string& text) const {
  const State& s = *state_;
  std::lock_guard<std::mutex> guard(s.lock);
  std::vector<int64_t> out;
  // Added tokens first: the text between them goes through the normalizer and BPE.
  size_t plain_from = 0, at = 0;
  while (at < text.size()) {
    // Most bytes begin no added token (Llama 3 has 256 of them): skip those without a scan.
    if (!s.starts_added[static_cast<unsigned char>(text[at])]) {
      ++at;
      continue;
    }
    const AddedToken* found = nullptr;
    for (const AddedToken& t : s.added)  // longest first
      if (text.compare(at, t.content.size(), t.content) == 0) {
        found = &t;
        break;
      }
    if (found == nullptr) {
      ++at;
      continue;
    }
    size_t plain_to = at;
    if (found->lstrip)
      while (plain_to > plain_from && std::isspace(static_cast<unsigned char>(text[plain_to - 1])))
        --plain_to;
    s.encode_plain(text.substr(plain_from, plain_to - plain_from), out);
    out.push_back(found->id);
    at += found->content.size();
    if (found->rstrip)
      while (at < text.size() && std::isspace(static_cast<unsigned char>(text[at]))) ++at;
    plain_from = at;
  }
  s.encode_plain(text.substr(plain_from), out);
  return out;
}

std::string ByteLevelBpe::decode(const std::vector<int64_t>& ids) const {
  const State& s = *state_;
  std::string bytes;
  for (int64_t id : ids) {
    check(id >= 0, "tokenizer " + s.path + ": negative id " + std::to_string(id));
    // An id with no token (an embedding padded past the vocabulary, as Qwen2's) decodes to
    // nothing, as in transformers.
    if (id >= vocab_size() || s.pieces[static_cast<size_t>(id)].empty()) continue;
    const std::string& piece = s.pieces[static_cast<size_t>(id)];
    if (s.special[static_cast<size_t>(id)]) continue;
    // Added tokens are plain text; vocabulary tokens are byte symbols, except one with a
    // character outside the byte alphabet, which transformers' ByteLevel decoder keeps as text.
    if (s.is_added[static_cast<size_t>(id)]) {
      bytes += piece;
      continue;
    }
    std::string decoded;
    bool byte_level = true;
    for_each_character(piece, [&](size_t begin, size_t end, UChar32 c) {
      auto it = s.symbol_byte.find(piece.substr(begin, end - begin));
      byte_level = byte_level && c >= 0 && it != s.symbol_byte.end();
      if (byte_level) decoded += static_cast<char>(it->second);
    });
    bytes += byte_level ? decoded : piece;
  }
  // Tokens may end inside a character (a sampled response often does): like transformers
  // (from_utf8_lossy), each ill-formed sequence becomes U+FFFD, so the text is always UTF-8.
  std::string out;
  out.reserve(bytes.size());
  for_each_character(bytes, [&](size_t begin, size_t end, UChar32 c) {
    if (c < 0)
      out += "\xEF\xBF\xBD";
    else
      out.append(bytes, begin, end - begin);
  });
  return out;
}

std::string ByteLevelBpe::piece(int64_t id) const {
  check(id >= 0 && id < vocab_size() && !state_->pieces[static_cast<size_t>(id)].empty(),
        "tokenizer " + state_->path + ": id " + std::to_string(id) + " is not in the vocabulary");
  return state_->pieces[static_cast<size_t>(id)];
}

int64_t ByteLevelBpe::vocab_size() const {
  return static_cast<int64_t>(state_->pieces.size());
}

int64_t ByteLevelBpe::template_bos() const {
  return state_->template_bos;
}

std::vector<std::pair<std::string, int64_t>> ByteLevelBpe::special_tokens() const {
  std::vector<std::pair<std::string, int64_t>> out;
  for (const AddedToken& t : state_->added)
    if (t.special) out.emplace_back(t.content, t.id);
  return out;
}

ByteLevelBpe::Entry ByteLevelBpe::entry(int64_t id) const {
  check(id >= 0 && id < vocab_size(),
        "tokenizer " + state_->path + ": id " + std::to_string(id) + " is out of range");
  const auto i = static_cast<size_t>(id);
  return {state_->pieces[i], state_->is_added[i], state_->special[i]};
}

// Rebuilt from the merge table (a merge listed twice keeps its first rank, as read_merges did).
std::vector<std::string> ByteLevelBpe::merges() const {
  std::vector<std::string> by_rank;
  for (const auto& [pair, rank_and_id] : state_->merges) {
    const auto rank = static_cast<size_t>(rank_and_id.first);
    if (by_rank.size() <= rank) by_rank.resize(rank + 1);
    by_rank[rank] = state_->pieces[static_cast<size_t>(pair >> 32)] + " " +
                    state_->pieces[static_cast<size_t>(pair & 0xFFFFFFFFu)];
  }
  by_rank.erase(std::remove(by_rank.begin(), by_rank.end(), std::string()), by_rank.end());
  return by_rank;
}

const std::string& ByteLevelBpe::pre_tokenizer_json() const {
  return state_->pre_tokenizer_json;
}

int64_t ByteLevelBpe::id_of(const std::string& token) const {
  auto it = state_->vocab.find(token);
  return it == state_->vocab.end() ? -1 : it->second;
}

}  // namespace tiller
