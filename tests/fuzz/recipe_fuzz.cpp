// Fuzzes JSON recipes (JSON with comments, then optional overrides:
// tests/fuzz/recipe_fuzz_input.h).
#include "tests/fuzz/recipe_fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tiller::fuzz::check_recipe_input(data, size, "recipe.json");
  return 0;
}
