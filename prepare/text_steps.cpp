#include "prepare/text_steps.h"

#include <unicode/bytestream.h>   // icu::StringByteSink: NFC output into a std::string
#include <unicode/normalizer2.h>  // icu::Normalizer2: NFC
#include <unicode/uchar.h>        // u_isUWhiteSpace, u_isalpha, u_ispunct, u_charType
#include <xxhash.h>               // XXH3_64bits: word, line and paragraph hashes

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>

#include "common/util/error.h"

namespace tiller {

namespace {

constexpr size_t kNpos = std::string_view::npos;

// ---------------------------------------------------------------------------------------------
// UTF-8 and character classes

bool is_ascii_space(unsigned char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}
bool is_ascii_alpha(unsigned char c) {
  return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}
bool is_digit(unsigned char c) {
  return c >= '0' && c <= '9';
}
bool is_ascii_alnum(unsigned char c) {
  return is_digit(c) || is_ascii_alpha(c);
}
bool is_hex(unsigned char c) {
  return is_digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}
bool is_ascii_punct(unsigned char c) {
  return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
         (c >= 0x7B && c <= 0x7E);
}
char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
}

// The length of the UTF-8 sequence that starts with `lead`, cut to what is left of the text.
size_t sequence_length(unsigned char lead, size_t left) {
  const size_t len = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
  return std::min(len, left);
}

// The code point at s[i] (valid UTF-8); its length in `len`.
UChar32 decode(std::string_view s, size_t i, size_t& len) {
  const auto c = static_cast<unsigned char>(s[i]);
  len = sequence_length(c, s.size() - i);
  auto cont = [&](size_t k) {
    return static_cast<UChar32>(static_cast<unsigned char>(s[i + k]) & 0x3F);
  };
  switch (len) {
    case 1:
      return c;
    case 2:
      return ((c & 0x1F) << 6) | cont(1);
    case 3:
      return ((c & 0x0F) << 12) | (cont(1) << 6) | cont(2);
    default:
      return ((c & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3);
  }
}

int64_t code_points(std::string_view s) {
  int64_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

bool all_ascii(std::string_view s) {
  size_t i = 0;
  uint64_t bits = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t word;
    std::memcpy(&word, s.data() + i, 8);
    bits |= word;
  }
  for (; i < s.size(); ++i) bits |= static_cast<unsigned char>(s[i]);
  return (bits & 0x8080808080808080ULL) == 0;
}

// Calls f(word) for each run of characters between Unicode whitespace.
template <typename F>
void for_each_word(std::string_view s, F&& f) {
  size_t start = kNpos, i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len = 1;
    const bool space = c < 0x80 ? is_ascii_space(c) : u_isUWhiteSpace(decode(s, i, len));
    if (space) {
      if (start != kNpos) f(s.substr(start, i - start));
      start = kNpos;
    } else if (start == kNpos) {
      start = i;
    }
    i += len;
  }
  if (start != kNpos) f(s.substr(start));
}

// Calls f(line) for each line (split on '\n'; a final '\n' ends the last line, as splitlines()).
template <typename F>
void for_each_line(std::string_view s, F&& f) {
  size_t pos = 0;
  while (pos < s.size()) {
    size_t end = s.find('\n', pos);
    if (end == kNpos) end = s.size();
    f(s.substr(pos, end - pos));
    pos = end + 1;
  }
}

std::string_view trim_spaces(std::string_view s) {
  while (!s.empty() && is_ascii_space(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && is_ascii_space(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}
bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), kNpos, suffix) == 0;
}
bool equals_ignoring_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  return true;
}
// Whether `text` contains `lower` (lowercase ASCII), ignoring ASCII case.
bool contains_ignoring_case(std::string_view text, std::string_view lower) {
  if (lower.empty()) return true;
  if (text.size() < lower.size()) return false;
  const char first = lower[0];
  for (size_t i = 0; i + lower.size() <= text.size(); ++i)
    if (ascii_lower(text[i]) == first && equals_ignoring_case(text.substr(i, lower.size()), lower))
      return true;
  return false;
}
size_t count_of(std::string_view text, std::string_view what) {  // non-overlapping, as str.count
  size_t n = 0;
  for (size_t pos = text.find(what); pos != kNpos; pos = text.find(what, pos + what.size())) ++n;
  return n;
}

std::string format_number(double x) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.4g", x);
  return buffer;
}

// ---------------------------------------------------------------------------------------------
// normalize

// Whether the character at s[i] (of `len` bytes) is a control or invisible character to remove.
bool is_removed_control(std::string_view s, size_t i, size_t len) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (len == 1) return (c < 0x20 && c != '\n' && c != '\t' && c != '\r') || c == 0x7F;
  const auto b1 = static_cast<unsigned char>(s[i + 1]);
  if (len == 2) return c == 0xC2 && b1 >= 0x80 && b1 <= 0x9F;  // C1 controls
  if (len != 3) return false;
  const auto b2 = static_cast<unsigned char>(s[i + 2]);
  return (c == 0xEF && b1 == 0xBB && b2 == 0xBF) ||                // U+FEFF
         (c == 0xE2 && b1 == 0x80 && b2 >= 0x8B && b2 <= 0x8D) ||  // U+200B..U+200D
         (c == 0xE2 && b1 == 0x81 && b2 == 0xA0);                  // U+2060
}

// One pass for control characters and whitespace.
std::string clean_characters(std::string_view s, bool controls, bool whitespace) {
  std::string out;
  out.reserve(s.size());
  bool space = false, started = false;
  int newlines = 0;
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t len = sequence_length(c, s.size() - i);
    if (controls && is_removed_control(s, i, len)) {
      i += len;
      continue;
    }
    if (whitespace) {
      if (c == '\r') {
        c = '\n';
        if (i + 1 < s.size() && s[i + 1] == '\n') len = 2;
      }
      if (c == ' ' || c == '\t') {
        space = true;
        i += len;
        continue;
      }
      if (c == '\n') {
        space = false;  // trailing blanks of the line go
        ++newlines;
        i += len;
        continue;
      }
      if (started) {
        out.append(static_cast<size_t>(std::min(newlines, 2)), '\n');
        if (space) out += ' ';
      }
      started = true;
      space = false;
      newlines = 0;
    }
    out.append(s.data() + i, len);
    i += len;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// boilerplate

bool ends_a_sentence_line(std::string_view line) {
  static constexpr std::string_view kEnds[] = {
      ".", "!", "?", "\"", "'", "\u201D", "\u2019", "\u2026", "\u3002", "\uFF01", "\uFF1F"};
  line = trim_spaces(line);
  for (std::string_view end : kEnds)
    if (ends_with(line, end)) return true;
  return false;
}

bool has_at_least_words(std::string_view line, int64_t wanted) {
  if (wanted <= 0) return true;
  int64_t n = 0;
  bool enough = false;
  for_each_word(line, [&](std::string_view) { enough = ++n >= wanted; });
  return enough;
}

bool is_boilerplate_line(std::string_view line, std::string_view lower,
                         const BoilerplateOptions& o) {
  for (const std::string& pattern : o.patterns)
    if (lower.find(pattern) != kNpos) return true;
  if (o.drop_curly_bracket_lines && line.find('{') != kNpos) return true;
  if (o.require_terminal_punctuation && !ends_a_sentence_line(line)) return true;
  return !has_at_least_words(line, o.min_words_per_line);
}

// ---------------------------------------------------------------------------------------------
// gopher_quality

bool is_symbol_code_point(UChar32 cp) {
  if (u_ispunct(cp)) return true;
  const int8_t type = u_charType(cp);
  return type == U_MATH_SYMBOL || type == U_CURRENCY_SYMBOL || type == U_MODIFIER_SYMBOL ||
         type == U_OTHER_SYMBOL;
}

bool is_stop_word(std::string_view word, const std::vector<std::string>& stop_words) {
  while (!word.empty() && is_ascii_punct(static_cast<unsigned char>(word.front())))
    word.remove_prefix(1);
  while (!word.empty() && is_ascii_punct(static_cast<unsigned char>(word.back())))
    word.remove_suffix(1);
  for (const std::string& stop : stop_words)
    if (equals_ignoring_case(word, stop)) return true;
  return false;
}

bool is_bullet_line(std::string_view line) {
  static constexpr std::string_view kBullets[] = {"\u2022", "\u2023", "\u25E6", "\u2043",
                                                  "\u2219", "-",      "*"};
  line = trim_spaces(line);
  for (std::string_view bullet : kBullets)
    if (starts_with(line, bullet)) return true;
  return false;
}

// ---------------------------------------------------------------------------------------------
// gopher_repetition: open-addressing tables of 64-bit hashes, reused per thread

uint64_t nonzero(uint64_t h) {
  return h == 0 ? 1 : h;
}  // 0 marks an empty slot
uint64_t slot_of(uint64_t h) {
  return (h ^ (h >> 29)) * 0xBF58476D1CE4E5B9ULL;
}

struct HashSet {
  std::vector<uint64_t> keys;
  size_t mask = 0;
  void reset(size_t n) {
    size_t capacity = 16;
    while (capacity < 2 * n) capacity <<= 1;
    keys.assign(capacity, 0);
    mask = capacity - 1;
  }
  bool contains(uint64_t h) const {
    h = nonzero(h);
    for (size_t i = slot_of(h) & mask;; i = (i + 1) & mask) {
      if (keys[i] == h) return true;
      if (keys[i] == 0) return false;
    }
  }
  // Whether h was new.
  bool insert(uint64_t h) {
    h = nonzero(h);
    for (size_t i = slot_of(h) & mask;; i = (i + 1) & mask) {
      if (keys[i] == h) return false;
      if (keys[i] == 0) {
        keys[i] = h;
        return true;
      }
    }
  }
};

// Counts of hashes, and which is the most frequent (the first seen among equals, as Python's
// Counter.most_common): a hash that reaches the highest count so far, or ties it having been seen
// first, becomes the top.
struct HashCounter {
  struct Entry {
    uint64_t key;
    uint32_t count, first;
  };
  std::vector<Entry> entries;
  size_t mask = 0;
  uint32_t top_count = 0, top_first = 0;
  void reset(size_t n) {
    size_t capacity = 16;
    while (capacity < 2 * n) capacity <<= 1;
    entries.assign(capacity, Entry{0, 0, 0});
    mask = capacity - 1;
    top_count = top_first = 0;
  }
  void add(uint64_t h, uint32_t index) {
    h = nonzero(h);
    size_t i = slot_of(h) & mask;
    while (entries[i].key != h && entries[i].key != 0) i = (i + 1) & mask;
    Entry& e = entries[i];
    if (e.key == 0) e = Entry{h, 0, index};
    ++e.count;
    if (e.count > top_count || (e.count == top_count && e.first < top_first)) {
      top_count = e.count;
      top_first = e.first;
    }
  }
};

struct RepetitionScratch {
  std::vector<std::string_view> words;
  std::vector<uint64_t> word_hashes, gram_hashes;
  std::vector<int64_t> prefix_chars;  // prefix_chars[i]: code points of words[0, i)
  HashSet set;
  HashCounter counter;
};

uint64_t hash_of(std::string_view s) {
  return XXH3_64bits(s.data(), s.size());
}
uint64_t combine(uint64_t h, uint64_t next) {
  h ^= next + 0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2);
  return h * 0xD6E8FEB86659FD93ULL;
}

// Duplicates among `pieces` (a piece seen before): their number and their code points.
struct Duplicates {
  int64_t count = 0, pieces = 0, chars = 0;
};
template <typename Split>
Duplicates find_duplicates(HashSet& set, size_t most, Split&& split) {
  Duplicates d;
  set.reset(most);
  split([&](std::string_view piece) {
    ++d.pieces;
    if (!set.insert(hash_of(piece))) {
      ++d.count;
      d.chars += code_points(piece);
    }
  });
  return d;
}

// ---------------------------------------------------------------------------------------------
// c4

// Sentence ends: . ! ? … 。！？ (a run of them, then closing quotes or brackets) followed by a
// blank or the end of the text, after some text. Counts up to `enough`.
int64_t count_sentences(std::string_view s, int64_t enough) {
  auto end_mark_length = [&](size_t i) -> size_t {
    const char c = s[i];
    if (c == '.' || c == '!' || c == '?') return 1;
    if (static_cast<unsigned char>(c) < 0x80) return 0;
    for (std::string_view mark : {"\u2026", "\u3002", "\uFF01", "\uFF1F"})
      if (s.compare(i, mark.size(), mark) == 0) return mark.size();
    return 0;
  };
  auto closing_length = [&](size_t i) -> size_t {
    const char c = s[i];
    if (c == '"' || c == '\'' || c == ')' || c == ']') return 1;
    if (static_cast<unsigned char>(c) < 0x80) return 0;
    for (std::string_view mark : {"\u201D", "\u2019"})
      if (s.compare(i, mark.size(), mark) == 0) return mark.size();
    return 0;
  };
  int64_t count = 0;
  bool in_sentence = false;
  size_t i = 0;
  while (i < s.size() && count < enough) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t mark = end_mark_length(i);
    if (mark == 0) {
      if (is_ascii_alnum(c) || c >= 0x80) in_sentence = true;
      i += c < 0x80 ? 1 : sequence_length(c, s.size() - i);
      continue;
    }
    while (i < s.size() && (mark = end_mark_length(i)) > 0) i += mark;
    while (i < s.size() && (mark = closing_length(i)) > 0) i += mark;
    const bool at_break = i == s.size() || is_ascii_space(static_cast<unsigned char>(s[i]));
    if (at_break && in_sentence) {
      ++count;
      in_sentence = false;
    }
  }
  if (in_sentence && count < enough) ++count;
  return count;
}

// ---------------------------------------------------------------------------------------------
// pii

enum class PiiKind { kEmail, kIp, kPhone };
struct PiiSpan {
  size_t begin, end;
  PiiKind kind;
};

bool is_email_local_char(unsigned char c) {
  return is_ascii_alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}
bool is_domain_char(unsigned char c) {
  return is_ascii_alnum(c) || c == '.' || c == '-';
}

// The e-mail address around the '@' at `at`, not reaching before `floor`; {0, 0} when none.
std::pair<size_t, size_t> email_around(std::string_view s, size_t at, size_t floor) {
  size_t begin = at;
  while (begin > floor && is_email_local_char(static_cast<unsigned char>(s[begin - 1]))) --begin;
  while (begin < at && s[begin] == '.') ++begin;
  if (begin == at) return {0, 0};
  size_t end = at + 1;
  while (end < s.size() && is_domain_char(static_cast<unsigned char>(s[end]))) ++end;
  while (end > at + 1 && (s[end - 1] == '.' || s[end - 1] == '-')) --end;
  const std::string_view domain = s.substr(at + 1, end - at - 1);
  const size_t last_dot = domain.rfind('.');
  if (domain.empty() || last_dot == kNpos || domain[0] == '.' || domain[0] == '-' ||
      domain.find("..") != kNpos)
    return {0, 0};
  const std::string_view tld = domain.substr(last_dot + 1);
  if (tld.size() < 2 || !std::all_of(tld.begin(), tld.end(), [](char c) {
        return is_ascii_alpha(static_cast<unsigned char>(c));
      }))
    return {0, 0};
  return {begin, end};
}

bool alnum_at(std::string_view s, size_t i) {
  return i < s.size() && is_ascii_alnum(static_cast<unsigned char>(s[i]));
}
bool digit_at(std::string_view s, size_t i) {
  return i < s.size() && is_digit(static_cast<unsigned char>(s[i]));
}

// Reads up to `most` digits from s[i]; returns how many (0 when more follow than `most`).
size_t read_digits(std::string_view s, size_t i, size_t most, int* value = nullptr) {
  size_t n = 0;
  int v = 0;
  while (digit_at(s, i + n)) {
    if (++n > most) return 0;
    v = v * 10 + (s[i + n - 1] - '0');
  }
  if (value) *value = v;
  return n;
}

// An IPv4 address a.b.c.d (each <= 255) starting at i: its end, or kNpos.
size_t ipv4_at(std::string_view s, size_t i) {
  size_t p = i;
  for (int part = 0; part < 4; ++part) {
    int value = 0;
    const size_t n = read_digits(s, p, 3, &value);
    if (n == 0 || value > 255) return kNpos;
    p += n;
    if (part < 3) {
      if (p >= s.size() || s[p] != '.') return kNpos;
      ++p;
    }
  }
  if (alnum_at(s, p) || (p < s.size() && s[p] == '.' && digit_at(s, p + 1))) return kNpos;
  return p;
}

// An IPv6 address starting at i: eight groups of 1-4 hex digits, or fewer around one "::" (at
// least two groups); with a decimal digit somewhere, so that "add::bee" is not one.
size_t ipv6_at(std::string_view s, size_t i) {
  size_t end = i;
  while (end < s.size() && end - i <= 40 &&
         (is_hex(static_cast<unsigned char>(s[end])) || s[end] == ':'))
    ++end;
  if (alnum_at(s, end) || (end < s.size() && s[end] == '.')) return kNpos;
  if (end - i >= 2 && s[end - 1] == ':' && s[end - 2] != ':') --end;  // "at fe80::1:"
  const std::string_view a = s.substr(i, end - i);
  const size_t compressed = a.find("::");
  if (compressed != kNpos && a.find("::", compressed + 1) != kNpos) return kNpos;
  if (a.find(":::") != kNpos) return kNpos;
  int groups = 0, group_length = 0;
  bool digit = false;
  for (char c : a) {
    if (c == ':') {
      group_length = 0;
      continue;
    }
    digit = digit || is_digit(static_cast<unsigned char>(c));
    if (group_length++ == 0) ++groups;
    if (group_length > 4) return kNpos;
  }
  const bool complete = compressed == kNpos && groups == 8 && a.front() != ':' && a.back() != ':';
  const bool short_form = compressed != kNpos && groups >= 2 && groups <= 7;
  return digit && (complete || short_form) ? end : kNpos;
}

bool is_phone_separator(char c) {
  return c == ' ' || c == '-' || c == '.';
}

// +CC...: '+', then digit groups with single separators between them, 8-15 digits in all.
size_t international_phone_at(std::string_view s, size_t i) {
  size_t p = i + 1, digits = 0;
  if (!digit_at(s, p)) return kNpos;
  while (true) {
    while (digit_at(s, p)) ++p, ++digits;
    if (p + 1 < s.size() && is_phone_separator(s[p]) && digit_at(s, p + 1)) {
      ++p;
    } else if (p + 2 < s.size() && s[p] == ' ' && s[p + 1] == '(' && digit_at(s, p + 2)) {
      p += 2;  // +44 (0)20 ...
    } else if (p + 1 < s.size() && s[p] == ')' && (digit_at(s, p + 1) || s[p + 1] == ' ')) {
      ++p;
      if (s[p] == ' ') ++p;
      if (!digit_at(s, p)) return kNpos;
    } else {
      break;
    }
  }
  if (digits < 8 || digits > 15 || alnum_at(s, p)) return kNpos;
  return p;
}

// North-American numbers: (NXX) NXX-XXXX, NXX-NXX-XXXX, NXX.NXX.XXXX, NXX NXX XXXX (N: 2-9),
// optionally after "1" and a separator.
size_t nanp_core_at(std::string_view s, size_t p) {
  auto three = [&](size_t at) {
    return read_digits(s, at, 3) == 3 && s[at] >= '2' && s[at] <= '9';
  };
  if (p < s.size() && s[p] == '(') {
    if (!three(p + 1) || p + 4 >= s.size() || s[p + 4] != ')') return kNpos;
    p += 5;
    if (p < s.size() && s[p] == ' ') ++p;
  } else {
    if (!three(p) || p + 3 >= s.size() || !is_phone_separator(s[p + 3])) return kNpos;
    p += 4;
  }
  if (!three(p) || p + 3 >= s.size() || !is_phone_separator(s[p + 3])) return kNpos;
  p += 4;
  if (read_digits(s, p, 4) != 4) return kNpos;
  p += 4;
  if (alnum_at(s, p) || (p + 1 < s.size() && (s[p] == '-' || s[p] == '.') && digit_at(s, p + 1)))
    return kNpos;
  return p;
}

size_t nanp_phone_at(std::string_view s, size_t i) {
  if (s[i] == '1' && i + 2 < s.size() && is_phone_separator(s[i + 1])) {
    const size_t end = nanp_core_at(s, i + 2);
    if (end != kNpos) return end;
  }
  return nanp_core_at(s, i);
}

// ---------------------------------------------------------------------------------------------
// config

const nlohmann::json& empty_object() {
  static const nlohmann::json object = nlohmann::json::object();
  return object;
}

// The settings of step `key`: nullptr when it is off (false or absent).
const nlohmann::json* step_settings(ConfigReader& r, const std::string& key) {
  if (!r.has(key)) return nullptr;
  const nlohmann::json& value = r.raw(key);
  if (value.is_boolean()) return value.get<bool>() ? &empty_object() : nullptr;
  if (value.is_object()) return &value;
  r.require(false, key, "expected true, false or an object of settings");
  return nullptr;
}

std::vector<std::string> string_list(ConfigReader& r, const std::string& key,
                                     const std::vector<std::string>& fallback) {
  if (!r.has(key)) return fallback;
  const nlohmann::json& value = r.raw(key);
  std::vector<std::string> out;
  if (value.is_array() && std::all_of(value.begin(), value.end(),
                                      [](const nlohmann::json& v) { return v.is_string(); })) {
    for (const auto& item : value) out.push_back(item.get<std::string>());
    return out;
  }
  r.require(false, key, "expected a list of strings");
  return fallback;
}

std::string lowercase(std::string s) {
  for (char& c : s) c = ascii_lower(c);
  return s;
}

// A fraction setting, read and checked to lie in [0, 1].
double read_fraction(ConfigReader& r, const std::string& key, double fallback) {
  const double value = r.number(key, fallback);
  r.require(value >= 0 && value <= 1, key, "must be in [0, 1], got " + format_number(value));
  return value;
}

// {"n": fraction, ...}: a whole map replaces the default one.
std::map<int, double> ngram_fractions(ConfigReader& r, ConfigErrors& errors, const std::string& key,
                                      const std::map<int, double>& fallback) {
  if (!r.has(key)) return fallback;
  const nlohmann::json& value = r.raw(key);
  if (!value.is_object()) {
    r.require(false, key, "expected an object {\"n\": fraction}, e.g. {\"2\": 0.2}");
    return fallback;
  }
  std::map<int, double> out;
  for (const auto& [name, fraction] : value.items()) {
    const std::string path = r.path_of(key) + "." + name;
    int n = 0;
    const bool number = !name.empty() && name.size() <= 3 &&
                        std::all_of(name.begin(), name.end(),
                                    [](char c) { return is_digit(static_cast<unsigned char>(c)); });
    if (number) n = std::stoi(name);
    if (!number || n < 1 || n > 100) {
      errors.add(path, "the key must be an n-gram size from 1 to 100");
      continue;
    }
    if (!fraction.is_number() || fraction.get<double>() < 0 || fraction.get<double>() > 1) {
      errors.add(path, "expected a fraction in [0, 1]");
      continue;
    }
    out[n] = fraction.get<double>();
  }
  return out;
}

nlohmann::json ngram_values(const std::map<int, double>& fractions) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [n, fraction] : fractions) out[std::to_string(n)] = fraction;
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The steps

std::string normalize_text(std::string_view text, const NormalizeOptions& o) {
  std::string composed;
  std::string_view source = text;
  if (o.nfc && !all_ascii(text)) {
    check(text.size() <= static_cast<size_t>(std::numeric_limits<int32_t>::max()),
          "normalize: a document of " + std::to_string(text.size()) +
              " bytes is longer than ICU takes (2 GiB)");
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
    check(U_SUCCESS(status),
          std::string("normalize: ICU's NFC is unavailable: ") + u_errorName(status));
    const icu::StringPiece piece(text.data(), static_cast<int32_t>(text.size()));
    const bool normalized = nfc->isNormalizedUTF8(piece, status);
    if (U_SUCCESS(status) && !normalized) {
      icu::StringByteSink<std::string> sink(&composed, static_cast<int32_t>(text.size()));
      nfc->normalizeUTF8(0, piece, sink, nullptr, status);
      source = composed;
    }
    check(U_SUCCESS(status), std::string("normalize: NFC failed: ") + u_errorName(status));
  }
  if (!o.control_chars && !o.whitespace) return std::string(source);
  return clean_characters(source, o.control_chars, o.whitespace);
}

std::string remove_boilerplate_lines(std::string_view text, const BoilerplateOptions& o,
                                     int64_t& lines_removed) {
  thread_local std::string lower;
  lower.assign(text.data(), text.size());
  for (char& c : lower) c = ascii_lower(c);
  std::string out;
  out.reserve(text.size());
  bool blank_pending = false;
  for_each_line(text, [&](std::string_view line) {
    const size_t begin = static_cast<size_t>(line.data() - text.data());
    const std::string_view lower_line(lower.data() + begin, line.size());
    if (trim_spaces(line).empty()) {
      blank_pending = !out.empty();
    } else if (is_boilerplate_line(line, lower_line, o)) {
      ++lines_removed;
    } else {
      if (!out.empty()) out += blank_pending ? "\n\n" : "\n";
      blank_pending = false;
      out.append(line);
    }
  });
  return out;
}

std::string gopher_quality_rejection(std::string_view text, const GopherQualityOptions& o) {
  int64_t words = 0, word_chars = 0, alpha_words = 0, stop_words = 0;
  for_each_word(text, [&](std::string_view word) {
    bool alpha = false, not_symbol = false;
    int64_t length = 0;
    for (size_t i = 0; i < word.size();) {
      const auto c = static_cast<unsigned char>(word[i]);
      size_t len = 1;
      if (c < 0x80) {
        alpha = alpha || is_ascii_alpha(c);
        not_symbol = not_symbol || !is_ascii_punct(c);
      } else {
        const UChar32 cp = decode(word, i, len);
        alpha = alpha || u_isalpha(cp);
        not_symbol = not_symbol || !is_symbol_code_point(cp);
      }
      ++length;
      i += len;
    }
    if (not_symbol) {
      ++words;
      word_chars += length;
    }
    alpha_words += alpha;
    stop_words += is_stop_word(word, o.stop_words);
  });
  if (words < o.min_words || words == 0)
    return "word_count " + std::to_string(words) + " < " + std::to_string(o.min_words);
  if (words > o.max_words)
    return "word_count " + std::to_string(words) + " > " + std::to_string(o.max_words);
  const double n = static_cast<double>(words);
  const double mean_length = static_cast<double>(word_chars) / n;
  if (mean_length < o.min_mean_word_length)
    return "mean_word_length " + format_number(mean_length) + " < " +
           format_number(o.min_mean_word_length);
  if (mean_length > o.max_mean_word_length)
    return "mean_word_length " + format_number(mean_length) + " > " +
           format_number(o.max_mean_word_length);
  const double hashes = static_cast<double>(count_of(text, "#")) / n;
  if (hashes > o.max_symbol_word_ratio)
    return "hash_word_ratio " + format_number(hashes) + " > " +
           format_number(o.max_symbol_word_ratio);
  const double ellipses = static_cast<double>(count_of(text, "...") + count_of(text, "\u2026")) / n;
  if (ellipses > o.max_symbol_word_ratio)
    return "ellipsis_word_ratio " + format_number(ellipses) + " > " +
           format_number(o.max_symbol_word_ratio);
  int64_t lines = 0, bullet_lines = 0, ellipsis_lines = 0;
  for_each_line(text, [&](std::string_view line) {
    ++lines;
    bullet_lines += is_bullet_line(line);
    const std::string_view trimmed = trim_spaces(line);
    ellipsis_lines += ends_with(trimmed, "...") || ends_with(trimmed, "\u2026");
  });
  const double lines_n = static_cast<double>(std::max<int64_t>(lines, 1));
  const double bullets = static_cast<double>(bullet_lines) / lines_n;
  if (bullets > o.max_bullet_lines_ratio)
    return "bullet_lines_ratio " + format_number(bullets) + " > " +
           format_number(o.max_bullet_lines_ratio);
  const double ellipsis_ends = static_cast<double>(ellipsis_lines) / lines_n;
  if (ellipsis_ends > o.max_ellipsis_lines_ratio)
    return "ellipsis_lines_ratio " + format_number(ellipsis_ends) + " > " +
           format_number(o.max_ellipsis_lines_ratio);
  const double alpha = static_cast<double>(alpha_words) / n;
  if (alpha < o.min_alpha_words_ratio)
    return "alpha_words_ratio " + format_number(alpha) + " < " +
           format_number(o.min_alpha_words_ratio);
  if (stop_words < o.min_stop_words)
    return "stop_words " + std::to_string(stop_words) + " < " + std::to_string(o.min_stop_words);
  return "";
}

std::string gopher_repetition_rejection(std::string_view text, const GopherRepetitionOptions& o) {
  const int64_t total = code_points(text);
  if (total == 0) return "";
  const double chars = static_cast<double>(total);
  thread_local RepetitionScratch scratch;
  RepetitionScratch& t = scratch;
  auto fraction_rule = [](const char* name, double value, double limit) {
    return value > limit ? name + (" " + format_number(value)) + " > " + format_number(limit)
                         : std::string();
  };
  auto gram_rule = [](const char* kind, size_t n, double value, double limit) {
    return value > limit ? kind + std::to_string(n) + "_gram_char_frac " + format_number(value) +
                               " > " + format_number(limit)
                         : std::string();
  };
  std::string why;

  // Paragraphs: the stripped text split on runs of two or more newlines.
  const size_t most_lines = static_cast<size_t>(std::count(text.begin(), text.end(), '\n')) + 1;
  const std::string_view stripped = trim_spaces(text);
  const Duplicates paragraphs = find_duplicates(t.set, most_lines, [&](auto&& f) {
    size_t pos = 0;
    while (pos <= stripped.size()) {
      size_t end = stripped.find("\n\n", pos);
      if (end == kNpos) end = stripped.size();
      f(stripped.substr(pos, end - pos));
      while (end < stripped.size() && stripped[end] == '\n') ++end;
      pos = end == stripped.size() ? stripped.size() + 1 : end;
    }
  });
  const double n_paragraphs = static_cast<double>(std::max<int64_t>(paragraphs.pieces, 1));
  why = fraction_rule("dup_para_frac", static_cast<double>(paragraphs.count) / n_paragraphs,
                      o.max_dup_para_frac);
  if (why.empty())
    why = fraction_rule("dup_para_char_frac", static_cast<double>(paragraphs.chars) / chars,
                        o.max_dup_para_char_frac);
  if (!why.empty()) return why;

  // Lines: split on runs of newlines (blank lines are not lines).
  const Duplicates lines = find_duplicates(t.set, most_lines, [&](auto&& f) {
    for_each_line(text, [&](std::string_view line) {
      if (!line.empty()) f(line);
    });
  });
  const double n_lines = static_cast<double>(std::max<int64_t>(lines.pieces, 1));
  why = fraction_rule("dup_line_frac", static_cast<double>(lines.count) / n_lines,
                      o.max_dup_line_frac);
  if (why.empty())
    why = fraction_rule("dup_line_char_frac", static_cast<double>(lines.chars) / chars,
                        o.max_dup_line_char_frac);
  if (!why.empty()) return why;

  // n-grams of words, each an n-gram's hash grown from the (n-1)-gram's at the same start.
  t.words.clear();
  for_each_word(text, [&](std::string_view word) { t.words.push_back(word); });
  const size_t w = t.words.size();
  t.word_hashes.resize(w);
  t.prefix_chars.assign(w + 1, 0);
  for (size_t i = 0; i < w; ++i) {
    t.word_hashes[i] = hash_of(t.words[i]);
    t.prefix_chars[i + 1] = t.prefix_chars[i] + code_points(t.words[i]);
  }
  auto gram_chars = [&](size_t i, size_t n) {
    return t.prefix_chars[i + n] - t.prefix_chars[i] + static_cast<int64_t>(n) - 1;
  };
  int largest = 0;
  if (!o.max_top_ngram_char_frac.empty())
    largest = std::max(largest, o.max_top_ngram_char_frac.rbegin()->first);
  if (!o.max_dup_ngram_char_frac.empty())
    largest = std::max(largest, o.max_dup_ngram_char_frac.rbegin()->first);
  t.gram_hashes.assign(w, 0);
  for (size_t n = 1; n <= static_cast<size_t>(largest) && n <= w; ++n) {
    const size_t grams = w - n + 1;
    for (size_t i = 0; i < grams; ++i)
      t.gram_hashes[i] = combine(t.gram_hashes[i], t.word_hashes[i + n - 1]);
    if (auto top = o.max_top_ngram_char_frac.find(static_cast<int>(n));
        top != o.max_top_ngram_char_frac.end()) {
      t.counter.reset(grams);
      for (size_t i = 0; i < grams; ++i) t.counter.add(t.gram_hashes[i], static_cast<uint32_t>(i));
      const uint32_t best_count = t.counter.top_count, best_first = t.counter.top_first;
      const double top_chars =
          static_cast<double>(best_count) * static_cast<double>(gram_chars(best_first, n));
      why = gram_rule("top_", n, top_chars / chars, top->second);
      if (!why.empty()) return why;
    }
    if (auto dup = o.max_dup_ngram_char_frac.find(static_cast<int>(n));
        dup != o.max_dup_ngram_char_frac.end()) {
      // Repeated n-grams, each repeat's characters counted once: after a repeat the scan jumps
      // past it (datatrove's find_all_duplicate).
      t.set.reset(grams);
      int64_t repeated = 0;
      for (size_t i = 0; i < grams;) {
        if (t.set.contains(t.gram_hashes[i])) {
          repeated += gram_chars(i, n);
          i += n;
        } else {
          t.set.insert(t.gram_hashes[i]);
          ++i;
        }
      }
      why = gram_rule("dup_", n, static_cast<double>(repeated) / chars, dup->second);
      if (!why.empty()) return why;
    }
  }
  return "";
}

std::string c4_rejection(std::string_view text, const C4Options& o) {
  if (o.drop_lorem_ipsum && contains_ignoring_case(text, "lorem ipsum")) return "lorem_ipsum";
  if (o.drop_curly_bracket && text.find('{') != kNpos) return "curly_bracket";
  if (o.min_sentences > 0) {
    const int64_t sentences = count_sentences(text, o.min_sentences);
    if (sentences < o.min_sentences)
      return "sentences " + std::to_string(sentences) + " < " + std::to_string(o.min_sentences);
  }
  return "";
}

std::string redact_pii(std::string_view s, const PiiOptions& o, PiiCounts& counts) {
  std::vector<PiiSpan> spans;
  size_t floor = 0;
  if (o.email) {
    for (size_t at = s.find('@'); at != kNpos; at = s.find('@', at + 1)) {
      const auto [begin, end] = email_around(s, at, floor);
      if (begin == end) continue;
      spans.push_back({begin, end, PiiKind::kEmail});
      floor = end;
      at = end - 1;
    }
  }
  if (o.ip || o.phone) {
    const size_t emails = spans.size();
    size_t next_email = 0;
    for (size_t i = 0; i < s.size();) {
      if (next_email < emails && i >= spans[next_email].begin) {
        i = spans[next_email++].end;
        continue;
      }
      const auto c = static_cast<unsigned char>(s[i]);
      const unsigned char prev = i == 0 ? ' ' : static_cast<unsigned char>(s[i - 1]);
      const bool word_start = !is_ascii_alnum(prev) && prev != '.' && prev != '_';
      size_t end = kNpos;
      PiiKind kind = PiiKind::kIp;
      if (word_start && prev != ':' && o.ip && (is_hex(c) || c == ':')) {
        if (is_digit(c)) end = ipv4_at(s, i);
        if (end == kNpos) end = ipv6_at(s, i);
      }
      if (end == kNpos && word_start && o.phone && prev != '-' && prev != '+') {
        kind = PiiKind::kPhone;
        if (c == '+')
          end = international_phone_at(s, i);
        else if (is_digit(c) || c == '(')
          end = nanp_phone_at(s, i);
      }
      if (end != kNpos && end <= (next_email < emails ? spans[next_email].begin : s.size())) {
        spans.push_back({i, end, kind});
        i = end;
      } else {
        ++i;
      }
    }
    std::sort(spans.begin(), spans.end(),
              [](const PiiSpan& a, const PiiSpan& b) { return a.begin < b.begin; });
  }
  if (spans.empty()) return std::string(s);
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  for (const PiiSpan& span : spans) {
    out.append(s.data() + pos, span.begin - pos);
    switch (span.kind) {
      case PiiKind::kEmail:
        out += o.email_token, ++counts.emails;
        break;
      case PiiKind::kIp:
        out += o.ip_token, ++counts.ips;
        break;
      case PiiKind::kPhone:
        out += o.phone_token, ++counts.phones;
        break;
    }
    pos = span.end;
  }
  out.append(s.data() + pos, s.size() - pos);
  return out;
}

std::vector<std::string> text_step_names(const TextSteps& steps) {
  std::vector<std::string> names;
  if (steps.normalize) names.push_back("normalize");
  if (steps.boilerplate) names.push_back("boilerplate");
  if (steps.c4) names.push_back("c4");
  if (steps.gopher_quality) names.push_back("gopher_quality");
  if (steps.gopher_repetition) names.push_back("gopher_repetition");
  if (steps.pii) names.push_back("pii");
  return names;
}

TextOutcome apply_text_steps(std::string text, const TextSteps& steps) {
  TextOutcome out;
  auto remove = [&](const char* step, std::string reason) {
    out.removed_by = step;
    out.reason = std::move(reason);
    out.text.clear();
    return out;
  };
  if (steps.normalize) {
    std::string normalized = normalize_text(text, *steps.normalize);
    out.normalized_changed = normalized != text;
    text = std::move(normalized);
    if (trim_spaces(text).empty()) return remove("normalize", "empty");
  }
  if (steps.boilerplate) {
    text = remove_boilerplate_lines(text, *steps.boilerplate, out.lines_removed);
    if (text.empty())
      return remove("boilerplate",
                    "no line left (" + std::to_string(out.lines_removed) + " removed)");
  }
  if (steps.c4) {
    std::string why = c4_rejection(text, *steps.c4);
    if (!why.empty()) return remove("c4", std::move(why));
  }
  if (steps.gopher_quality) {
    std::string why = gopher_quality_rejection(text, *steps.gopher_quality);
    if (!why.empty()) return remove("gopher_quality", std::move(why));
  }
  if (steps.gopher_repetition) {
    std::string why = gopher_repetition_rejection(text, *steps.gopher_repetition);
    if (!why.empty()) return remove("gopher_repetition", std::move(why));
  }
  if (steps.pii) {
    PiiCounts counts;
    text = redact_pii(text, *steps.pii, counts);
    out.emails = counts.emails;
    out.ips = counts.ips;
    out.phones = counts.phones;
  }
  out.text = std::move(text);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Config

TextSteps read_text_steps(ConfigReader& r, ConfigErrors& errors) {
  TextSteps steps;
  if (const nlohmann::json* settings = step_settings(r, "normalize")) {
    ConfigReader s(*settings, r.path_of("normalize"), errors);
    NormalizeOptions o;
    o.nfc = s.boolean("nfc", o.nfc);
    o.control_chars = s.boolean("control_chars", o.control_chars);
    o.whitespace = s.boolean("whitespace", o.whitespace);
    steps.normalize = o;
  }
  if (const nlohmann::json* settings = step_settings(r, "boilerplate")) {
    ConfigReader s(*settings, r.path_of("boilerplate"), errors);
    BoilerplateOptions o;
    o.patterns = string_list(s, "patterns", o.patterns);
    for (std::string& pattern : o.patterns) pattern = lowercase(pattern);
    for (const std::string& pattern : o.patterns)
      s.require(!pattern.empty(), "patterns", "an empty pattern would drop every line");
    o.min_words_per_line = s.integer("min_words_per_line", o.min_words_per_line);
    s.require(o.min_words_per_line >= 0, "min_words_per_line", "must be >= 0");
    o.require_terminal_punctuation =
        s.boolean("require_terminal_punctuation", o.require_terminal_punctuation);
    o.drop_curly_bracket_lines = s.boolean("drop_curly_bracket_lines", o.drop_curly_bracket_lines);
    steps.boilerplate = o;
  }
  if (const nlohmann::json* settings = step_settings(r, "c4")) {
    ConfigReader s(*settings, r.path_of("c4"), errors);
    C4Options o;
    o.min_sentences = s.integer("min_sentences", o.min_sentences);
    s.require(o.min_sentences >= 0, "min_sentences", "must be >= 0");
    o.drop_lorem_ipsum = s.boolean("drop_lorem_ipsum", o.drop_lorem_ipsum);
    o.drop_curly_bracket = s.boolean("drop_curly_bracket", o.drop_curly_bracket);
    steps.c4 = o;
  }
  if (const nlohmann::json* settings = step_settings(r, "gopher_quality")) {
    ConfigReader s(*settings, r.path_of("gopher_quality"), errors);
    GopherQualityOptions o;
    o.min_words = s.integer("min_words", o.min_words);
    o.max_words = s.integer("max_words", o.max_words);
    s.require(o.min_words >= 0, "min_words", "must be >= 0");
    s.require(o.max_words >= o.min_words, "max_words", "must be >= min_words");
    o.min_mean_word_length = s.number("min_mean_word_length", o.min_mean_word_length);
    o.max_mean_word_length = s.number("max_mean_word_length", o.max_mean_word_length);
    s.require(o.min_mean_word_length >= 0, "min_mean_word_length", "must be >= 0");
    s.require(o.max_mean_word_length >= o.min_mean_word_length, "max_mean_word_length",
              "must be >= min_mean_word_length");
    o.max_symbol_word_ratio = s.number("max_symbol_word_ratio", o.max_symbol_word_ratio);
    s.require(o.max_symbol_word_ratio >= 0, "max_symbol_word_ratio", "must be >= 0");
    o.max_bullet_lines_ratio = read_fraction(s, "max_bullet_lines_ratio", o.max_bullet_lines_ratio);
    o.max_ellipsis_lines_ratio =
        read_fraction(s, "max_ellipsis_lines_ratio", o.max_ellipsis_lines_ratio);
    o.min_alpha_words_ratio = read_fraction(s, "min_alpha_words_ratio", o.min_alpha_words_ratio);
    o.min_stop_words = s.integer("min_stop_words", o.min_stop_words);
    s.require(o.min_stop_words >= 0, "min_stop_words", "must be >= 0");
    o.stop_words = string_list(s, "stop_words", o.stop_words);
    for (std::string& word : o.stop_words) word = lowercase(word);
    steps.gopher_quality = o;
  }
  if (const nlohmann::json* settings = step_settings(r, "gopher_repetition")) {
    ConfigReader s(*settings, r.path_of("gopher_repetition"), errors);
    GopherRepetitionOptions o;
    o.max_dup_line_frac = read_fraction(s, "max_dup_line_frac", o.max_dup_line_frac);
    o.max_dup_para_frac = read_fraction(s, "max_dup_para_frac", o.max_dup_para_frac);
    o.max_dup_line_char_frac = read_fraction(s, "max_dup_line_char_frac", o.max_dup_line_char_frac);
    o.max_dup_para_char_frac = read_fraction(s, "max_dup_para_char_frac", o.max_dup_para_char_frac);
    o.max_top_ngram_char_frac =
        ngram_fractions(s, errors, "max_top_ngram_char_frac", o.max_top_ngram_char_frac);
    o.max_dup_ngram_char_frac =
        ngram_fractions(s, errors, "max_dup_ngram_char_frac", o.max_dup_ngram_char_frac);
    steps.gopher_repetition = o;
  }
  if (const nlohmann::json* settings = step_settings(r, "pii")) {
    ConfigReader s(*settings, r.path_of("pii"), errors);
    PiiOptions o;
    o.email = s.boolean("email", o.email);
    o.ip = s.boolean("ip", o.ip);
    o.phone = s.boolean("phone", o.phone);
    o.email_token = s.string("email_token", o.email_token);
    o.ip_token = s.string("ip_token", o.ip_token);
    o.phone_token = s.string("phone_token", o.phone_token);
    steps.pii = o;
  }
  return steps;
}

nlohmann::json text_steps_values(const TextSteps& steps) {
  nlohmann::json v = nlohmann::json::object();
  v["normalize"] = false;
  if (const auto& o = steps.normalize)
    v["normalize"] = {
        {"nfc", o->nfc}, {"control_chars", o->control_chars}, {"whitespace", o->whitespace}};
  v["boilerplate"] = false;
  if (const auto& o = steps.boilerplate)
    v["boilerplate"] = {{"patterns", o->patterns},
                        {"min_words_per_line", o->min_words_per_line},
                        {"require_terminal_punctuation", o->require_terminal_punctuation},
                        {"drop_curly_bracket_lines", o->drop_curly_bracket_lines}};
  v["c4"] = false;
  if (const auto& o = steps.c4)
    v["c4"] = {{"min_sentences", o->min_sentences},
               {"drop_lorem_ipsum", o->drop_lorem_ipsum},
               {"drop_curly_bracket", o->drop_curly_bracket}};
  v["gopher_quality"] = false;
  if (const auto& o = steps.gopher_quality)
    v["gopher_quality"] = {{"min_words", o->min_words},
                           {"max_words", o->max_words},
                           {"min_mean_word_length", o->min_mean_word_length},
                           {"max_mean_word_length", o->max_mean_word_length},
                           {"max_symbol_word_ratio", o->max_symbol_word_ratio},
                           {"max_bullet_lines_ratio", o->max_bullet_lines_ratio},
                           {"max_ellipsis_lines_ratio", o->max_ellipsis_lines_ratio},
                           {"min_alpha_words_ratio", o->min_alpha_words_ratio},
                           {"min_stop_words", o->min_stop_words},
                           {"stop_words", o->stop_words}};
  v["gopher_repetition"] = false;
  if (const auto& o = steps.gopher_repetition)
    v["gopher_repetition"] = {
        {"max_dup_line_frac", o->max_dup_line_frac},
        {"max_dup_para_frac", o->max_dup_para_frac},
        {"max_dup_line_char_frac", o->max_dup_line_char_frac},
        {"max_dup_para_char_frac", o->max_dup_para_char_frac},
        {"max_top_ngram_char_frac", ngram_values(o->max_top_ngram_char_frac)},
        {"max_dup_ngram_char_frac", ngram_values(o->max_dup_ngram_char_frac)}};
  v["pii"] = false;
  if (const auto& o = steps.pii)
    v["pii"] = {{"email", o->email},       {"ip", o->ip},
                {"phone", o->phone},       {"email_token", o->email_token},
                {"ip_token", o->ip_token}, {"phone_token", o->phone_token}};
  return v;
}

}  // namespace tiller
