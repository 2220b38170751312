// Rows of a padded batch that begin alike, packed behind one copy of their common beginning
// (common/model/shared_prefix.h), give the hidden states and gradients of the padded batch; DPO's
// pair log-probs and a reward model's scores read through it give those of one row per response.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/model/attention_mask.h"
#include "common/model/lora.h"
#include "common/model/shared_prefix.h"
#include "common/train/pairwise_reward.h"
#include "dpo/pair_log_probs.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

// Right-padded ids and mask of `rows`.
struct PaddedRows {
  torch::Tensor ids, mask;
};

PaddedRows pad_right(const std::vector<std::vector<int64_t>>& rows) {
  size_t width = 0;
  for (const auto& r : rows) width = std::max(width, r.size());
  PaddedRows b{
      torch::zeros({static_cast<int64_t>(rows.size()), static_cast<int64_t>(width)}, torch::kLong),
      torch::zeros({static_cast<int64_t>(rows.size()), static_cast<int64_t>(width)}, torch::kLong)};
  for (size_t r = 0; r < rows.size(); ++r)
    for (size_t j = 0; j < rows[r].size(); ++j) {
      b.ids[static_cast<int64_t>(r)][static_cast<int64_t>(j)] = rows[r][j];
      b.mask[static_cast<int64_t>(r)][static_cast<int64_t>(j)] = 1;
    }
  return b;
}

std::vector<int64_t> counting(int64_t first, int64_t count) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < count; ++i) out.push_back(1 + (first + 7 * i) % 40);
  return out;
}

std::vector<int64_t> joined(std::vector<int64_t> a, const std::vector<int64_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Three groups in a mixed order: two rows after a 20-token prefix; three after a 14-token one,
// one of them ending where the prefix ends; and a short row of its own.
struct Batch {
  std::vector<std::vector<int64_t>> rows;
  std::vector<std::vector<int64_t>> candidates;
};

Batch mixed_groups() {
  const auto long_prefix = counting(3, 20), short_prefix = counting(11, 14);
  Batch b;
  b.rows = {joined(long_prefix, counting(5, 4)),
            joined(short_prefix, counting(2, 6)),
            counting(17, 3),
            joined(long_prefix, counting(9, 2)),
            short_prefix,
            joined(short_prefix, counting(23, 3))};
  b.candidates = {{0, 3}, {1, 4, 5}};
  return b;
}

std::vector<const std::vector<int64_t>*> pointers(const std::vector<std::vector<int64_t>>& rows) {
  std::vector<const std::vector<int64_t>*> out;
  for (const auto& r : rows) out.push_back(&r);
  return out;
}

std::vector<int64_t> lengths_of(const std::vector<std::vector<int64_t>>& rows) {
  std::vector<int64_t> out;
  for (const auto& r : rows) out.push_back(static_cast<int64_t>(r.size()));
  return out;
}

std::vector<torch::Tensor> gradients(TransformerImpl& model, const torch::Tensor& value) {
  model.zero_grad();
  value.backward();
  std::vector<torch::Tensor> out;
  // Weights the value does not reach (the LM head, for hidden states) have no gradient: zero.
  for (const auto& p : model.parameters())
    out.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
  return out;
}

void expect_same_gradients(TransformerImpl& model, const std::vector<torch::Tensor>& want,
                           const std::vector<torch::Tensor>& got) {
  const auto names = model.named_parameters().keys();
  ASSERT_EQ(want.size(), got.size());
  for (size_t i = 0; i < want.size(); ++i)
    test::expect_close_to_scale(got[i], want[i], 1e-5, "gradient of " + names[i]);
}

}  // namespace

TEST(SharedPrefix, CommonPrefixGroupsFindTheLongestSharedBeginning) {
  const std::vector<std::vector<int64_t>> rows = {{4, 5, 6, 7}, {4, 5, 9}, {8, 5, 6}, {4, 5, 6},
                                                  {1, 2},       {1, 2, 3}, {9}};
  const auto groups =
      common_prefix_groups(pointers(rows), {{0, 1}, {0, 3}, {2, 3}, {4, 5}, {6}, {0, 1, 3}});
  // {2, 3} share no first token and {6} is alone: left out.
  ASSERT_EQ(groups.size(), 4u);
  EXPECT_EQ(groups[0].rows, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(groups[0].prefix, 2);
  EXPECT_EQ(groups[1].prefix, 3);  // row 3 is row 0's beginning
  EXPECT_EQ(groups[2].prefix, 2);  // the shorter row whole
  EXPECT_EQ(groups[3].prefix, 2);  // the least over three rows
}

TEST(SharedPrefix, HiddenStatesAndGradientsEqualThePaddedBatch) {
  const ModelConfig config = test::llama_config(48, 32, 64, 2, 4, 2, 64);
  const Batch b = mixed_groups();
  const auto groups = common_prefix_groups(pointers(b.rows), b.candidates);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0].prefix, 20);
  EXPECT_EQ(groups[1].prefix, 14);
  // The packed path must be the one taken.
  // Three packs (26, 23 and 3 tokens) in two rows: the lone row beside the 23-token pack.
  ASSERT_EQ(prefix_packed_rows(config, lengths_of(b.rows), groups), 2);
  const PaddedRows padded = pad_right(b.rows);
  Transformer model = test::sharp_random_model(config, 5);
  const auto packed = hidden_sharing_prefixes(*model, padded.ids, padded.mask, groups);
  const auto plain = hidden_sharing_prefixes(*model, padded.ids, padded.mask, {});
  ASSERT_EQ(packed.sizes(), plain.sizes());
  // Padding positions are unspecified: compare and weigh the real ones only.
  const auto real = padded.mask.to(torch::kFloat).unsqueeze(-1);
  test::expect_close_to_scale(packed * real, plain * real, 1e-5, "hidden states");
  const auto weights = torch::randn(plain.sizes()) * real;
  expect_same_gradients(*model, gradients(*model, (plain * weights).sum()),
                        gradients(*model, (packed * weights).sum()));
}

// The states at output positions are those of the full pass there, forward and backward: on a
// padded batch (left and right), with grouped key/value heads, q/k/v biases, adapters on q/k/v
// and o, and recomputed layers; positions repeated and out of order.
TEST(OutputPositions, HiddenStatesAndGradientsEqualTheFullPassThere) {
  ModelConfig config = test::llama_config(48, 32, 64, 3, 4, 2, 64);
  config.attention_bias = true;
  // Rows of 12, 9 (left-padded) and 7 (right-padded) tokens.
  auto ids = (torch::arange(36, torch::kLong).view({3, 12}) * 5) % 47 + 1;
  auto mask = torch::ones({3, 12}, torch::kLong);
  mask[1].narrow(0, 0, 3).zero_();
  mask[2].narrow(0, 7, 5).zero_();
  const auto outputs =
      torch::tensor({11, 3, 5, 11, 11, 10, 4, 7, 0, 2, 6, 6}, torch::kLong).view({3, 4});
  const auto positions = positions_from_mask(mask);
  const auto allowed = causal_mask(mask.to(torch::kBool), 12);
  for (const bool adapters : {false, true}) {
    for (const bool recompute : {false, true}) {
      SCOPED_TRACE(std::string(adapters ? "adapters" : "no adapters") +
                   (recompute ? ", recomputed layers" : ""));
      Transformer model = test::sharp_random_model(config, 21);
      if (adapters) {
        LoraOptions o;
        o.rank = 4;
        o.targets = {"q_proj", "k_proj", "v_proj", "o_proj"};
        attach_lora(*model, o, /*seed=*/3, "test");
        torch::NoGradGuard no_grad;
        for (auto& p : model->named_parameters())
          if (p.key().find("lora_B") != std::string::npos) p.value().normal_(0, 0.2);
      }
      model->model->activation_checkpointing = recompute;
      const auto full = model->hidden(ids, positions, allowed);
      const auto at = outputs.unsqueeze(-1).expand({3, 4, full.size(2)});
      const auto wanted = model->hidden(ids, positions, allowed, nullptr, outputs);
      ASSERT_EQ(wanted.sizes(), torch::IntArrayRef({3, 4, 32}));
      test::expect_close_to_scale(wanted, full.gather(1, at), 1e-5, "hidden states");
      const auto weights = torch::randn({3, 4, 32});
      expect_same_gradients(
          *model,
          gradients(*model, (model->hidden(ids, positions, allowed).gather(1, at) * weights).sum()),
          gradients(*model,
                    (model->hidden(ids, positions, allowed, nullptr, outputs) * weights).sum()));
    }
  }
}

// hidden_sharing_prefixes' output positions, packed and padded, give the states of the full
// padded pass at those positions of the batch's rows.
TEST(OutputPositions, PackedBatchesGiveTheStatesOfTheirRows) {
  const ModelConfig config = test::llama_config(48, 32, 64, 2, 4, 2, 64);
  const Batch b = mixed_groups();
  const auto groups = common_prefix_groups(pointers(b.rows), b.candidates);
  ASSERT_EQ(prefix_packed_rows(config, lengths_of(b.rows), groups), 2);
  const PaddedRows padded = pad_right(b.rows);
  // Each row's last token and two more of its positions (a prefix position among them).
  const auto last = last_token_index(padded.mask);
  const auto outputs = torch::stack({last, torch::zeros_like(last) + 1, last.div(2, "floor")}, 1);
  Transformer model = test::sharp_random_model(config, 5);
  const auto full = hidden_sharing_prefixes(*model, padded.ids, padded.mask, {});
  const auto at = outputs.unsqueeze(-1).expand({outputs.size(0), 3, full.size(2)});
  for (const bool share : {false, true}) {
    SCOPED_TRACE(share ? "packed" : "padded");
    bool packed = !share;
    const auto wanted =
        hidden_sharing_prefixes(*model, padded.ids, padded.mask,
                                share ? groups : std::vector<PrefixGroup>{}, &packed, outputs);
    EXPECT_EQ(packed, share);
    test::expect_close_to_scale(wanted, full.gather(1, at), 1e-5, "hidden states");
    const auto weights = torch::randn(wanted.sizes());
    expect_same_gradients(
        *model,
        gradients(
            *model,
            (hidden_sharing_prefixes(*model, padded.ids, padded.mask, {}).gather(1, at) * weights)
                .sum()),
        gradients(*model, (hidden_sharing_prefixes(*model, padded.ids, padded.mask,
                                                   share ? groups : std::vector<PrefixGroup>{},
                                                   nullptr, outputs) *
                           weights)
                              .sum()));
  }
}

TEST(SharedPrefix, ShortPrefixesAreNotPacked) {
  const ModelConfig config = test::llama_config(48, 32, 64, 2, 4, 2, 64);
  // Two rows of 30 tokens sharing 2: packing saves too little of the layers' work.
  const std::vector<std::vector<int64_t>> rows = {joined({1, 2}, counting(4, 28)),
                                                  joined({1, 2}, counting(9, 28))};
  const auto groups = common_prefix_groups(pointers(rows), {{0, 1}});
  ASSERT_EQ(groups.size(), 1u);
  EXPECT_EQ(prefix_packed_rows(config, lengths_of(rows), groups), 0);
  // A batch with nothing shared is the padded batch itself.
  EXPECT_EQ(prefix_packed_rows(config, lengths_of(rows), {}), 0);
}

TEST(SharedPrefix, PairLogProbsAndGradientsEqualOneRowPerResponse) {
  const ModelConfig config = test::llama_config(48, 32, 64, 2, 4, 2, 64);
  // Pairs whose responses begin alike past the prompt, differ at once, or share only part of
  // the prompt's tokens (as a tokenizer may merge across the boundary).
  const auto prompt = counting(2, 18);
  std::vector<PreferencePair> pairs(3);
  pairs[0].chosen = joined(prompt, {5, 6, 7, 8});
  pairs[0].rejected = joined(prompt, {5, 6, 9});
  pairs[1].chosen = joined(prompt, {30, 31});
  pairs[1].rejected = joined(prompt, {12, 13, 14, 15, 16});
  auto cut = prompt;
  cut.back() = 39;
  pairs[2].chosen = joined(prompt, {21, 22, 23});
  pairs[2].rejected = joined(cut, {24});
  for (auto& p : pairs) {
    p.chosen_prompt_tokens = 18;
    p.rejected_prompt_tokens = 18;
  }
  const std::vector<int64_t> order = {2, 0, 1};
  const PairSlice slice{pairs, order, 0, 3};
  {
    std::vector<std::vector<int64_t>> rows;
    for (int64_t i : order) rows.push_back(pairs[static_cast<size_t>(i)].chosen);
    for (int64_t i : order) rows.push_back(pairs[static_cast<size_t>(i)].rejected);
    // The packed path must be the one taken.
    ASSERT_GT(prefix_packed_rows(config, lengths_of(rows),
                                 common_prefix_groups(pointers(rows), {{0, 3}, {1, 4}, {2, 5}})),
              0);
  }
  Transformer model = test::sharp_random_model(config, 9);
  const auto sums_of = [&](const SideLogProbs& s) { return torch::cat({s.chosen, s.rejected}); };
  const SideLogProbs plain = pair_log_probs(*model, slice, 0, false);
  const SideLogProbs shared = pair_log_probs(*model, slice, 0, true);
  test::expect_close_to_scale(sums_of(shared), sums_of(plain), 1e-5, "summed log-probs");
  EXPECT_TRUE(torch::equal(shared.chosen_tokens, plain.chosen_tokens));
  EXPECT_TRUE(torch::equal(shared.rejected_tokens, plain.rejected_tokens));
  EXPECT_EQ(shared.tokens, plain.tokens);
  const auto weights = torch::tensor({0.3f, -1.2f, 0.7f, 1.1f, -0.4f, 0.9f});
  expect_same_gradients(
      *model, gradients(*model, (sums_of(pair_log_probs(*model, slice, 0, false)) * weights).sum()),
      gradients(*model, (sums_of(pair_log_probs(*model, slice, 0, true)) * weights).sum()));
}

TEST(SharedPrefix, RewardScoresAndGradientsEqualOneRowPerResponse) {
  ModelConfig config = test::llama_config(48, 32, 64, 2, 4, 2, 64);
  config.num_labels = 1;
  const auto prompt = counting(6, 16);
  std::vector<PreferencePair> pairs(2);
  pairs[0].chosen = joined(prompt, {5, 6, 7});
  pairs[0].rejected = joined(prompt, {8});
  pairs[1].chosen = joined(prompt, {9, 10, 11, 12});
  pairs[1].rejected = joined(prompt, {9, 13});
  std::vector<TokenizedRanking> rankings(1);
  rankings[0].responses = {joined(prompt, {1, 2}), joined(prompt, {3}), joined(prompt, {4, 5, 6})};
  rankings[0].ranks = {0, 2, 1};
  const std::vector<int64_t> order = {1, 0};
  const std::vector<ComparisonBatch> batches = {
      make_pair_batch(pairs, order, 0, 2, /*pad_id=*/0, /*use_margin=*/false),
      make_ranking_batch(rankings, {0}, 0, 1, /*pad_id=*/0)};
  Transformer model = test::sharp_random_model(config, 13);
  for (const ComparisonBatch& batch : batches) {
    SCOPED_TRACE(std::to_string(batch.responses()) + " responses");
    ASSERT_EQ(batch.shared_prefixes.size(), batch.responses() == 4 ? 2u : 1u);
    std::vector<int64_t> lengths;
    for (int64_t r = 0; r < batch.responses(); ++r)
      lengths.push_back(batch.rows.attention_mask[r].sum().item<int64_t>());
    ASSERT_GT(prefix_packed_rows(config, lengths, batch.shared_prefixes), 0);
    const auto plain = batch.scores(*model, false);
    const auto shared = batch.scores(*model, true);
    test::expect_close_to_scale(shared, plain, 1e-5, "scores");
    const auto weights = torch::linspace(-1, 1, batch.responses());
    expect_same_gradients(*model, gradients(*model, (batch.scores(*model, false) * weights).sum()),
                          gradients(*model, (batch.scores(*model, true) * weights).sum()));
  }
}
