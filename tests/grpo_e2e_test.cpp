// The shipped recipes/arithmetic_grpo.yaml end to end, as a user runs it: Tiller writes its own
// arithmetic problems, pretrains and SFTs a ~220K-parameter model on them, then GRPO and RLOO
// each raise the held-out accuracy (pass@1 at temperature 1, the answer checked by math_answer)
// by at least 20 points, with the KL to the reference reported. About 8 minutes on 2 cores: it
// runs as its own CTest entry with a longer timeout (CMakeLists.txt).
#include <gtest/gtest.h>

#include <cstdio>

#include "common/util/files.h"
#include "tests/test_util.h"
#include "tiller_build_paths.h"

using namespace tiller;

TEST(GrpoEndToEnd, ArithmeticAccuracyRisesByTwentyPointsWithGrpoAndRloo) {
  const std::string dir = test::temp_dir("grpo_arithmetic");
  std::string out;
  const std::string recipe = std::string(TILLER_SOURCE_DIR) + "/recipes/arithmetic_grpo.yaml";
  ASSERT_EQ(test::run_command("cd '" + dir + "' && '" + test::tiller_binary() + "' run '" +
                                  recipe + "'",
                              &out),
            0)
      << out;
  for (const std::string stage : {"grpo", "rloo"}) {
    SCOPED_TRACE(stage);
    const auto summary = nlohmann::json::parse(
        read_file(dir + "/runs/arithmetic_grpo/" + stage + "/complete.json"));
    const double before = summary.at("accuracy_initial").get<double>();
    const double after = summary.at("accuracy_final").get<double>();
    std::printf("%s: held-out accuracy %.4f -> %.4f, pass@8 %.2f -> %.2f, KL %.3f\n",
                stage.c_str(), before, after, summary.value("pass_at_k_initial", 0.0),
                summary.value("pass_at_k_final", 0.0), summary.value("kl_final", -1.0));
    EXPECT_GE(after - before, 0.20) << summary.dump();
    EXPECT_GT(summary.at("kl_final").get<double>(), 0.0) << summary.dump();
    EXPECT_NE(out.find(stage + ": final KL to the reference"), std::string::npos) << out;
  }
}
