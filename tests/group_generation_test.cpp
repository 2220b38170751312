// Group sampling (generate_groups, for GRPO): one prefill per prompt, repeated to G rows, gives the
// same samples as generate() on each prompt repeated G times, on both decode paths; bad group
// sizes and seed counts are errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/rollout/generator.h"
#include "common/util/error.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

// A random model of stories260K's shape (GQA, 5 layers, 512 tokens) with sharp logits.
Transformer stories_shaped_model(uint64_t seed) {
  return test::sharp_random_model(builtin_shape("stories260k"), seed);
}

// Prompts of different lengths (left padding differs between them).
const std::vector<std::vector<int64_t>> kPrompts = {
    {1, 40, 300, 7, 99}, {1}, {1, 12, 480, 480, 3, 77, 150, 21}};

// Each prompt `times` times in a row: a, a, b, b, ...
std::vector<std::vector<int64_t>> repeated(const std::vector<std::vector<int64_t>>& prompts,
                                           int64_t times) {
  std::vector<std::vector<int64_t>> out;
  for (const auto& p : prompts)
    for (int64_t g = 0; g < times; ++g) out.push_back(p);
  return out;
}

std::vector<uint64_t> distinct_seeds(int64_t count) {
  std::vector<uint64_t> seeds;
  for (int64_t i = 0; i < count; ++i) seeds.push_back(1000 + 17 * static_cast<uint64_t>(i));
  return seeds;
}

SamplingOptions sampling(bool fast_decode) {
  SamplingOptions o;
  o.max_new_tokens = 24;
  o.temperature = 1.0;
  o.seed = 7;
  o.full_pass_logprobs = false;  // the decode steps' own log-probs, which the cache feeds
  o.fast_decode = fast_decode;
  return o;
}

// Same prompts, same tokens, log-probs within 1e-5.
void expect_same_samples(const GenerationBatch& got, const GenerationBatch& want,
                         const std::string& what) {
  ASSERT_EQ(got.batch(), want.batch()) << what;
  EXPECT_TRUE(torch::equal(got.prompt_ids, want.prompt_ids)) << what;
  EXPECT_TRUE(torch::equal(got.prompt_mask, want.prompt_mask)) << what;
  ASSERT_EQ(got.response_ids.sizes(), want.response_ids.sizes()) << what;
  EXPECT_TRUE(torch::equal(got.response_ids, want.response_ids)) << what;
  EXPECT_TRUE(torch::equal(got.response_mask, want.response_mask)) << what;
  EXPECT_TRUE(torch::equal(got.ended_with_eos, want.ended_with_eos)) << what;
  EXPECT_LT((got.logprobs - want.logprobs).abs().max().item<double>(), 1e-5) << what;
}

// Whether some group holds two different responses (its rows are not one sample copied).
bool groups_differ_within(const GenerationBatch& batch, int64_t group_size) {
  for (int64_t row = 0; row < batch.batch(); row += group_size)
    for (int64_t g = 1; g < group_size; ++g)
      if (batch.response(row) != batch.response(row + g)) return true;
  return false;
}

}  // namespace

TEST(GroupGeneration, GroupsEqualGenerateOnRepeatedPromptsOnBothDecodePaths) {
  auto model = stories_shaped_model(21);
  const int64_t G = 4, rows = static_cast<int64_t>(kPrompts.size()) * G;
  for (bool fast : {true, false}) {
    for (bool per_row_seeds : {true, false}) {
      for (int64_t top_k : {0, 40}) {  // the CPU sampler, and sample()'s filtered path
        SamplingOptions o = sampling(fast);
        o.top_k = top_k;
        if (per_row_seeds) o.row_seeds = distinct_seeds(rows);
        const std::string what = std::string(fast ? "fast" : "torch") + " decode, " +
                                 (per_row_seeds ? "row seeds" : "one seed") + ", top_k " +
                                 std::to_string(top_k);
        auto groups = generate_groups(*model, kPrompts, G, o);
        auto flat = generate(*model, repeated(kPrompts, G), o);
        expect_same_samples(groups, flat, what);
        EXPECT_TRUE(groups_differ_within(groups, G)) << what;
        // Row b * G + g holds prompt b, left-padded to the longest.
        const int64_t longest = groups.prompt_ids.size(1);
        for (int64_t row = 0; row < rows; ++row) {
          const auto& prompt = kPrompts[row / G];
          const int64_t n = static_cast<int64_t>(prompt.size());
          EXPECT_EQ(groups.prompt_mask[row].sum().item<int64_t>(), n) << what;
          EXPECT_EQ(groups.prompt_ids[row][longest - 1].item<int64_t>(), prompt.back()) << what;
        }
      }
    }
  }
}

TEST(GroupGeneration, EachSampleDependsOnlyOnItsRowSeed) {
  // A group's g-th sample with seed s is what generate (G = 1) draws from that prompt with seed s.
  auto model = stories_shaped_model(22);
  const int64_t G = 3, rows = static_cast<int64_t>(kPrompts.size()) * G;
  SamplingOptions o = sampling(true);
  o.full_pass_logprobs = true;
  o.row_seeds = distinct_seeds(rows);
  auto groups = generate_groups(*model, kPrompts, G, o);
  for (int64_t g = 0; g < G; ++g) {
    SamplingOptions column = o;
    column.row_seeds.clear();
    for (size_t b = 0; b < kPrompts.size(); ++b) column.row_seeds.push_back(o.row_seeds[b * G + g]);
    auto single = generate(*model, kPrompts, column);
    for (int64_t b = 0; b < static_cast<int64_t>(kPrompts.size()); ++b)
      EXPECT_EQ(groups.response(b * G + g), single.response(b))
          << "prompt " << b << " sample " << g;
  }
  // The default log-probs are the full pass's over the B * G rows.
  auto reference = response_logprobs(*model, groups, o.temperature);
  EXPECT_LT((reference - groups.logprobs).abs().max().item<double>(), 1e-5);
}

TEST(GroupGeneration, BadGroupSizeOrSeedCountIsAnError) {
  auto model = stories_shaped_model(23);
  SamplingOptions o = sampling(true);
  auto error_of = [&](int64_t group_size, const SamplingOptions& opt) {
    return test::error_of([&] { generate_groups(*model, kPrompts, group_size, opt); });
  };
  EXPECT_NE(error_of(0, o).find("group_size must be at least 1, got 0"), std::string::npos)
      << error_of(0, o);
  EXPECT_NE(error_of(-2, o).find("got -2"), std::string::npos);
  SamplingOptions one_seed_per_prompt = o;
  one_seed_per_prompt.row_seeds = distinct_seeds(static_cast<int64_t>(kPrompts.size()));
  const std::string seeds = error_of(2, one_seed_per_prompt);
  EXPECT_NE(seeds.find("row_seeds has 3 seeds for 6 rows"), std::string::npos) << seeds;
}
