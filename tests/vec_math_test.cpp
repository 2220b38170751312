// The row kernels of common/util/vec_math.h, on both paths where the CPU has AVX2 (the AVX2 one
// and the plain loops): exp against std::exp to a few ulp over the whole float range it serves,
// exactly 0 below the smallest normal result and for -inf, NaN kept; sums and maxima over every
// tail length.
#include "common/util/vec_math.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

using namespace tiller;

namespace {

// Runs body once per kernel set this CPU has, with a trace naming it.
template <typename Body>
void for_each_kernel_set(Body body) {
  std::vector<bool> portable_runs{true};
  vec::force_portable_for_test(false);
  if (vec::using_avx2()) portable_runs.push_back(false);
  for (bool portable : portable_runs) {
    vec::force_portable_for_test(portable);
    SCOPED_TRACE(portable ? "plain loops" : "AVX2");
    body();
  }
  vec::force_portable_for_test(false);
}

constexpr float kInf = std::numeric_limits<float>::infinity();

}  // namespace

TEST(VecMath, ExpMatchesStdExpToAFewUlpAndUnderflowsToZero) {
  std::vector<float> x;
  for (float v = -87.3f; v <= 88.0f; v += 0.0137f) x.push_back(v);
  x.push_back(-87.33f);
  for_each_kernel_set([&] {
    std::vector<float> e(x.size());
    vec::exp_sum(x.data(), 0.0f, static_cast<int64_t>(x.size()), e.data());
    for (size_t i = 0; i < x.size(); ++i) {
      const float want = std::exp(x[i]);
      ASSERT_NEAR(e[i], want, 4 * std::numeric_limits<float>::epsilon() * want) << "x " << x[i];
    }
    // Below ln(FLT_MIN) the true value is subnormal: the kernels return exactly 0.
    std::vector<float> tiny{-87.4f, -100.0f, -1e30f, -kInf, -kInf, -kInf, -kInf, -kInf, -kInf};
    std::vector<float> out(tiny.size(), 1.0f);
    EXPECT_EQ(vec::exp_sum(tiny.data(), 0.0f, static_cast<int64_t>(tiny.size()), out.data()), 0.0f);
    for (float v : out) EXPECT_EQ(v, 0.0f);
  });
}

TEST(VecMath, NanArgumentsStayNan) {
  for_each_kernel_set([&] {
    for (size_t where : {0u, 5u, 8u, 12u}) {  // in a vector block and in the tail
      std::vector<float> x(13, 0.5f);
      x[where] = std::numeric_limits<float>::quiet_NaN();
      std::vector<float> out(x.size());
      EXPECT_TRUE(std::isnan(vec::exp_sum(x.data(), 0.0f, 13, out.data()))) << where;
      EXPECT_TRUE(std::isnan(out[where])) << where;
      vec::scaled_exp(x.data(), 0.0f, 2.0f, 13, out.data());
      EXPECT_TRUE(std::isnan(out[where])) << where;
      EXPECT_FLOAT_EQ(out[(where + 1) % 13], 2.0f * std::exp(0.5f));
      EXPECT_EQ(vec::max(x.data(), 13), 0.5f) << "NaN skipped, at " << where;
    }
  });
}

TEST(VecMath, SumsScalesAndMaximaOverEveryTailLength) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  for_each_kernel_set([&] {
    for (int64_t n = 1; n <= 40; ++n) {
      SCOPED_TRACE("n " + std::to_string(n));
      std::vector<float> x(static_cast<size_t>(n));
      for (auto& v : x) v = normal(rng);
      const float shift = 1.5f;
      double sum = 0;
      float largest = -kInf;
      for (float v : x)
        sum += std::exp(static_cast<double>(v) - shift), largest = std::max(largest, v);
      EXPECT_NEAR(vec::exp_sum(x.data(), shift, n, nullptr), sum, 1e-6 * sum);
      EXPECT_EQ(vec::max(x.data(), n), largest);
      std::vector<float> scaled(x.size());
      vec::scaled_exp(x.data(), shift, -0.25f, n, scaled.data());
      for (int64_t i = 0; i < n; ++i)
        EXPECT_NEAR(scaled[i], -0.25 * std::exp(static_cast<double>(x[i]) - shift),
                    1e-6 * 0.25 * std::exp(static_cast<double>(x[i]) - shift));
      // In place: out may be the input.
      auto in_place = x;
      EXPECT_NEAR(vec::exp_sum(in_place.data(), shift, n, in_place.data()), sum, 1e-6 * sum);
      EXPECT_NEAR(in_place[n - 1], std::exp(static_cast<double>(x[n - 1]) - shift),
                  1e-6 * std::exp(static_cast<double>(x[n - 1]) - shift));
    }
    const std::vector<float> all_minus_inf(11, -kInf);
    EXPECT_EQ(vec::max(all_minus_inf.data(), 11), -kInf);
  });
}
