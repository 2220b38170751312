// Ground-truth scorers: a rule named in the recipe that judges a response's text (1 satisfied, 0
// not). Logged beside the reward model's score to show whether PPO's gains are real; never used
// for training.
#pragma once
#include <nlohmann/json.hpp>

#include <memory>
#include <regex>
#include <string>

#include "common/recipe/config_reader.h"

namespace tiller {

struct GroundTruthRule {
  std::string kind;     // "" (none), "regex", "contains" or "length"
  std::string pattern;  // regex: ECMAScript pattern searched anywhere in the response
  std::string text;     // contains: the substring
  bool ignore_case = false;
  int64_t min_words = 0;   // length: the word count must lie in [min_words, max_words]
  int64_t max_words = -1;  //   (-1: no upper bound)

  bool enabled() const { return !kind.empty(); }
  // 1 when the response satisfies the rule, else 0.
  double score(const std::string& response) const;
  std::string describe() const;

  std::shared_ptr<const std::regex> compiled;  // regex, compiled once
};

// Reads {"rule": "regex", "pattern": "...", "ignore_case": false} | {"rule": "contains", "text":
// "..."} | {"rule": "length", "min_words": N, "max_words": M}; null json: no rule.
GroundTruthRule parse_ground_truth(const nlohmann::json& json, const std::string& path,
                                   ConfigErrors& errors);

// The rule's keys, for a resolved recipe (null: no rule).
nlohmann::json ground_truth_values(const GroundTruthRule& rule);

}  // namespace tiller
