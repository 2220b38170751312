#include "rlhf/math_answer.h"

#include <algorithm>
#include <cctype>
#include <charconv>  // std::from_chars: parses "1.5" the same under any locale
#include <cmath>
#include <vector>

namespace tiller {

namespace {

constexpr size_t kNone = std::string::npos;
const std::string kUnicodeMinus = "\xE2\x88\x92";  // U+2212, as LaTeX-to-Unicode output writes it
// \frac nested deeper than this is no answer anyone writes; the bound keeps the recursion shallow.
constexpr int kMaxFractionDepth = 4;

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_space(char c) {
  return std::isspace(static_cast<unsigned char>(c)) != 0;
}

std::string trim(const std::string& s) {
  const size_t first = s.find_first_not_of(" \t\r\n\f\v");
  if (first == kNone) return "";
  return s.substr(first, s.find_last_not_of(" \t\r\n\f\v") - first + 1);
}

// Linear in the length of s, whatever it holds.
void replace_all(std::string& s, const std::string& from, const std::string& to) {
  std::string out;
  size_t start = 0;
  for (size_t at = s.find(from); at != kNone; at = s.find(from, start)) {
    out.append(s, start, at - start);
    out += to;
    start = at + from.size();
  }
  out.append(s, start, kNone);
  s = std::move(out);
}

// The position just past the brace that closes the one at `open`; kNone when unbalanced.
size_t closing_brace(const std::string& s, size_t open) {
  int depth = 0;
  for (size_t i = open; i < s.size(); ++i) {
    if (s[i] == '{') {
      ++depth;
    } else if (s[i] == '}' && --depth == 0) {
      return i + 1;
    }
  }
  return kNone;
}

// ---------------------------------------------------------------------------------------------
// Numbers as written in text: "1,234.5", ".5", "1e3", "3/4".

struct ScannedNumber {
  size_t end = 0;  // the position after the number
  double value = 0;
};

size_t append_digits(const std::string& s, size_t pos, std::string& out) {
  while (pos < s.size() && is_digit(s[pos])) out += s[pos++];
  return pos;
}

// Whether a thousands group (",ddd", no fourth digit) starts at pos.
bool thousands_group_at(const std::string& s, size_t pos) {
  if (pos + 3 >= s.size() || s[pos] != ',') return false;
  const bool three = is_digit(s[pos + 1]) && is_digit(s[pos + 2]) && is_digit(s[pos + 3]);
  return three && (pos + 4 == s.size() || !is_digit(s[pos + 4]));
}

// Appends an exponent ("e-3") at pos, if one is there; returns the position after it.
size_t append_exponent(const std::string& s, size_t pos, std::string& out) {
  if (pos >= s.size() || (s[pos] != 'e' && s[pos] != 'E')) return pos;
  size_t digits = pos + 1;
  if (digits < s.size() && (s[digits] == '+' || s[digits] == '-')) ++digits;
  if (digits >= s.size() || !is_digit(s[digits])) return pos;  // "3 eggs": a word, not 3e..
  out += 'e';
  out.append(s, pos + 1, digits - pos - 1);
  return append_digits(s, digits, out);
}

// An unsigned decimal starting at pos, or nullopt when none starts there. Out of double's range,
// its value is NaN.
std::optional<ScannedNumber> scan_decimal(const std::string& s, size_t pos) {
  std::string clean = "0";  // from_chars wants a digit before the point (".5")
  size_t end = append_digits(s, pos, clean);
  if (end > pos && end - pos <= 3)
    while (thousands_group_at(s, end)) end = append_digits(s, end + 1, clean);
  if (end + 1 < s.size() && s[end] == '.' && is_digit(s[end + 1])) {
    clean += '.';
    end = append_digits(s, end + 1, clean);
  }
  if (end == pos) return std::nullopt;
  end = append_exponent(s, end, clean);
  ScannedNumber number{end, 0.0};
  const auto parsed = std::from_chars(clean.data(), clean.data() + clean.size(), number.value);
  if (parsed.ec != std::errc()) number.value = std::nan("");
  return number;
}

// A decimal, or a fraction of two ("3/4"), starting at pos.
std::optional<ScannedNumber> scan_number(const std::string& s, size_t pos) {
  auto number = scan_decimal(s, pos);
  if (!number || number->end >= s.size() || s[number->end] != '/') return number;
  const auto denominator = scan_decimal(s, number->end + 1);
  if (!denominator) return number;
  return ScannedNumber{denominator->end, number->value / denominator->value};
}

// ---------------------------------------------------------------------------------------------
// Extraction.

// Whether a number starts at i (and i is not inside one).
bool number_starts_at(const std::string& s, size_t i) {
  const bool starts = is_digit(s[i]) || (s[i] == '.' && i + 1 < s.size() && is_digit(s[i + 1]));
  return starts && (i == 0 || (!is_digit(s[i - 1]) && s[i - 1] != '.'));
}

// Where the number at i begins with its sign: "-5", "−5", "+5" ("5-3" is 5 and 3).
size_t with_sign(const std::string& s, size_t i) {
  if (i >= 1 && (s[i - 1] == '-' || s[i - 1] == '+') && (i == 1 || !is_digit(s[i - 2])))
    return i - 1;
  if (i >= 3 && s.compare(i - 3, 3, kUnicodeMinus) == 0) return i - 3;
  return i;
}

std::optional<std::string> last_number(const std::string& text) {
  std::optional<std::string> last;
  size_t i = 0;
  while (i < text.size()) {
    if (!number_starts_at(text, i)) {
      ++i;
      continue;
    }
    const size_t end = scan_number(text, i)->end;
    const size_t begin = with_sign(text, i);
    last = text.substr(begin, end - begin);
    i = end;
  }
  return last;
}

// The rest of the line after the last "####" (GSM8K's answer line).
std::optional<std::string> after_last_hashes(const std::string& text) {
  const size_t marker = text.rfind("####");
  if (marker == kNone) return std::nullopt;
  const size_t begin = marker + 4;
  const size_t line_end = text.find('\n', begin);
  std::string answer = trim(text.substr(begin, line_end == kNone ? kNone : line_end - begin));
  if (answer.empty()) return std::nullopt;
  return answer;
}

// The content of the last \boxed{...} or \fbox{...}; "\boxed 5" (no braces) is read to the next
// space or "$", as verl does.
std::optional<std::string> last_boxed(const std::string& text) {
  size_t command = kNone, open = kNone;
  for (const std::string name : {"\\boxed", "\\fbox"}) {
    const size_t at = text.rfind(name);
    if (at != kNone && (command == kNone || at > command)) {
      command = at;
      open = at + name.size();
    }
  }
  if (command == kNone) return std::nullopt;
  std::string content;
  if (open < text.size() && text[open] == '{') {
    const size_t close = closing_brace(text, open);
    if (close == kNone) return std::nullopt;
    content = trim(text.substr(open + 1, close - open - 2));
  } else if (open < text.size() && text[open] == ' ') {
    const size_t begin = text.find_first_not_of(' ', open);
    if (begin != kNone) content = text.substr(begin, text.find_first_of(" $\n", begin) - begin);
  }
  if (content.empty()) return std::nullopt;
  return content;
}

// ---------------------------------------------------------------------------------------------
// Parsing an answer as one number.

// The \text{-style wrapper that starts at i, if one does.
const std::string* wrapper_at(const std::string& s, size_t i) {
  static const std::string kWrappers[] = {"\\text{", "\\textbf{", "\\mathrm{", "\\mbox{"};
  for (const auto& wrapper : kWrappers)
    if (s.compare(i, wrapper.size(), wrapper) == 0) return &wrapper;
  return nullptr;
}

// Replaces \text{...}-style wrappers by their content ("5\text{ cm}" -> "5 cm"), in one pass.
void unwrap_text_commands(std::string& s) {
  std::string out;
  std::vector<bool> wrapper_braces;  // per brace open at this point: whether a wrapper opened it
  for (size_t i = 0; i < s.size(); ++i) {
    const std::string* wrapper = s[i] == '\\' ? wrapper_at(s, i) : nullptr;
    if (wrapper != nullptr) {
      wrapper_braces.push_back(true);
      i += wrapper->size() - 1;
      continue;
    }
    if (s[i] == '{') wrapper_braces.push_back(false);
    if (s[i] == '}' && !wrapper_braces.empty()) {
      const bool closes_wrapper = wrapper_braces.back();
      wrapper_braces.pop_back();
      if (closes_wrapper) continue;
    }
    out += s[i];
  }
  s = std::move(out);
}

// The answer without LaTeX spacing, dollars, degree signs, wrappers and whitespace; \dfrac and
// \tfrac written \frac.
std::string without_decorations(std::string s) {
  replace_all(s, kUnicodeMinus, "-");
  unwrap_text_commands(s);
  for (const char* noise : {"\\!", "\\,", "\\;", "\\ ", "{,}", "\\$", "$", "\\left", "\\right",
                            "^{\\circ}", "^\\circ", "\\%"})
    replace_all(s, noise, "");
  replace_all(s, "\\dfrac", "\\frac");
  replace_all(s, "\\tfrac", "\\frac");
  s.erase(std::remove_if(s.begin(), s.end(), is_space), s.end());
  return s;
}

// Whether what follows a number from pos on is a unit or words ("apples", "cm", "%", "."), not
// more of an expression ("1,2,3", "5\pi", "5-3", "2^x").
bool is_unit_suffix(const std::string& s, size_t pos) {
  if (pos < s.size() && std::string("+-*/^_,=").find(s[pos]) != kNone && pos + 1 < s.size())
    return false;
  return std::none_of(s.begin() + static_cast<std::ptrdiff_t>(pos), s.end(),
                      [](char c) { return is_digit(c) || c == '\\' || c == '^' || c == '{'; });
}

std::optional<double> parse_plain(const std::string& s, int depth);

// One argument of \frac at pos: a braced number ("{3}") or one digit ("\frac34").
std::optional<ScannedNumber> latex_argument(const std::string& s, size_t pos, int depth) {
  if (pos >= s.size()) return std::nullopt;
  if (is_digit(s[pos])) return ScannedNumber{pos + 1, static_cast<double>(s[pos] - '0')};
  if (s[pos] != '{') return std::nullopt;
  const size_t close = closing_brace(s, pos);
  if (close == kNone) return std::nullopt;
  const auto value = parse_plain(s.substr(pos + 1, close - pos - 2), depth + 1);
  if (!value) return std::nullopt;
  return ScannedNumber{close, *value};
}

// A signed number at pos: a decimal, "a/b", or \frac{a}{b}.
std::optional<ScannedNumber> scan_signed_number(const std::string& s, size_t pos, int depth) {
  double sign = 1.0;
  if (pos < s.size() && (s[pos] == '-' || s[pos] == '+')) sign = s[pos++] == '-' ? -1.0 : 1.0;
  std::optional<ScannedNumber> number;
  if (s.compare(pos, 5, "\\frac") == 0) {
    const auto numerator = latex_argument(s, pos + 5, depth);
    const auto denominator = numerator ? latex_argument(s, numerator->end, depth) : std::nullopt;
    if (denominator)
      number = ScannedNumber{denominator->end, numerator->value / denominator->value};
  } else {
    number = scan_number(s, pos);
  }
  if (number) number->value *= sign;
  return number;
}

// The value when s (decorations removed) is one number, perhaps after "x=" and before a unit.
std::optional<double> parse_plain(const std::string& s, int depth) {
  if (depth > kMaxFractionDepth) return std::nullopt;
  const size_t equals = s.rfind('=');
  const auto number = scan_signed_number(s, equals == kNone ? 0 : equals + 1, depth);
  if (!number || !std::isfinite(number->value) || !is_unit_suffix(s, number->end))
    return std::nullopt;
  return number->value;
}

// ---------------------------------------------------------------------------------------------
// Comparison.

// The final answer of a text that holds a whole solution ("... #### 72"); the text otherwise.
std::string reduced_answer(const std::string& text) {
  const bool solution =
      text.find("####") != kNone || text.find("\\boxed") != kNone || text.find("\\fbox") != kNone;
  if (!solution) return text;
  return extract_final_answer(text).value_or(text);
}

// Lower case, "$" and \text{} wrappers removed, whitespace runs as one space, no final period.
std::string normalised_text(std::string s) {
  unwrap_text_commands(s);
  replace_all(s, "$", "");
  std::string out;
  for (const char c : s) {
    if (is_space(c)) {
      if (!out.empty() && out.back() != ' ') out += ' ';
    } else {
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
  }
  while (!out.empty() && (out.back() == ' ' || out.back() == '.')) out.pop_back();
  return out;
}

bool numbers_close(double a, double b, double tolerance) {
  return std::fabs(a - b) <= tolerance * std::max({1.0, std::fabs(a), std::fabs(b)});
}

bool values_match(const std::string& a, const std::string& b, double tolerance) {
  const auto x = parse_number(a), y = parse_number(b);
  if (x && y) return numbers_close(*x, *y, tolerance);
  return normalised_text(a) == normalised_text(b);
}

// The comma-separated items of a list ("1, 2, 3"); commas inside braces or brackets stay.
std::vector<std::string> list_items(const std::string& s) {
  std::vector<std::string> items(1);
  int depth = 0;
  for (const char c : s) {
    if (c == '{' || c == '(' || c == '[') ++depth;
    if (c == '}' || c == ')' || c == ']') --depth;
    if (c == ',' && depth == 0) {
      items.emplace_back();
    } else {
      items.back() += c;
    }
  }
  return items;
}

}  // namespace

std::optional<std::string> extract_final_answer(const std::string& text) {
  if (auto answer = after_last_hashes(text)) return answer;
  if (auto answer = last_boxed(text)) return answer;
  return last_number(text);
}

std::optional<double> parse_number(std::string text) {
  return parse_plain(without_decorations(std::move(text)), 0);
}

bool answers_match(const std::string& response_answer, const std::string& reference,
                   double tolerance) {
  const std::string response = reduced_answer(response_answer);
  const std::string expected = reduced_answer(reference);
  if (values_match(response, expected, tolerance)) return true;
  const auto items = list_items(response), expected_items = list_items(expected);
  if (expected_items.size() < 2 || items.size() != expected_items.size()) return false;
  for (size_t i = 0; i < items.size(); ++i)
    if (!values_match(items[i], expected_items[i], tolerance)) return false;
  return true;
}

}  // namespace tiller
