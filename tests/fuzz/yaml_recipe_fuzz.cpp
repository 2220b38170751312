// Fuzzes YAML recipes: yaml-cpp's events turned into JSON (common/recipe/yaml_recipe.cpp), with
// every value's line, then the same checks as JSON recipes (tests/fuzz/recipe_fuzz_input.h).
#include "tests/fuzz/recipe_fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tiller::fuzz::check_recipe_input(data, size, "recipe.yaml");
  return 0;
}
