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
  for (auto isa : {vec::Isa::portable, vec::Isa::avx2_fma}) {
    if (!vec::supported(isa)) continue;
    SCOPED_TRACE(isa == vec::Isa::portable ? "plain loops" : "AVX2");
    body(isa);
  }
}

constexpr float kInf = std::numeric_limits<float>::infinity();

}  // namespace

TEST(VecMath, ExpMatchesStdExpToAFewUlpAndUnderflowsToZero) {
  std::vector<float> x;
  for (float v = -87.3f; v <= 88.0f; v += 0.0137f) x.push_back(v);
  x.push_back(-87.33f);
  for_each_kernel_set([&](vec::Isa isa) {
    std::vector<float> e(x.size());
    vec::exp_sum(isa, x.data(), 0.0f, static_cast<int64_t>(x.size()), e.data());
    for (size_t i = 0; i < x.size(); ++i) {
      const float want = std::exp(x[i]);
      ASSERT_NEAR(e[i], want, 4 * std::numeric_limits<float>::epsilon() * want) << "x " << x[i];
    }
    // Below ln(FLT_MIN) the true value is subnormal: the kernels return exactly 0.
    std::vector<float> tiny{-87.4f, -100.0f, -1e30f, -kInf, -kInf, -kInf, -kInf, -kInf, -kInf};
    std::vector<float> out(tiny.size(), 1.0f);
    EXPECT_EQ(vec::exp_sum(isa, tiny.data(), 0.0f, static_cast<int64_t>(tiny.size()), out.data()),
              0.0f);
    for (float v : out) EXPECT_EQ(v, 0.0f);
  });
}

TEST(VecMath, NanArgumentsStayNan) {
  for_each_kernel_set([&](vec::Isa isa) {
    for (size_t where : {0u, 5u, 8u, 12u}) {  // in a vector block and in the tail
      std::vector<float> x(13, 0.5f);
      x[where] = std::numeric_limits<float>::quiet_NaN();
      std::vector<float> out(x.size());
      EXPECT_TRUE(std::isnan(vec::exp_sum(isa, x.data(), 0.0f, 13, out.data()))) << where;
      EXPECT_TRUE(std::isnan(out[where])) << where;
      vec::scaled_exp(isa, x.data(), 0.0f, 2.0f, 13, out.data());
      EXPECT_TRUE(std::isnan(out[where])) << where;
      EXPECT_FLOAT_EQ(out[(where + 1) % 13], 2.0f * std::exp(0.5f));
      EXPECT_EQ(vec::max(isa, x.data(), 13), 0.5f) << "NaN skipped, at " << where;
    }
  });
}

TEST(VecMath, SumsScalesAndMaximaOverEveryTailLength) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  for_each_kernel_set([&](vec::Isa isa) {
    for (int64_t n = 1; n <= 40; ++n) {
      SCOPED_TRACE("n " + std::to_string(n));
      std::vector<float> x(static_cast<size_t>(n));
      for (auto& v : x) v = normal(rng);
      const float shift = 1.5f;
      double sum = 0;
      float largest = -kInf;
      for (float v : x)
        sum += std::exp(static_cast<double>(v) - shift), largest = std::max(largest, v);
      EXPECT_NEAR(vec::exp_sum(isa, x.data(), shift, n, nullptr), sum, 1e-6 * sum);
      EXPECT_EQ(vec::max(isa, x.data(), n), largest);
      double weighted = 0;
      for (float v : x) weighted += std::exp(static_cast<double>(v) - shift) * (v - shift);
      float got_weighted = 0;
      EXPECT_EQ(vec::exp_sum_weighted(isa, x.data(), shift, n, &got_weighted),
                vec::exp_sum(isa, x.data(), shift, n, nullptr));
      EXPECT_NEAR(got_weighted, weighted, 1e-5 * sum * 16);
      std::vector<float> scaled(x.size());
      vec::scaled_exp(isa, x.data(), shift, -0.25f, n, scaled.data());
      for (int64_t i = 0; i < n; ++i)
        EXPECT_NEAR(scaled[i], -0.25 * std::exp(static_cast<double>(x[i]) - shift),
                    1e-6 * 0.25 * std::exp(static_cast<double>(x[i]) - shift));
      // In place: out may be the input.
      auto in_place = x;
      EXPECT_NEAR(vec::exp_sum(isa, in_place.data(), shift, n, in_place.data()), sum, 1e-6 * sum);
      EXPECT_NEAR(in_place[n - 1], std::exp(static_cast<double>(x[n - 1]) - shift),
                  1e-6 * std::exp(static_cast<double>(x[n - 1]) - shift));
    }
    const std::vector<float> all_minus_inf(11, -kInf);
    EXPECT_EQ(vec::max(isa, all_minus_inf.data(), 11), -kInf);
    // A -inf term adds nothing to either sum (its e * (x - shift) is 0 * -inf).
    std::vector<float> some_minus_inf(19, -kInf);
    some_minus_inf[4] = 1.0f;
    float weighted = 1;
    EXPECT_FLOAT_EQ(vec::exp_sum_weighted(isa, some_minus_inf.data(), 1.0f, 19, &weighted), 1.0f);
    EXPECT_EQ(weighted, 0.0f);
  });
}

TEST(VecMath, ExpIsWithinAFewUlpAndVanishesBelowTheNormalRange) {
  std::vector<float> x;
  for (float v = -87.0f; v <= 88.0f; v += 0.0137f) x.push_back(v);
  x.push_back(0.0f);
  x.push_back(-1e-8f);
  for_each_kernel_set([&](vec::Isa isa) {
    std::vector<float> out(x.size());
    vec::exp_sum(isa, x.data(), 0.0f, static_cast<int64_t>(x.size()), out.data());
    double worst = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double reference = std::exp(double{x[i]});
      worst = std::max(worst, std::abs(out[i] - reference) / reference);
    }
    EXPECT_LT(worst, 3e-7);  // float's unit roundoff is 6e-8

    // The sum, over a range whose exps float can add up.
    const int64_t n = 1001;
    std::vector<float> y(n);
    double reference_sum = 0;
    for (int64_t i = 0; i < n; ++i) reference_sum += std::exp(double{y[i] = -20.0f + 0.04f * i});
    const float sum = vec::exp_sum(isa, y.data(), 1.5f, n, out.data());
    EXPECT_NEAR(sum / (reference_sum * std::exp(-1.5)), 1.0, 1e-6);

    // Shifted by the max as softmax does: masked (-inf) entries give 0, and so do arguments below
    // exp's normal range (asked of the vector set; the plain loops flush them too).
    const float masked[] = {
        -std::numeric_limits<float>::infinity(), -200.0f, -95.0f, 3.0f, 2.0f, -1e30f,
        -std::numeric_limits<float>::infinity(), 1.0f,    -100.0f};
    float exps[9];
    vec::exp_sum(isa, masked, 3.0f, 9, exps);
    for (int i : {0, 5, 6}) EXPECT_EQ(exps[i], 0.0f) << "entry " << i;
    for (int i : {1, 2, 8}) EXPECT_LT(exps[i], 1e-40f) << "entry " << i;
    if (isa != vec::Isa::portable) {
      for (int i : {1, 2}) EXPECT_EQ(exps[i], 0.0f) << "entry " << i;
    }
    EXPECT_FLOAT_EQ(exps[3], 1.0f);
    EXPECT_NEAR(exps[7], std::exp(-2.0), 1e-7);
  });
}

TEST(VecMath, MaxValueFindsTheLargestWhereverItIs) {
  for_each_kernel_set([&](vec::Isa isa) {
    for (int64_t n : {1, 7, 8, 9, 17, 512}) {
      for (int64_t at = 0; at < n; at += std::max<int64_t>(1, n / 5)) {
        std::vector<float> x(n);
        for (int64_t i = 0; i < n; ++i) x[i] = -1000.0f + static_cast<float>((i * 37) % 101);
        x[at] = 7.5f;
        EXPECT_EQ(vec::max(isa, x.data(), n), 7.5f) << "n " << n << ", at " << at;
      }
    }
  });
}
