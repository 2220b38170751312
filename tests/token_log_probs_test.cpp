// The fused token log-probabilities against LibTorch's log_softmax + gather: values and logit
// gradients within 1e-5 over vocabularies with and without a vector tail, ignored targets (0 and
// no gradient), NaN logits carried to the result, bad targets refused with one line, and the
// language-model loss built on it equal to LibTorch's cross_entropy.
#include "common/train/token_log_probs.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>
#include <string>

#include "common/data/batching.h"
#include "common/model/attention_mask.h"
#include "common/train/lm_loss.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

// The names of the autograd nodes from t back along first inputs, two deep ("A <- B").
std::string last_nodes(const torch::Tensor& t) {
  const auto node = t.grad_fn();
  if (!node) return "";
  std::string names = node->name();
  if (!node->next_edges().empty() && node->next_edges().front().function)
    names += " <- " + node->next_edges().front().function->name();
  return names;
}

}  // namespace

TEST(TokenLogProbs, EqualsTheFormulaForwardAndBackward) {
  torch::manual_seed(11);
  for (int64_t vocab : {1, 7, 33, 512, 3001}) {
    SCOPED_TRACE("vocabulary " + std::to_string(vocab));
    const auto logits0 = torch::randn({3, 5, vocab}) * 5 + 1;
    auto targets = torch::randint(vocab, {3, 5}, torch::kLong);
    targets[0][1] = -100;
    targets[2][4] = -100;
    const auto upstream = torch::randn({3, 5});

    auto logits = logits0.clone().requires_grad_();
    const auto got = token_log_probs(logits, targets);
    (got * upstream).sum().backward();
    auto logits_ref = logits0.clone().requires_grad_();
    const auto want = token_log_probs_reference(logits_ref, targets);
    (want * upstream).sum().backward();

    EXPECT_EQ(got.sizes(), targets.sizes());
    test::expect_close_to_scale(got, want, 1e-5, "log-probabilities");
    test::expect_close_to_scale(logits.grad(), logits_ref.grad(), 1e-5, "logit gradient");
    EXPECT_EQ(got[0][1].item<float>(), 0.0f);
    EXPECT_EQ(logits.grad()[0][1].abs().sum().item<float>(), 0.0f) << "ignored row has gradient";
    EXPECT_NE(last_nodes(got).find("TokenLogProbsFunction"), std::string::npos) << last_nodes(got);
  }
}

// With the entropy beside them: the same log-probabilities and gradient as token_log_probs, and
// the entropy of each position equal to the formula in double (0 where the target is ignored, none
// of its gradient); the LibTorch path (double logits) gives the same.
TEST(TokenLogProbs, EntropyBesideTheLogProbsEqualsTheFormula) {
  torch::manual_seed(12);
  for (int64_t vocab : {7, 3001}) {
    SCOPED_TRACE("vocabulary " + std::to_string(vocab));
    auto logits0 = torch::randn({3, 5, vocab}) * 5 + 1;
    logits0[0][1] *= 30;  // nearly one-hot
    logits0[2][0].narrow(0, 0, vocab / 2).fill_(-std::numeric_limits<float>::infinity());
    logits0[2][3].fill_(-std::numeric_limits<float>::infinity());  // all but one token masked
    logits0[2][3][vocab - 1] = 2.5;
    auto targets = torch::randint(vocab, {3, 5}, torch::kLong);
    targets[1][2] = -100;
    targets[2][0] = vocab - 1;
    targets[2][3] = vocab - 1;
    const auto upstream = torch::randn({3, 5});
    const auto logp64 = torch::log_softmax(logits0.to(torch::kDouble), -1);
    auto expected_entropy =
        -torch::where(logp64.exp() > 0, logp64.exp() * logp64, torch::zeros_like(logp64)).sum(-1);
    expected_entropy[1][2] = 0.0;

    auto logits = logits0.clone().requires_grad_();
    const auto [logp, entropy] = token_log_probs_and_entropy(logits, targets);
    (logp * upstream).sum().backward();
    auto logits_alone = logits0.clone().requires_grad_();
    const auto alone = token_log_probs(logits_alone, targets);
    (alone * upstream).sum().backward();

    EXPECT_TRUE(torch::equal(logp, alone));
    EXPECT_TRUE(torch::equal(logits.grad(), logits_alone.grad()));
    EXPECT_FALSE(entropy.requires_grad());
    EXPECT_EQ(entropy.sizes(), targets.sizes());
    test::expect_close_to_scale(entropy.to(torch::kDouble), expected_entropy, 1e-5, "entropy");
    const auto [logp_double, entropy_double] =
        token_log_probs_and_entropy(logits0.to(torch::kDouble), targets);
    test::expect_close_to_scale(entropy_double.to(torch::kDouble), expected_entropy, 1e-5,
                                "entropy (LibTorch path, in float as its log-probabilities)");
    test::expect_close_to_scale(logp_double.to(torch::kFloat), logp, 1e-5, "log-probabilities");
  }
}

TEST(TokenLogProbs, StridedLogitsAndOtherDtypesGiveTheFormula) {
  torch::manual_seed(12);
  const auto wide = torch::randn({4, 6, 40});
  const auto logits = wide.narrow(1, 1, 4);  // not contiguous: rows of a larger tensor
  const auto targets = torch::randint(40, {4, 4}, torch::kLong);
  test::expect_close_to_scale(token_log_probs(logits, targets),
                              token_log_probs_reference(logits, targets), 1e-5, "strided");
  const auto doubles = wide.to(torch::kDouble).requires_grad_();
  const auto ids = torch::randint(40, {4, 6}, torch::kLong);
  const auto got = token_log_probs(doubles, ids);
  EXPECT_TRUE(torch::equal(got, token_log_probs_reference(doubles, ids)));
  EXPECT_EQ(last_nodes(got).find("TokenLogProbsFunction"), std::string::npos) << last_nodes(got);
}

TEST(TokenLogProbs, NanLogitsReachTheResultOfTheirRowOnly) {
  auto logits = torch::zeros({3, 20});
  logits[0][17] = std::numeric_limits<float>::quiet_NaN();
  logits[2][3] = std::numeric_limits<float>::quiet_NaN();
  const auto targets = torch::tensor({1, 2, -100}, torch::kLong);
  const auto got = token_log_probs(logits, targets);
  EXPECT_TRUE(std::isnan(got[0].item<float>()));
  EXPECT_NEAR(got[1].item<float>(), -std::log(20.0), 1e-6);
  EXPECT_EQ(got[2].item<float>(), 0.0f) << "an ignored row's NaN is not read";
}

TEST(TokenLogProbs, TargetsOutsideTheVocabularyAreRefused) {
  const auto logits = torch::zeros({2, 2, 10});
  const auto bad = torch::tensor({{1, 10}, {-100, 3}}, torch::kLong);
  const std::string message = test::error_of([&] { token_log_probs(logits, bad); });
  EXPECT_NE(message.find("target id 10 is outside the vocabulary [0, 10)"), std::string::npos)
      << message;
  const auto negative = torch::tensor({{1, -3}, {-100, 3}}, torch::kLong);
  EXPECT_NE(test::error_of([&] { token_log_probs(logits, negative); }).find("target id -3"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] {
              token_log_probs(logits, torch::zeros({2, 3}, torch::kLong));
            }).find("do not match"),
            std::string::npos);
}

namespace {

// Random ids and targets over a 97-token vocabulary, one example a row (segments 0).
TokenBatch random_token_batch(int64_t rows, int64_t length) {
  TokenBatch batch;
  batch.input_ids = torch::randint(97, {rows, length}, torch::kLong);
  batch.targets = torch::randint(97, {rows, length}, torch::kLong);
  batch.segment_ids = torch::zeros({rows, length}, torch::kLong);
  return batch;
}

}  // namespace

TEST(TokenLogProbs, LanguageModelLossEqualsCrossEntropy) {
  torch::manual_seed(13);
  auto model = test::sharp_random_model(test::llama_config(97, 32, 64, 2, 4, 2, 64), 7);
  TokenBatch batch = random_token_batch(2, 9);
  batch.targets[1][0] = -100;
  batch.target_count = 17;
  const auto loss = lm_loss_sum(*model, batch);
  loss.backward();
  const auto fused_grad = model->parameters().front().grad().clone();
  for (auto& p : model->parameters()) p.mutable_grad().reset();

  auto logits =
      model->logits(model->hidden(batch.input_ids, positions_from_segments(batch.segment_ids),
                                  segment_causal_mask(batch.segment_ids)));
  const auto want = torch::nn::functional::cross_entropy(
      logits.view({-1, 97}), batch.targets.view({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
  want.backward();
  EXPECT_NEAR(loss.item<double>(), want.item<double>(), 1e-5 * want.item<double>());
  test::expect_close_to_scale(fused_grad, model->parameters().front().grad(), 1e-5,
                              "first parameter's gradient");
}

// SFT's batches (prompts predict nothing): the loss computes the last layer and the LM head at the
// targeted positions only, and gives the loss and every parameter's gradient of the full pass.
// Rows hold two packed examples, one example, or no target at all; targets are uneven per row.
TEST(TokenLogProbs, LanguageModelLossAtTargetedPositionsEqualsTheFullPass) {
  torch::manual_seed(19);
  auto model = test::sharp_random_model(test::llama_config(97, 32, 64, 3, 4, 2, 64), 9);
  TokenBatch batch = random_token_batch(3, 12);
  batch.segment_ids[0].narrow(0, 5, 7).fill_(1);  // row 0: examples of 5 and 7 tokens
  batch.targets[0].narrow(0, 0, 2).fill_(-100);
  batch.targets[0].narrow(0, 5, 4).fill_(-100);
  batch.targets[1].narrow(0, 0, 9).fill_(-100);  // row 1: 3 targets
  batch.segment_ids[2].narrow(0, 10, 2).fill_(-1);
  batch.targets[2].fill_(-100);  // row 2: none, and padding
  batch.target_count = batch.targets.ne(-100).sum().item<int64_t>();
  auto gradients = [&](const torch::Tensor& loss) {
    for (auto& p : model->parameters()) p.mutable_grad().reset();
    loss.backward();
    std::vector<torch::Tensor> out;
    for (auto& p : model->parameters())
      out.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
    return out;
  };
  const auto loss = lm_loss_sum(*model, batch);
  const auto loss_grads = gradients(loss);
  const auto logits =
      model->logits(model->hidden(batch.input_ids, positions_from_segments(batch.segment_ids),
                                  segment_causal_mask(batch.segment_ids)));
  const auto want = -token_log_probs(logits, batch.targets).sum();
  const auto want_grads = gradients(want);
  EXPECT_NEAR(loss.item<double>(), want.item<double>(), 1e-5 * want.item<double>());
  ASSERT_EQ(loss_grads.size(), want_grads.size());
  const auto names = model->named_parameters().keys();
  for (size_t i = 0; i < want_grads.size(); ++i)
    test::expect_close_to_scale(loss_grads[i], want_grads[i], 1e-5, "gradient of " + names[i]);
}

// The LM head at the targeted positions only (a prompt's tokens predict nothing) gives the
// log-probabilities and every parameter's gradient of the head over all positions; ignored
// positions give 0; a batch with no target at all still keeps the graph (a zero loss whose
// backward runs).
TEST(TokenLogProbs, TargetLogProbsEqualTheHeadOverEveryPosition) {
  torch::manual_seed(17);
  auto model = test::sharp_random_model(test::llama_config(97, 32, 64, 2, 4, 2, 64), 5);
  const auto ids = torch::randint(97, {3, 8}, torch::kLong);
  const auto segments = torch::zeros({3, 8}, torch::kLong);
  auto targets = torch::randint(97, {3, 8}, torch::kLong);
  targets.narrow(1, 0, 3).fill_(-100);  // a prompt of three tokens on every row
  targets[2].fill_(-100);               // and a row with no target
  auto hidden_of = [&] {
    return model->hidden(ids, positions_from_segments(segments), segment_causal_mask(segments));
  };
  auto gradients = [&](const torch::Tensor& loss) {
    for (auto& p : model->parameters()) p.mutable_grad().reset();
    loss.backward();
    std::vector<torch::Tensor> out;
    for (auto& p : model->parameters()) out.push_back(p.grad().clone());
    return out;
  };
  const auto picked = target_log_probs(*model, hidden_of(), targets);
  const auto picked_grads = gradients(picked.sum());
  const auto full = token_log_probs(model->logits(hidden_of()), targets);
  const auto full_grads = gradients(full.sum());

  ASSERT_EQ(picked.sizes(), targets.sizes());
  EXPECT_TRUE(picked.masked_select(targets.eq(-100)).eq(0).all().item<bool>());
  EXPECT_LT(picked.masked_select(targets.ne(-100)).max().item<double>(), 0.0);
  test::expect_close_to_scale(picked, full, 1e-6, "log-probs");
  ASSERT_EQ(picked_grads.size(), full_grads.size());
  for (size_t i = 0; i < picked_grads.size(); ++i)
    test::expect_close_to_scale(picked_grads[i], full_grads[i], 1e-5,
                                "gradient of parameter " + std::to_string(i));

  const auto none = target_log_probs(*model, hidden_of(), torch::full({3, 8}, -100L));
  EXPECT_EQ(none.abs().sum().item<double>(), 0.0);
  ASSERT_TRUE(none.requires_grad());
  const auto zero_grads = gradients(none.sum());
  EXPECT_EQ(zero_grads.front().abs().sum().item<double>(), 0.0);
}
