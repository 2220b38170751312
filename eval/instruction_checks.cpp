#include "eval/instruction_checks.h"

#include <algorithm>
#include <cctype>
#include <set>
#include <sstream>

#include "common/util/error.h"

namespace tiller::eval {
namespace {

// A word for matching: lowercase, punctuation at either end removed ("Cat," -> "cat").
std::string normal_word(const std::string& word) {
  size_t begin = 0, end = word.size();
  while (begin < end && std::ispunct(static_cast<unsigned char>(word[begin]))) ++begin;
  while (end > begin && std::ispunct(static_cast<unsigned char>(word[end - 1]))) --end;
  std::string out = word.substr(begin, end - begin);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool has_letter_where(const std::string& text, int (*test)(int)) {
  return std::any_of(text.begin(), text.end(),
                     [test](char c) { return test(static_cast<unsigned char>(c)) != 0; });
}

int64_t non_empty_lines(const std::string& text) {
  std::istringstream in(text);
  int64_t count = 0;
  for (std::string line; std::getline(in, line);)
    if (!text_words(line).empty()) ++count;
  return count;
}

int64_t positive_field(const nlohmann::json& j, const char* key, const std::string& where) {
  check(j.contains(key) && j[key].is_number_integer() && j[key].get<int64_t>() >= 0,
        where + ": constraint " + j.value("type", std::string("?")) + " needs \"" + key +
            "\", a non-negative integer");
  return j[key].get<int64_t>();
}

std::vector<std::string> words_field(const nlohmann::json& j, const std::string& where) {
  const std::string what = where + ": constraint " + j["type"].get<std::string>() +
                           " needs \"words\", a non-empty list of single words";
  check(j.contains("words") && j["words"].is_array() && !j["words"].empty(), what);
  std::vector<std::string> words;
  for (const auto& w : j["words"]) {
    check(w.is_string() && text_words(w.get<std::string>()).size() == 1, what);
    words.push_back(w.get<std::string>());
  }
  return words;
}

// The keys each type takes (besides "type").
const std::vector<std::string>& keys_of(const std::string& type) {
  static const std::vector<std::string> none, range = {"min_words", "max_words"}, words = {"words"},
                                              lines = {"lines"}, phrase = {"phrase"};
  if (type == "word_count") return range;
  if (type == "required_words" || type == "forbidden_words") return words;
  if (type == "line_count") return lines;
  if (type == "ends_with") return phrase;
  return none;
}

}  // namespace

std::vector<std::string> text_words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> words;
  for (std::string word; in >> word;) words.push_back(word);
  return words;
}

Constraint parse_constraint(const nlohmann::json& j, const std::string& where) {
  static const std::set<std::string> types = {"word_count", "required_words", "forbidden_words",
                                              "lowercase",  "uppercase",      "line_count",
                                              "ends_with"};
  check(j.is_object() && j.contains("type") && j["type"].is_string(),
        where + ": a constraint must be an object with a \"type\" string");
  Constraint c;
  c.type = j["type"].get<std::string>();
  check(types.count(c.type) == 1,
        where + ": unknown constraint type \"" + c.type +
            "\" (word_count, required_words, forbidden_words, lowercase, uppercase, line_count, "
            "ends_with)");
  const auto& allowed = keys_of(c.type);
  for (const auto& item : j.items())
    check(item.key() == "type" ||
              std::find(allowed.begin(), allowed.end(), item.key()) != allowed.end(),
          where + ": constraint " + c.type + " has an unknown key \"" + item.key() + "\"");
  if (c.type == "word_count") {
    c.min_words = positive_field(j, "min_words", where);
    c.max_words = positive_field(j, "max_words", where);
    check(c.min_words <= c.max_words, where + ": constraint word_count has min_words " +
                                          std::to_string(c.min_words) + " > max_words " +
                                          std::to_string(c.max_words));
  } else if (c.type == "required_words" || c.type == "forbidden_words") {
    c.words = words_field(j, where);
  } else if (c.type == "line_count") {
    c.lines = positive_field(j, "lines", where);
  } else if (c.type == "ends_with") {
    check(j.contains("phrase") && j["phrase"].is_string() &&
              !text_words(j["phrase"].get<std::string>()).empty(),
          where + ": constraint ends_with needs \"phrase\", a non-blank string");
    c.phrase = j["phrase"].get<std::string>();
  }
  return c;
}

nlohmann::json constraint_json(const Constraint& c) {
  nlohmann::json j = {{"type", c.type}};
  if (c.type == "word_count") j["min_words"] = c.min_words, j["max_words"] = c.max_words;
  if (!c.words.empty()) j["words"] = c.words;
  if (c.type == "line_count") j["lines"] = c.lines;
  if (c.type == "ends_with") j["phrase"] = c.phrase;
  return j;
}

bool constraint_met(const Constraint& c, const std::string& response) {
  const std::vector<std::string> words = text_words(response);
  if (c.type == "word_count") {
    const auto n = static_cast<int64_t>(words.size());
    return n >= c.min_words && n <= c.max_words;
  }
  if (c.type == "required_words" || c.type == "forbidden_words") {
    std::set<std::string> present;
    for (const auto& w : words) present.insert(normal_word(w));
    const bool all_present = std::all_of(c.words.begin(), c.words.end(), [&](const auto& w) {
      return present.count(normal_word(w)) == 1;
    });
    const bool none_present = std::none_of(c.words.begin(), c.words.end(), [&](const auto& w) {
      return present.count(normal_word(w)) == 1;
    });
    return c.type == "required_words" ? all_present : none_present;
  }
  if (c.type == "lowercase")
    return has_letter_where(response, std::isalpha) && !has_letter_where(response, std::isupper);
  if (c.type == "uppercase")
    return has_letter_where(response, std::isalpha) && !has_letter_where(response, std::islower);
  if (c.type == "line_count") return non_empty_lines(response) == c.lines;
  if (c.type == "ends_with") {
    std::string text = response;
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
    std::string phrase = c.phrase;
    while (!phrase.empty() && std::isspace(static_cast<unsigned char>(phrase.back())))
      phrase.pop_back();
    return text.size() >= phrase.size() &&
           text.compare(text.size() - phrase.size(), phrase.size(), phrase) == 0;
  }
  throw Error("constraint_met: unknown constraint type " + c.type);
}

}  // namespace tiller::eval
