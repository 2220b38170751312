// Every shipped recipe passes `tiller run --check` (from the project root, as users run them).
#include <gtest/gtest.h>

#include <filesystem>

#include "tests/test_util.h"
#include "tiller_build_paths.h"

using namespace tiller;

// The quickstart reads only what it generates (its synthetic data, written by --check itself
// into runs/quickstart/data), so it is checked everywhere; the others need ../shared/data.
TEST(Recipes, EveryShippedRecipePassesCheck) {
  const bool shared = !test::shared_file("models/stories260K/stories260K.bin").empty();
  int checked = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator(std::string(TILLER_SOURCE_DIR) + "/recipes")) {
    if (entry.path().extension() != ".json") continue;
    if (!shared && entry.path().filename() != "quickstart.json") continue;
    std::string out;
    const int rc = test::run_command("cd '" + std::string(TILLER_SOURCE_DIR) + "' && '" +
                                         test::tiller_binary() + "' run --check 'recipes/" +
                                         entry.path().filename().string() + "'",
                                     &out);
    EXPECT_EQ(rc, 0) << entry.path() << ":\n" << out;
    EXPECT_NE(out.find(": OK ("), std::string::npos) << out;
    ++checked;
  }
  EXPECT_GE(checked, shared ? 5 : 1);
  if (!shared) GTEST_SKIP() << "checked only quickstart.json: ../shared/data is absent";
}
