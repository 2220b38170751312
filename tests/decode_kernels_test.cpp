// The decode step's kernel sets against each other and against double-precision references:
// attention with masked slots and partial slot blocks, and SiLU, on inputs wider than the models
// in fast_decode_test.cpp reach. (Their exp and row maxima: tests/vec_math_test.cpp.)
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "common/rollout/decode_kernels.h"

using namespace tiller;
using decode_kernels::Isa;

namespace {

std::vector<Isa> kernel_sets() {
  std::vector<Isa> sets = {Isa::portable};
  if (decode_kernels::supported(Isa::avx2_fma)) sets.push_back(Isa::avx2_fma);
  return sets;
}

std::string name_of(Isa isa) {
  return isa == Isa::portable ? "portable" : "avx2_fma";
}

// Softmax attention of one query head in double: the reference for attend().
std::vector<double> attention_reference(const float* q, const float* keys, const float* values,
                                        const float* mask_bias, int64_t slots, int64_t head_dim,
                                        float scale) {
  std::vector<double> scores(slots);
  double max = -std::numeric_limits<double>::infinity();
  for (int64_t s = 0; s < slots; ++s) {
    double dot = 0;
    for (int64_t d = 0; d < head_dim; ++d) dot += double{q[d]} * keys[s * head_dim + d];
    scores[s] = dot * scale + mask_bias[s];
    max = std::max(max, scores[s]);
  }
  double sum = 0;
  for (double& score : scores) sum += score = std::exp(score - max);
  std::vector<double> out(head_dim, 0.0);
  for (int64_t s = 0; s < slots; ++s)
    for (int64_t d = 0; d < head_dim; ++d) out[d] += scores[s] / sum * values[s * head_dim + d];
  return out;
}

}  // namespace

TEST(DecodeKernels, AttendMatchesDoublePrecisionWithMaskedSlots) {
  std::mt19937 rng(17);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t head_dim : {8, 16, 12, 48}) {
    for (int64_t slots : {1, 7, 8, 9, 30, 80}) {
      const int64_t group = 2, padded = decode_kernels::padded_slots(slots);
      // Sharp scores (q of norm ~3 sqrt(hd)) so that the softmax is far from uniform.
      std::vector<float> q(group * head_dim), keys(slots * head_dim), values(slots * head_dim);
      for (float& v : q) v = 3.0f * normal(rng);
      for (float& v : keys) v = normal(rng);
      for (float& v : values) v = normal(rng);
      std::vector<float> bias(padded, -std::numeric_limits<float>::infinity());
      for (int64_t s = 0; s < slots; ++s)
        if (s == slots - 1 || s % 3 != 1) bias[s] = 0.0f;  // every third slot masked
      const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
      for (auto isa : kernel_sets()) {
        SCOPED_TRACE(name_of(isa) + ", head_dim " + std::to_string(head_dim) + ", slots " +
                     std::to_string(slots));
        std::vector<float> scratch(group * padded), out(group * head_dim);
        decode_kernels::attend(isa, q.data(), group, keys.data(), values.data(), bias.data(), slots,
                               head_dim, scale, scratch.data(), out.data());
        for (int64_t h = 0; h < group; ++h) {
          const auto reference = attention_reference(&q[h * head_dim], keys.data(), values.data(),
                                                     bias.data(), slots, head_dim, scale);
          for (int64_t d = 0; d < head_dim; ++d)
            EXPECT_NEAR(out[h * head_dim + d], reference[d], 2e-6) << "head " << h << " dim " << d;
        }
      }
    }
  }
}

TEST(DecodeKernels, SiluMulMatchesDoublePrecision) {
  std::vector<float> gate, up;
  for (float g = -120.0f; g <= 120.0f; g += 0.37f) {
    gate.push_back(g);
    up.push_back(0.5f + g / 240.0f);
  }
  for (auto isa : kernel_sets()) {
    SCOPED_TRACE(name_of(isa));
    auto out = gate;
    decode_kernels::silu_mul(isa, out.data(), up.data(), out.size());
    for (size_t i = 0; i < gate.size(); ++i) {
      const double g = gate[i], reference = g / (1.0 + std::exp(-g)) * up[i];
      EXPECT_NEAR(out[i], reference, 1e-6 * std::max(1.0, std::abs(reference))) << "gate " << g;
    }
  }
}

TEST(DecodeKernels, SmallMatmulMatchesDoublePrecisionAtEveryEdge) {
  if (!decode_kernels::supported(Isa::avx2_fma)) GTEST_SKIP() << "no AVX2+FMA on this CPU";
  EXPECT_FALSE(decode_kernels::small_matmul(Isa::portable, nullptr, 2, 8, nullptr, nullptr, 2,
                                            nullptr, false));
  std::mt19937 rng(23);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // Row counts around the 4-row tiles, outputs around the 2-output tiles, k with and without a
  // partial chunk of 8.
  for (int64_t rows : {1, 3, 4, 5, 16}) {
    for (int64_t k : {8, 12, 64, 172}) {
      for (int64_t n : {1, 3, 64}) {
        std::vector<float> in(rows * k), weight(n * k), bias(n), out(rows * n);
        for (float& v : in) v = normal(rng);
        for (float& v : weight) v = normal(rng);
        for (float& v : bias) v = normal(rng);
        for (bool accumulate : {false, true}) {
          for (const float* b :
               {static_cast<const float*>(nullptr), static_cast<const float*>(bias.data())}) {
            SCOPED_TRACE("rows " + std::to_string(rows) + ", k " + std::to_string(k) + ", n " +
                         std::to_string(n) + (accumulate ? ", accumulate" : "") +
                         (b != nullptr ? ", bias" : ""));
            for (int64_t i = 0; i < rows * n; ++i) out[i] = static_cast<float>(i % 7);
            ASSERT_TRUE(decode_kernels::small_matmul(Isa::avx2_fma, in.data(), rows, k,
                                                     weight.data(), b, n, out.data(), accumulate));
            for (int64_t r = 0; r < rows; ++r) {
              for (int64_t j = 0; j < n; ++j) {
                double reference = (b != nullptr ? b[j] : 0.0) + (accumulate ? (r * n + j) % 7 : 0);
                for (int64_t i = 0; i < k; ++i)
                  reference += double{in[r * k + i]} * weight[j * k + i];
                EXPECT_NEAR(out[r * n + j], reference, 1e-5 * std::sqrt(static_cast<double>(k)))
                    << "row " << r << " output " << j;
              }
            }
          }
        }
      }
    }
  }
}
