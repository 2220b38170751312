// Responses that share a prompt, packed behind one copy of it (common/rollout/shared_prompt.h),
// give the logits and the gradients of one row per response; the pack size follows the model's
// cost of projections against attention.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/rollout/generator.h"
#include "common/rollout/shared_prompt.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

// Rows of three prompts (real lengths 11, 7 and 12 of a width of 12, left-padded) in an interleaved
// order, groups of 4, 3 and 1 rows; responses of 5 slots, some ending early (their tails masked,
// their ids pad).
struct SharedPromptBatch {
  torch::Tensor ids, mask;
  static constexpr int64_t kPromptLen = 12, kResponseLen = 5;
};

SharedPromptBatch interleaved_groups() {
  const std::vector<std::vector<int64_t>> prompts = {{1, 5, 9, 4, 12, 3, 8, 20, 2, 6, 7},
                                                     {1, 7, 3, 9, 9, 4, 2},
                                                     {1, 8, 8, 2, 30, 6, 5, 5, 11, 13, 17, 19}};
  const std::vector<int64_t> prompt_of_row = {0, 1, 0, 2, 1, 0, 1, 0};
  const std::vector<int64_t> response_length = {5, 2, 4, 5, 1, 5, 3, 2};
  const int64_t rows = static_cast<int64_t>(prompt_of_row.size());
  const int64_t width = SharedPromptBatch::kPromptLen + SharedPromptBatch::kResponseLen;
  SharedPromptBatch b;
  b.ids = torch::zeros({rows, width}, torch::kLong);
  b.mask = torch::zeros({rows, width}, torch::kBool);
  for (int64_t r = 0; r < rows; ++r) {
    const auto& prompt = prompts[static_cast<size_t>(prompt_of_row[static_cast<size_t>(r)])];
    const int64_t pad = SharedPromptBatch::kPromptLen - static_cast<int64_t>(prompt.size());
    for (size_t j = 0; j < prompt.size(); ++j) {
      b.ids[r][pad + static_cast<int64_t>(j)] = prompt[j];
      b.mask[r][pad + static_cast<int64_t>(j)] = true;
    }
    for (int64_t t = 0; t < response_length[static_cast<size_t>(r)]; ++t) {
      b.ids[r][SharedPromptBatch::kPromptLen + t] = 3 + (r * 11 + t * 7) % 29;
      b.mask[r][SharedPromptBatch::kPromptLen + t] = true;
    }
  }
  return b;
}

}  // namespace

TEST(SharedPrompt, LogitsAndGradientsEqualOneRowPerResponse) {
  const ModelConfig config = test::llama_config(32, 32, 64, 2, 4, 2, 64);
  // The packed path must be the one taken: groups of 4, 3 and 1 rows pack on this shape.
  ASSERT_GT(shared_prompt_pack_size(config, SharedPromptBatch::kPromptLen,
                                    SharedPromptBatch::kResponseLen, {4, 3, 1}),
            1);
  const SharedPromptBatch b = interleaved_groups();
  for (const double temperature : {1.0, 0.7}) {
    SCOPED_TRACE("temperature " + std::to_string(temperature));
    Transformer model = test::sharp_random_model(config, 3);
    const auto weights = torch::randn({8, SharedPromptBatch::kResponseLen, 32},
                                      torch::TensorOptions().dtype(torch::kFloat));
    const auto gradients_of = [&](const torch::Tensor& logits) {
      model->zero_grad();
      (logits * weights).sum().backward();
      std::vector<torch::Tensor> out;
      for (const auto& p : model->parameters()) out.push_back(p.grad().clone());
      return out;
    };
    const auto one_row_each =
        response_logits(*model, b.ids, b.mask, SharedPromptBatch::kPromptLen, temperature);
    const auto packed = response_logits_sharing_prompts(*model, b.ids, b.mask,
                                                        SharedPromptBatch::kPromptLen, temperature);
    ASSERT_EQ(packed.sizes(), one_row_each.sizes());
    // Every slot, the masked tails' too: a tail's query sees the same keys either way.
    test::expect_close_to_scale(packed, one_row_each, 1e-5, "logits");
    const auto want = gradients_of(one_row_each);
    const auto got = gradients_of(packed);
    const auto names = model->named_parameters().keys();
    for (size_t i = 0; i < want.size(); ++i)
      test::expect_close_to_scale(got[i], want[i], 1e-5, "gradient of " + names[i]);
  }
}

TEST(SharedPrompt, RowsOfDistinctPromptsTakeTheOneRowPath) {
  const ModelConfig config = test::llama_config(32, 32, 64, 2, 4, 2, 64);
  EXPECT_EQ(shared_prompt_pack_size(config, 12, 5, {1, 1, 1}), 1);
  // Rows 0 and 1 hold different prompts: response_logits itself, bit for bit.
  SharedPromptBatch b = interleaved_groups();
  b.ids = b.ids.narrow(0, 0, 2).clone();
  b.mask = b.mask.narrow(0, 0, 2).clone();
  Transformer model = test::sharp_random_model(config, 4);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(
      response_logits_sharing_prompts(*model, b.ids, b.mask, SharedPromptBatch::kPromptLen, 1.0),
      response_logits(*model, b.ids, b.mask, SharedPromptBatch::kPromptLen, 1.0)));
}

TEST(SharedPrompt, PackSizeWeighsProjectionsAgainstAttention) {
  // llama-15m's shape (width 288, MLP 768): GRPO's 64-token prompts and responses, groups of 8,
  // pack whole groups; the projections per token outweigh the longer attention span.
  const ModelConfig small = test::llama_config(32000, 288, 768, 6, 6, 6, 256);
  EXPECT_EQ(shared_prompt_pack_size(small, 64, 64, {8, 8, 8, 8}), 8);
  // 2,048-token responses after a 64-token prompt on the same width: attention over the packed
  // responses costs more than the prompt saved, so each response keeps its own row.
  EXPECT_EQ(shared_prompt_pack_size(small, 64, 2048, {8, 8}), 1);
  // A long prompt and short answers (few-shot prompts): packed however narrow the model.
  EXPECT_EQ(shared_prompt_pack_size(small, 1024, 16, {8}), 8);
  // One row per prompt: nothing to share.
  EXPECT_EQ(shared_prompt_pack_size(small, 64, 64, {1, 1, 1}), 1);
  // The quickstart's 64-wide model, 16-token prompts, 48 new tokens: packs of 2 would count 7%
  // fewer multiply-adds, under the fifth that pays for laying them out.
  const ModelConfig quickstart = test::llama_config(512, 64, 172, 4, 4, 4, 128);
  EXPECT_EQ(shared_prompt_pack_size(quickstart, 16, 48, {8, 8, 8, 8}), 1);
  EXPECT_EQ(shared_prompt_pack_size(quickstart, 128, 48, {8, 8, 8, 8}), 8);
}
