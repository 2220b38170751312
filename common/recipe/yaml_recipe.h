// YAML recipes: a .yaml/.yml recipe read into the same JSON value a .json recipe gives, with the
// line of every value, so that the recipe checks name YAML lines in their errors.
//
// Scalars follow the YAML 1.2 core schema: true/false, null/~/empty, integers (also 0x.., 0o..),
// floats (1e-4, 3.0e-4, .5); a quoted scalar is a string ("1" stays a string), and any other
// unquoted text is a string. Refused, each with its line: what JSON cannot hold (.inf, .nan,
// non-string keys) and what would be ambiguous or silently lost (duplicate keys, anchors and
// aliases, merge keys `<<`, tags other than !!str, a second document); tabs in the indentation and
// syntax errors are reported as yaml-cpp finds them.
#pragma once
#include <nlohmann/json.hpp>

#include <map>
#include <string>

namespace tiller {

struct YamlDocument {
  nlohmann::json json;
  // The 1-based line of each value by its JSON path, as ConfigReader spells paths:
  // "stages[1].train.lr" (a member: the line of its key; a list item: the line it starts on).
  std::map<std::string, int> lines;
};

// Whether a recipe path names a YAML file (.yaml or .yml).
bool is_yaml_path(const std::string& path);

// Parses YAML text (`source` names it in messages). Throws tiller::Error listing every problem,
// each as "source:line:column: what".
YamlDocument parse_yaml(const std::string& text, const std::string& source);

// parse_yaml of a file's contents.
YamlDocument read_yaml_file(const std::string& path);

}  // namespace tiller
