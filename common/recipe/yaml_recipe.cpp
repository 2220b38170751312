#include "common/recipe/yaml_recipe.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/exceptions.h>
#include <yaml-cpp/mark.h>
#include <yaml-cpp/parser.h>

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <vector>

#include "common/recipe/config_reader.h"
#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

namespace {

// yaml-cpp's tags: "?" an unquoted node without a tag, "!" a quoted scalar.
const char* const kPlainTag = "?";
const char* const kQuotedTag = "!";
const char* const kStrTag = "tag:yaml.org,2002:str";

// ---------------------------------------------------------------------------------------------
// The YAML 1.2 core schema for plain (unquoted) scalars

bool is_one_of(const std::string& text, std::initializer_list<const char*> spellings) {
  for (const char* s : spellings)
    if (text == s) return true;
  return false;
}

// Advances `i` past digits of the given base; returns how many there were.
size_t skip_digits(const std::string& text, size_t& i, int base = 10) {
  const size_t start = i;
  auto is_digit = [base](char c) {
    if (base == 16) return std::isxdigit(static_cast<unsigned char>(c)) != 0;
    return c >= '0' && c < static_cast<char>('0' + base);
  };
  while (i < text.size() && is_digit(text[i])) ++i;
  return i - start;
}

void skip_sign(const std::string& text, size_t& i) {
  if (i < text.size() && (text[i] == '-' || text[i] == '+')) ++i;
}

// [-+]? [0-9]+
bool is_decimal_integer(const std::string& text) {
  size_t i = 0;
  skip_sign(text, i);
  return skip_digits(text, i) > 0 && i == text.size();
}

// [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?
bool is_float(const std::string& text) {
  size_t i = 0;
  skip_sign(text, i);
  if (i < text.size() && text[i] == '.') {
    ++i;
    if (skip_digits(text, i) == 0) return false;
  } else {
    if (skip_digits(text, i) == 0) return false;
    if (i < text.size() && text[i] == '.') {
      ++i;
      skip_digits(text, i);
    }
  }
  if (i < text.size() && (text[i] == 'e' || text[i] == 'E')) {
    ++i;
    skip_sign(text, i);
    if (skip_digits(text, i) == 0) return false;
  }
  return i == text.size();
}

// 0o[0-7]+ or 0x[0-9a-fA-F]+: the base, or 0 when the text is neither.
int prefixed_integer_base(const std::string& text) {
  if (text.size() < 3 || text[0] != '0' || (text[1] != 'o' && text[1] != 'x')) return 0;
  const int base = text[1] == 'o' ? 8 : 16;
  size_t i = 2;
  return skip_digits(text, i, base) > 0 && i == text.size() ? base : 0;
}

// An unsigned value as JSON's parser would hold it: signed when it fits.
nlohmann::json unsigned_json(uint64_t value) {
  if (value <= static_cast<uint64_t>(INT64_MAX)) return static_cast<int64_t>(value);
  return value;
}

// The value of a plain scalar, or nullopt with `problem` set.
std::optional<nlohmann::json> plain_scalar(const std::string& text, std::string& problem) {
  if (is_one_of(text, {"", "~", "null", "Null", "NULL"})) return nlohmann::json(nullptr);
  if (is_one_of(text, {"true", "True", "TRUE"})) return nlohmann::json(true);
  if (is_one_of(text, {"false", "False", "FALSE"})) return nlohmann::json(false);
  if (const int base = prefixed_integer_base(text)) {
    uint64_t value = 0;
    const auto result = std::from_chars(text.data() + 2, text.data() + text.size(), value, base);
    if (result.ec == std::errc()) return unsigned_json(value);
    problem = "the integer " + text + " does not fit in 64 bits";
    return std::nullopt;
  }
  if (is_decimal_integer(text)) {
    // Like JSON's parser: int64, else uint64, else (too large for both) a double.
    const char* first = text.data() + (text[0] == '+' ? 1 : 0);
    const char* last = text.data() + text.size();
    int64_t value = 0;
    if (std::from_chars(first, last, value).ec == std::errc()) return value;
    uint64_t big = 0;
    if (std::from_chars(first, last, big).ec == std::errc()) return unsigned_json(big);
  }
  if (is_float(text)) {
    const double value = std::strtod(text.c_str(), nullptr);
    if (std::isfinite(value)) return value;
    problem = "the number " + text + " is out of range";
    return std::nullopt;
  }
  if (is_one_of(text, {".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF",
                       ".nan", ".NaN", ".NAN"})) {
    problem = text + ": JSON has no infinity or NaN, so neither does a recipe";
    return std::nullopt;
  }
  return nlohmann::json(text);
}

// "null", "number 2", "boolean true", "array", "object".
std::string describe(const nlohmann::json& value) {
  if (value.is_null() || value.is_structured()) return value.type_name();
  return std::string(value.type_name()) + " " + value.dump();
}

// ---------------------------------------------------------------------------------------------
// Building JSON from yaml-cpp's events

// Builds one document's JSON value from yaml-cpp's parse events, noting the line of every value
// and each construct JSON cannot hold. Once a problem is noted the value is still built (with
// placeholders) so that later problems are found too; the caller then discards it.
class JsonBuilder : public YAML::EventHandler {
 public:
  JsonBuilder(std::map<std::string, int>& lines, std::vector<std::string>& problems)
      : lines_(lines), problems_(problems) {}

  nlohmann::json& root() { return root_; }

  void OnDocumentStart(const YAML::Mark&) override {}
  void OnDocumentEnd() override {}
  void OnAnchor(const YAML::Mark&, const std::string& name) override { anchor_name_ = name; }

  void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    refuse_anchor(mark, anchor);
    add(mark, nullptr);
  }

  void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override {
    problem(mark, "aliases (*name) are not supported: write the value out");
    add(mark, "*alias");
  }

  void OnScalar(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                const std::string& text) override {
    refuse_anchor(mark, anchor);
    if (!is_utf8(text)) {  // JSON's strings, and so the resolved recipe's, are UTF-8
      problem(mark, "this text is not UTF-8; a recipe is UTF-8 text");
      add(mark, "");
      return;
    }
    if (tag == kPlainTag) {
      add_plain(mark, text);
      return;
    }
    if (tag != kQuotedTag && tag != kStrTag)
      problem(mark, "the tag " + tag + " is not supported (only !!str, or quotes, for a string)");
    add(mark, text);
  }

  void OnSequenceStart(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                       YAML::EmitterStyle::value) override {
    open(mark, tag, "tag:yaml.org,2002:seq", anchor, nlohmann::json::array());
  }
  void OnSequenceEnd() override { close(); }

  void OnMapStart(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                  YAML::EmitterStyle::value) override {
    open(mark, tag, "tag:yaml.org,2002:map", anchor, nlohmann::json::object());
  }
  void OnMapEnd() override { close(); }

 private:
  // A mapping or sequence being filled.
  struct OpenNode {
    nlohmann::json value;
    std::string path;
    YAML::Mark mark;
    bool is_key = false;  // a mapping or sequence written as a key (refused when it closes)
    // Of a mapping: the key whose value comes next (none: a key comes next), and the line of
    // every key so far.
    std::optional<std::string> key;
    std::map<std::string, int> key_lines;
  };

  void problem(const YAML::Mark& mark, const std::string& message) {
    problems_.push_back(std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1) +
                        ": " + message);
  }

  void refuse_anchor(const YAML::Mark& mark, YAML::anchor_t anchor) {
    if (anchor == YAML::NullAnchor) return;
    problem(mark, "anchors (&" + anchor_name_ + ") are not supported: write the value out");
  }

  bool expects_key() const {
    return !open_.empty() && open_.back().value.is_object() && !open_.back().key;
  }

  // The path of the value that comes next in `parent` (a list item or a key's value).
  static std::string child_path(const OpenNode& parent) {
    if (parent.value.is_array())
      return parent.path + "[" + std::to_string(parent.value.size()) + "]";
    return parent.path.empty() ? *parent.key : parent.path + "." + *parent.key;
  }

  void open(const YAML::Mark& mark, const std::string& tag, const char* own_tag,
            YAML::anchor_t anchor, nlohmann::json empty) {
    refuse_anchor(mark, anchor);
    if (tag != kPlainTag && tag != own_tag)
      problem(mark, "the tag " + tag + " is not supported on a mapping or list");
    OpenNode node{std::move(empty), "", mark, expects_key(), std::nullopt, {}};
    if (!open_.empty() && !node.is_key) {
      node.path = child_path(open_.back());
      if (open_.back().value.is_array()) lines_[node.path] = mark.line + 1;
    }
    open_.push_back(std::move(node));
  }

  void close() {
    OpenNode node = std::move(open_.back());
    open_.pop_back();
    if (node.is_key)
      take_key(node.mark, node.value);
    else
      place(std::move(node.value));
  }

  // An unquoted scalar, read by the core schema.
  void add_plain(const YAML::Mark& mark, const std::string& text) {
    if (text == "<<" && expects_key())
      problem(mark, "merge keys (<<) are not supported: write the keys out");
    std::string why;
    std::optional<nlohmann::json> value = plain_scalar(text, why);
    if (!value) problem(mark, why);
    add(mark, value ? std::move(*value) : nlohmann::json(text));
  }

  // A scalar (or null, or alias placeholder): a key or a value.
  void add(const YAML::Mark& mark, nlohmann::json value) {
    if (expects_key()) {
      take_key(mark, value);
      return;
    }
    if (!open_.empty() && open_.back().value.is_array())
      lines_[child_path(open_.back())] = mark.line + 1;
    place(std::move(value));
  }

  // A complete value: the document, a list item, or the value of the pending key.
  void place(nlohmann::json value) {
    if (open_.empty()) {
      root_ = std::move(value);
      return;
    }
    OpenNode& parent = open_.back();
    if (parent.value.is_array()) {
      parent.value.push_back(std::move(value));
      return;
    }
    parent.value[*parent.key] = std::move(value);
    parent.key.reset();
  }

  void take_key(const YAML::Mark& mark, const nlohmann::json& key) {
    OpenNode& parent = open_.back();
    std::string name;
    if (key.is_string()) {
      name = key.get<std::string>();
    } else {
      problem(mark, "a key must be a string, got " + describe(key) +
                        (key.is_structured() ? "" : " (quote it)"));
      name = key.dump();
    }
    const int line = mark.line + 1;
    const auto [first, is_new] = parent.key_lines.emplace(name, line);
    if (!is_new)
      problem(mark,
              "duplicate key '" + name + "' (first at line " + std::to_string(first->second) + ")");
    parent.key = name;
    lines_[child_path(parent)] = line;
  }

  std::map<std::string, int>& lines_;
  std::vector<std::string>& problems_;
  std::vector<OpenNode> open_;
  nlohmann::json root_;
  std::string anchor_name_;
};

// Notes where a second document starts and ignores the rest of it.
class DocumentCounter : public YAML::EventHandler {
 public:
  YAML::Mark start;
  void OnDocumentStart(const YAML::Mark& mark) override { start = mark; }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

// Line `line` (0-based) of the text.
std::string line_of(const std::string& text, int line) {
  size_t begin = 0;
  for (int i = 0; i < line && begin != std::string::npos; ++i) {
    begin = text.find('\n', begin);
    if (begin != std::string::npos) ++begin;
  }
  if (begin == std::string::npos || begin > text.size()) return "";
  return text.substr(begin, text.find('\n', begin) - begin);
}

// yaml-cpp's message for a syntax error, or a plainer one when a tab indents the line (yaml-cpp
// then says "illegal map value" or the like).
std::string syntax_error(const std::string& text, const YAML::Exception& e) {
  const std::string line = line_of(text, e.mark.line);
  const size_t indent_end = line.find_first_not_of(" \t");
  if (line.substr(0, indent_end).find('\t') != std::string::npos)
    return "a tab in the indentation (YAML indents with spaces)";
  return e.msg;
}

}  // namespace

bool is_yaml_path(const std::string& path) {
  auto ends_with = [&](const std::string& suffix) {
    return path.size() >= suffix.size() &&
           path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends_with(".yaml") || ends_with(".yml");
}

YamlDocument parse_yaml(const std::string& text, const std::string& source) {
  YamlDocument document;
  std::vector<std::string> problems;
  std::istringstream in(text);
  try {
    YAML::Parser parser(in);
    JsonBuilder builder(document.lines, problems);
    if (parser.HandleNextDocument(builder)) {
      document.json = std::move(builder.root());
      DocumentCounter second;
      if (parser.HandleNextDocument(second))
        problems.push_back(
            std::to_string(second.start.line + 1) + ":" + std::to_string(second.start.column + 1) +
            ": a second YAML document starts here (after --- or the first one's end); a "
            "recipe is one document");
    }
  } catch (const YAML::Exception& e) {
    if (e.mark.is_null()) throw Error(source + ": invalid YAML: " + e.msg);
    throw Error(source + ":" + std::to_string(e.mark.line + 1) + ":" +
                std::to_string(e.mark.column + 1) + ": invalid YAML: " + syntax_error(text, e));
  }
  if (problems.size() == 1) throw Error(source + ":" + problems[0]);
  if (!problems.empty()) {
    std::string message =
        source + ": " + std::to_string(problems.size()) + " errors: " + source + ":" + problems[0];
    for (size_t i = 1; i < problems.size(); ++i) message += "\n  " + source + ":" + problems[i];
    throw Error(message);
  }
  return document;
}

YamlDocument read_yaml_file(const std::string& path) {
  return parse_yaml(read_file(path), path);
}

}  // namespace tiller
