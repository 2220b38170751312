// Verifiable instruction constraints (IFEval style, Zhou et al. 2023): each a rule a program can
// check on a response (a word count range, required or forbidden words, all lowercase or all
// capitals, a number of lines, an ending), read from a task item's "constraints" list.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace tiller::eval {

// One constraint. `type` says which fields it uses:
//   word_count      min_words <= words <= max_words (words: runs of non-whitespace)
//   required_words  every word of `words` appears as a word (case-insensitive, edge punctuation
//                   ignored)
//   forbidden_words no word of `words` appears (same matching)
//   lowercase       no uppercase letter (and at least one letter)
//   uppercase       no lowercase letter (and at least one letter)
//   line_count      exactly `lines` non-empty lines
//   ends_with       the response, trailing whitespace removed, ends with `phrase`
struct Constraint {
  std::string type;
  int64_t min_words = 0, max_words = 0, lines = 0;
  std::vector<std::string> words;
  std::string phrase;
};

// Parses {"type": ..., fields} strictly: an unknown type, a missing or mistyped field, an
// unknown key or an empty range is a tiller::Error naming `where` (file:line) and the field.
Constraint parse_constraint(const nlohmann::json& j, const std::string& where);
nlohmann::json constraint_json(const Constraint& c);

// Whether the response meets the constraint.
bool constraint_met(const Constraint& c, const std::string& response);

// The words of a text: runs of non-whitespace.
std::vector<std::string> text_words(const std::string& text);

}  // namespace tiller::eval
