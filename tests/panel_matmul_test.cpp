// PanelMatrix (common/rollout/panel_matmul.h) against a double-precision product: row counts
// around its 8-row tiles, widths around its 32-output panels, bias and accumulation, and the
// size of the thread team. FastDecoder's use of it: fast_decode_test.cpp.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <vector>

#include "common/rollout/panel_matmul.h"
#include "common/util/spin_team.h"

using namespace tiller;

namespace {

// in · weightᵀ + bias (+ out) in double, as float.
torch::Tensor reference_product(const torch::Tensor& in, const torch::Tensor& weight,
                                const torch::Tensor& bias, const torch::Tensor& out,
                                bool accumulate) {
  auto y = torch::mm(in.to(torch::kDouble), weight.to(torch::kDouble).t());
  if (bias.defined()) y = y + bias.to(torch::kDouble);
  if (accumulate) y = y + out.to(torch::kDouble);
  return y.to(torch::kFloat);
}

}  // namespace

TEST(PanelMatmul, MatchesTheProductInDoubleAcrossTilesPanelsBiasAndAccumulation) {
  if (!PanelMatrix::available())
    GTEST_SKIP() << "this CPU has no AVX-512F: PanelMatrix is not used on it";
  torch::manual_seed(5);
  SpinTeam team(2);
  for (int64_t rows : {1, 3, 8, 13, 64}) {
    for (auto [n, k] :
         {std::pair<int64_t, int64_t>{32, 5}, {45, 17}, {50, 9}, {100, 288}, {1000, 64}}) {
      const auto weight = torch::randn({n, k});
      const auto in = torch::randn({rows, k});
      const PanelMatrix panels(weight.data_ptr<float>(), n, k);
      EXPECT_EQ(panels.n(), n);
      EXPECT_EQ(panels.k(), k);
      for (bool with_bias : {false, true}) {
        for (bool accumulate : {false, true}) {
          SCOPED_TRACE(std::to_string(rows) + " rows, " + std::to_string(n) + " x " +
                       std::to_string(k) + (with_bias ? ", bias" : "") +
                       (accumulate ? ", accumulating" : ""));
          const auto bias = with_bias ? torch::randn({n}) : torch::Tensor();
          // A sentinel row after the product: a panel's store past n must not reach it.
          auto out = torch::randn({rows + 1, n});
          const auto sentinel = out[rows].clone();
          const auto expected =
              reference_product(in, weight, bias, out.narrow(0, 0, rows), accumulate);
          panels.multiply(in.data_ptr<float>(), rows, with_bias ? bias.data_ptr<float>() : nullptr,
                          out.data_ptr<float>(), accumulate, team);
          const double scale = expected.abs().max().item<double>();
          EXPECT_LE((out.narrow(0, 0, rows) - expected).abs().max().item<double>(), 1e-5 * scale);
          EXPECT_TRUE(torch::equal(out[rows], sentinel));
        }
      }
    }
  }
}

// Each output is one thread's sum in k order: one thread and three give the same bits.
TEST(PanelMatmul, ResultDoesNotDependOnTheThreadCount) {
  if (!PanelMatrix::available())
    GTEST_SKIP() << "this CPU has no AVX-512F: PanelMatrix is not used on it";
  torch::manual_seed(6);
  const int64_t rows = 32, n = 800, k = 288;
  const auto weight = torch::randn({n, k});
  const auto in = torch::randn({rows, k});
  const PanelMatrix panels(weight.data_ptr<float>(), n, k);
  std::vector<torch::Tensor> results;
  for (int threads : {1, 3}) {
    SpinTeam team(threads);
    auto out = torch::empty({rows, n});
    panels.multiply(in.data_ptr<float>(), rows, nullptr, out.data_ptr<float>(), false, team);
    results.push_back(out);
  }
  EXPECT_TRUE(torch::equal(results[0], results[1]));
}

TEST(PanelMatmul, RefusesAnEmptyWeight) {
  const std::vector<float> none;
  EXPECT_THROW(PanelMatrix(none.data(), 0, 4), std::exception);
}
