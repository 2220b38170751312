// The body shared by the recipe fuzzers (recipe_fuzz.cpp: JSON, yaml_recipe_fuzz.cpp: YAML): the
// input is a recipe file, optionally followed by a line "%%" and then one key=value override a
// line. It goes through load_recipe (file, overrides, skeleton) and each stage's own parser, as
// `tiller run --check` does. Mistakes must be collected into ConfigErrors or thrown as a
// tiller::Error.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/recipe/pipeline.h"
#include "common/recipe/recipe.h"
#include "common/util/error.h"
#include "stages/stage_types.h"
#include "tests/fuzz/fuzz_util.h"

namespace tiller::fuzz {

// `file_name`'s extension chooses the format (recipe.json or recipe.yaml).
inline void check_recipe_input(const uint8_t* data, size_t size, const std::string& file_name) {
  std::string text(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> overrides;
  const size_t split = text.find("\n%%\n");
  if (split != std::string::npos) {
    size_t begin = split + 4;
    while (begin <= text.size()) {
      size_t end = text.find('\n', begin);
      if (end == std::string::npos) end = text.size();
      if (end > begin) overrides.push_back(text.substr(begin, end - begin));
      begin = end + 1;
    }
    text.resize(split + 1);
  }
  const std::string path =
      write_input(file_name, reinterpret_cast<const uint8_t*>(text.data()), text.size());
  try {
    ConfigErrors errors;
    const Recipe recipe = load_recipe(path, overrides, errors);
    for (const auto& stage : parse_stages(stage_registry(), recipe, errors))
      if (stage.type->stated_defaults) (void)stage.type->stated_defaults(stage.config);
    errors.throw_if_any(path);
  } catch (const Error&) {
  }
}

}  // namespace tiller::fuzz
