#include "rlhf/ground_truth.h"

#include <algorithm>
#include <cctype>
#include <sstream>

namespace tiller {

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

int64_t word_count(const std::string& text) {
  std::istringstream in(text);
  std::string word;
  int64_t n = 0;
  while (in >> word) ++n;
  return n;
}

}  // namespace

double GroundTruthRule::score(const std::string& response) const {
  if (kind == "regex") return std::regex_search(response, *compiled) ? 1.0 : 0.0;
  if (kind == "contains") {
    const bool found = ignore_case ? lower(response).find(lower(text)) != std::string::npos
                                   : response.find(text) != std::string::npos;
    return found ? 1.0 : 0.0;
  }
  if (kind == "length") {
    const int64_t n = word_count(response);
    return n >= min_words && (max_words < 0 || n <= max_words) ? 1.0 : 0.0;
  }
  return 0.0;
}

std::string GroundTruthRule::describe() const {
  if (kind == "regex") return "regex /" + pattern + "/" + (ignore_case ? "i" : "");
  if (kind == "contains") return "contains \"" + text + "\"" + (ignore_case ? " (any case)" : "");
  if (kind == "length")
    return "length in [" + std::to_string(min_words) + ", " +
           (max_words < 0 ? std::string("inf") : std::to_string(max_words)) + "] words";
  return "none";
}

GroundTruthRule parse_ground_truth(const nlohmann::json& json, const std::string& path,
                                   ConfigErrors& errors) {
  GroundTruthRule rule;
  if (json.is_null()) return rule;
  ConfigReader r(json, path, errors);
  rule.kind = r.required_string("rule");
  rule.ignore_case = r.boolean("ignore_case", false);
  if (rule.kind == "regex") {
    rule.pattern = r.required_string("pattern");
    try {
      auto flags = std::regex::ECMAScript;
      if (rule.ignore_case) flags |= std::regex::icase;
      rule.compiled = std::make_shared<const std::regex>(rule.pattern, flags);
    } catch (const std::regex_error& e) {
      errors.add(r.path_of("pattern"), "invalid regular expression: " + std::string(e.what()));
    }
  } else if (rule.kind == "contains") {
    rule.text = r.required_string("text");
    r.require(!rule.text.empty() || !r.has("text"), "text", "must not be empty");
  } else if (rule.kind == "length") {
    rule.min_words = r.integer("min_words", 0);
    rule.max_words = r.integer("max_words", -1);
    r.require(rule.min_words >= 0, "min_words", "must be >= 0");
    r.require(rule.max_words == -1 || rule.max_words >= rule.min_words, "max_words",
              "must be >= min_words (or -1: no bound)");
  } else if (!rule.kind.empty()) {
    r.one_of("rule", rule.kind, {"regex", "contains", "length"});
  }
  return rule;
}

nlohmann::json ground_truth_values(const GroundTruthRule& rule) {
  if (!rule.enabled()) return nullptr;
  nlohmann::json stated = {{"rule", rule.kind}, {"ignore_case", rule.ignore_case}};
  if (rule.kind == "regex") stated["pattern"] = rule.pattern;
  if (rule.kind == "contains") stated["text"] = rule.text;
  if (rule.kind == "length") {
    stated["min_words"] = rule.min_words;
    stated["max_words"] = rule.max_words;
  }
  return stated;
}

}  // namespace tiller
