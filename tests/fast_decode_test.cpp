// FastDecoder (the generator's BLAS decode step) against the torch path it replaces: logits of
// every decode step, the KV cache it writes, and whole generate() runs (greedy and seeded
// sampling), on random stories260k-shaped and GQA/untied/biased models and the real stories260K.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/io/llama2c.h"
#include "common/model/attention_mask.h"
#include "common/rollout/fast_decode.h"
#include "common/rollout/generator.h"
#include "common/tokenizer/tokenizer.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

Transformer stories260k_shaped() {
  return test::sharp_random_model(builtin_shape("stories260k"), 7);
}

// Grouped-query attention with 3 query heads per key/value head, an LM head of its own and
// biased q/k/v projections (Qwen2's layout), and llama3 rope_scaling over a 64-token original
// context, so that its 4 frequencies fall in all three bands (kept, blended, stretched).
Transformer gqa_untied() {
  ModelConfig c = test::llama_config(96, 48, 80, 2, 6, 2, 64);
  c.attention_bias = true;
  c.rope_scaling = {"llama3", 8.0, 1.0, 4.0, 64};
  auto model = test::sharp_random_model(c, 3);
  torch::NoGradGuard no_grad;
  for (auto& [name, p] : model->named_weights())
    if (name.find(".bias") != std::string::npos) p.normal_(0, 0.1);
  return model;
}

// Within 1e-5 of the reference's largest magnitude: what summing in another order can change.
void expect_close_to_reference(const torch::Tensor& got, const torch::Tensor& reference,
                               const std::string& what) {
  const double scale = reference.abs().max().item<double>();
  EXPECT_LE((got - reference).abs().max().item<double>(), 1e-5 * scale)
      << what << " (largest magnitude " << scale << ")";
}

const std::vector<std::vector<int64_t>> kPromptTokens = {
    {1, 5, 9}, {1}, {1, 3, 4, 8, 30, 22, 7}, {1, 12}};

// Prefills `prompts` (left-padded) into two caches with the torch path, then decodes `steps`
// tokens (the torch path's greedy choices) through the torch path and FastDecoder side by side.
// Each step's logits agree, and so do the caches at the end.
void expect_steps_match(
    TransformerImpl& model, const std::vector<std::vector<int64_t>>& prompts, int64_t steps,
    decode_kernels::Isa isa = decode_kernels::best_isa(),
    FastDecoder::WeightPanels panels = FastDecoder::WeightPanels::where_faster) {
  torch::NoGradGuard no_grad;
  const int64_t batch = static_cast<int64_t>(prompts.size());
  int64_t prompt_len = 0;
  for (const auto& p : prompts) prompt_len = std::max<int64_t>(prompt_len, p.size());
  auto ids = torch::zeros({batch, prompt_len}, torch::kLong);
  auto mask = torch::zeros({batch, prompt_len}, torch::kBool);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t n = static_cast<int64_t>(prompts[b].size());
    ids[b].narrow(0, prompt_len - n, n).copy_(torch::tensor(prompts[b], torch::kLong));
    mask[b].narrow(0, prompt_len - n, n).fill_(true);
  }
  KVCache torch_cache(model.config, batch, prompt_len + steps, torch::kFloat);
  KVCache fast_cache(model.config, batch, prompt_len + steps, torch::kFloat);
  torch::Tensor logits;
  for (KVCache* cache : {&torch_cache, &fast_cache}) {
    cache->key_valid.narrow(1, 0, prompt_len).copy_(mask);
    auto hidden =
        model.hidden(ids, positions_from_mask(mask), causal_mask(mask, prompt_len), cache);
    logits = model.logits(hidden.narrow(1, prompt_len - 1, 1)).squeeze(1);
  }
  ASSERT_TRUE(FastDecoder::supports(model, fast_cache));
  FastDecoder fast(model, fast_cache, isa, quant_kernels::best_isa(), panels);
  auto position = mask.to(torch::kLong).sum(1);
  for (int64_t step = 0; step < steps; ++step) {
    const auto token = logits.argmax(-1);
    for (KVCache* cache : {&torch_cache, &fast_cache})
      cache->key_valid.narrow(1, cache->length, 1).fill_(true);
    auto allowed = causal_mask(torch_cache.key_valid.narrow(1, 0, torch_cache.length + 1), 1);
    auto hidden = model.hidden(token.unsqueeze(1), position.unsqueeze(1), allowed, &torch_cache);
    logits = model.logits(hidden).squeeze(1);
    const auto fast_logits = fast.step(token, position);
    ASSERT_EQ(fast_logits.sizes(), logits.sizes());
    expect_close_to_reference(fast_logits, logits, "logits of step " + std::to_string(step));
    position = position + 1;
  }
  EXPECT_EQ(fast_cache.length, torch_cache.length);
  for (size_t l = 0; l < torch_cache.keys.size(); ++l) {
    expect_close_to_reference(fast_cache.keys[l], torch_cache.keys[l],
                              "keys of layer " + std::to_string(l));
    expect_close_to_reference(fast_cache.values[l], torch_cache.values[l],
                              "values of layer " + std::to_string(l));
  }
}

// generate() with and without the fast step and sampler: the same tokens, and per-step log-probs
// within 1e-5.
// Returns the fast path's batch.
GenerationBatch expect_generate_matches(TransformerImpl& model,
                                        const std::vector<std::vector<int64_t>>& prompts,
                                        SamplingOptions o) {
  o.full_pass_logprobs = false;  // the decode steps' own log-probs, where the paths could differ
  o.fast_decode = false;
  const auto reference = generate(model, prompts, o);
  o.fast_decode = true;
  const auto fast = generate(model, prompts, o);
  EXPECT_TRUE(torch::equal(fast.response_ids, reference.response_ids))
      << "temperature " << o.temperature << "\nfast:\n"
      << fast.response_ids << "\ntorch:\n"
      << reference.response_ids;
  EXPECT_TRUE(torch::equal(fast.response_mask, reference.response_mask));
  // Relative to the largest log-probability (about -9 on these models), as the logits are: the
  // two paths' log-probs differ by up to 1.7e-5 (over 80 seeds), as much as the torch decode
  // steps' own differ from a full forward pass (generation_test.cpp).
  expect_close_to_reference(fast.logprobs, reference.logprobs, "log-probs");
  return fast;
}

void expect_generate_matches_all_modes(TransformerImpl& model,
                                       const std::vector<std::vector<int64_t>>& prompts) {
  SamplingOptions o;
  o.max_new_tokens = 24;
  o.stop_at_eos = false;
  o.temperature = 0;
  expect_generate_matches(model, prompts, o);
  // Unfiltered sampling, which the fast path draws in loops of its own.
  o.temperature = 1.0;
  o.seed = 11;
  expect_generate_matches(model, prompts, o);
  for (size_t b = 0; b < prompts.size(); ++b) o.row_seeds.push_back(200 + b);
  expect_generate_matches(model, prompts, o);
  o.row_seeds.clear();
  o.temperature = 0.8;
  o.top_k = 20;
  o.top_p = 0.9;
  o.seed = 11;
  expect_generate_matches(model, prompts, o);
  for (size_t b = 0; b < prompts.size(); ++b) o.row_seeds.push_back(100 + b);
  expect_generate_matches(model, prompts, o);
}

}  // namespace

TEST(FastDecode, SupportsOnlyUnshardedFp32CpuLMs) {
  auto model = stories260k_shaped();
  KVCache cache(model->config, 2, 8, torch::kFloat);
  EXPECT_TRUE(FastDecoder::supports(*model, cache));
  KVCache double_cache(model->config, 2, 8, torch::kDouble);
  EXPECT_FALSE(FastDecoder::supports(*model, double_cache));
  model->to(torch::kDouble);
  EXPECT_FALSE(FastDecoder::supports(*model, double_cache));
  ModelConfig critic = builtin_shape("stories260k");
  critic.num_labels = 1;
  Transformer scorer(critic);
  EXPECT_FALSE(FastDecoder::supports(*scorer, cache));
}

TEST(FastDecode, StepLogitsMatchTorchPathStories260kShape) {
  auto model = stories260k_shaped();
  expect_steps_match(*model, kPromptTokens, 20);
  expect_steps_match(*model, {{1, 40, 41, 42}}, 20);
}

TEST(FastDecode, StepLogitsMatchTorchPathGqaUntiedBiased) {
  auto model = gqa_untied();
  expect_steps_match(*model, kPromptTokens, 20);
  expect_steps_match(*model, {{1, 40, 41}}, 20);
}

// Every kernel set this CPU runs (the tests above take the fastest), on head dims of one vector
// (8), several (16) and an odd size that the vector kernels leave to the portable loops (12).
TEST(FastDecode, StepLogitsMatchTorchPathWithEachKernelSet) {
  std::vector<decode_kernels::Isa> sets = {decode_kernels::Isa::portable};
  if (decode_kernels::supported(decode_kernels::Isa::avx2_fma))
    sets.push_back(decode_kernels::Isa::avx2_fma);
  else
    std::cout << "[   NOTE   ] no AVX2+FMA on this CPU: only the portable kernels checked\n";
  for (auto* make : {&stories260k_shaped, &gqa_untied}) {
    auto model = make();
    for (auto isa : sets) {
      SCOPED_TRACE("kernels " + std::to_string(static_cast<int>(isa)));
      expect_steps_match(*model, kPromptTokens, 20, isa);
    }
  }
  for (int64_t heads : {4, 8}) {  // head dims 16 and 8: 2 and 4 query heads per key/value head
    auto model = test::sharp_random_model(test::llama_config(96, 64, 80, 2, heads, 2, 64), 4);
    for (auto isa : sets) {
      SCOPED_TRACE("heads " + std::to_string(heads) + ", kernels " +
                   std::to_string(static_cast<int>(isa)));
      expect_steps_match(*model, kPromptTokens, 20, isa);
    }
  }
  auto odd = test::sharp_random_model(test::llama_config(96, 48, 80, 2, 4, 4, 64), 5);
  for (auto isa : sets) expect_steps_match(*odd, kPromptTokens, 20, isa);
}

// Projections past small_matmul's size at 9 rows (a whole 8-row tile and one more), and widths
// that are not whole 32-output panels (q, o: 192; MLP: 520; vocabulary: 300): where the CPU has
// AVX-512F, every projection and the LM head multiply by PanelMatrix copies; through sgemm
// otherwise. Both agree with the torch path.
TEST(FastDecode, StepLogitsMatchTorchPathThroughWeightPanels) {
  auto model = test::sharp_random_model(test::llama_config(300, 192, 520, 2, 4, 4, 64), 7);
  std::vector<std::vector<int64_t>> prompts;
  for (int64_t row = 0; row < 9; ++row) {
    prompts.push_back({1});
    for (int64_t i = 0; i < row % 4; ++i) prompts.back().push_back(5 + row * 7 + i);
  }
  ASSERT_GE(static_cast<int64_t>(prompts.size()), FastDecoder::kPanelRowsMin);
  {
    KVCache cache(model->config, static_cast<int64_t>(prompts.size()), 8, torch::kFloat);
    const FastDecoder panelled(*model, cache);
    const FastDecoder plain(*model, cache, decode_kernels::best_isa(), quant_kernels::best_isa(),
                            FastDecoder::WeightPanels::never);
    EXPECT_EQ(plain.panel_weights(), 0);
    if (PanelMatrix::available())
      EXPECT_EQ(panelled.panel_weights(), 1 + 7 * model->config.num_hidden_layers);
    else
      std::cout << "[   NOTE   ] no AVX-512F on this CPU: only the sgemm path checked\n";
  }
  expect_steps_match(*model, prompts, 12);
  expect_steps_match(*model, prompts, 12, decode_kernels::best_isa(),
                     FastDecoder::WeightPanels::never);
  expect_generate_matches_all_modes(*model, prompts);
}

TEST(FastDecode, GenerateMatchesTorchPath) {
  for (auto* make : {&stories260k_shaped, &gqa_untied}) {
    auto model = make();
    expect_generate_matches_all_modes(*model, kPromptTokens);
    expect_generate_matches_all_modes(*model, {kPromptTokens[2]});
  }
}

TEST(FastDecode, RowsStoppedAtEosMatchTorchPath) {
  auto model = gqa_untied();
  SamplingOptions o;
  o.max_new_tokens = 24;
  o.temperature = 1.0;
  o.seed = 5;
  // EOS ids this model samples in some rows but not in all, taken from a run that does not stop,
  // so that some rows stop and feed pads after. (Fixed ids left it to chance: whether a random
  // model samples them moved with the summation order of the thread count.)
  o.stop_at_eos = false;
  const auto free_run = generate(*model, kPromptTokens, o);
  std::vector<int64_t> candidates;
  for (int64_t id = 3; id < model->config.vocab_size && candidates.size() < 3; ++id) {
    const auto rows_with_id = (free_run.response_ids == id).any(1).sum().item<int64_t>();
    if (rows_with_id > 0 && rows_with_id < free_run.batch()) candidates.push_back(id);
  }
  ASSERT_FALSE(candidates.empty());
  o.stop_at_eos = true;
  int64_t ended = 0, rows = 0;
  for (int64_t eos : candidates) {
    o.eos_id = eos;
    const auto batch = expect_generate_matches(*model, kPromptTokens, o);
    ended += batch.ended_with_eos.sum().item<int64_t>();
    rows += batch.batch();
  }
  EXPECT_GT(ended, 0);
  EXPECT_LT(ended, rows);
}

// Every row ends early, at a step the torch path's ended check (every few steps: each check is a
// sync on a GPU, whose loop it is) does not fall on: that path cuts its records back to the steps
// the rows ran, and on_step hears of the same steps, as the host loop stops there.
TEST(FastDecode, AllRowsEndingEarlyMatchTorchPath) {
  auto model = gqa_untied();
  // Two sampling seeds under which some token ends every row early. Which seeds those are depends
  // on the model's random biases and on the BLAS's rounding (thread counts), so they are searched.
  int checked = 0;
  for (uint64_t seed = 1; seed <= 64 && checked < 2; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    SamplingOptions o;
    o.max_new_tokens = 40;
    o.temperature = 1.0;  // sampled (greedy rows of a random model loop on tokens of their own)
    o.seed = seed;
    o.stop_at_eos = false;
    const auto free_run = generate(*model, kPromptTokens, o);
    const int64_t width = o.max_new_tokens;
    // As EOS, the token that every row produces, at whose latest first appearance over the rows
    // the batch ends earliest, that end not a multiple of 8 steps.
    int64_t eos = -1, end = width;
    for (int64_t id = 1; id < model->config.vocab_size; ++id) {
      int64_t latest = 0;
      for (int64_t b = 0; b < free_run.batch(); ++b) {
        const auto at = free_run.response_ids[b].eq(id).nonzero();
        latest = std::max(latest, at.numel() > 0 ? at[0][0].item<int64_t>() : width);
      }
      if (latest + 1 < end && (latest + 1) % 8 != 0) eos = id, end = latest + 1;
    }
    if (eos < 0) continue;
    ++checked;
    o.stop_at_eos = true;
    o.eos_id = eos;
    const auto batch = expect_generate_matches(*model, kPromptTokens, o);
    EXPECT_EQ(batch.response_ids.size(1), end);
    EXPECT_TRUE(batch.ended_with_eos.all().item<bool>());
    // The picks each step hands to on_step, on both paths.
    std::vector<std::vector<int64_t>> heard[2];
    for (bool fast : {true, false}) {
      SamplingOptions with = o;
      with.fast_decode = fast;
      auto& steps = heard[fast ? 1 : 0];
      with.on_step = [&steps](const torch::Tensor& picks) {
        EXPECT_TRUE(picks.device().is_cpu());
        steps.emplace_back(picks.data_ptr<int64_t>(), picks.data_ptr<int64_t>() + picks.numel());
      };
      generate(*model, kPromptTokens, with);
    }
    EXPECT_EQ(heard[0].size(), static_cast<size_t>(end));
    EXPECT_EQ(heard[0], heard[1]);
  }
  ASSERT_EQ(checked, 2) << "no two seeds of 1..64 end every row early; change the model";
}

TEST(FastDecode, Stories260KGreedyMatchesTorchPath) {
  TILLER_REQUIRE_SHARED(model_path, "models/stories260K/stories260K.bin");
  TILLER_REQUIRE_SHARED(tok_path, "models/stories260K/tok512.model");
  Tokenizer tok(tok_path);
  auto model = import_llama2c(model_path);
  std::vector<std::vector<int64_t>> prompts;
  for (const char* text :
       {"Once upon a time", "Tom", "The little dog ran to the big park and saw a", "One day"})
    prompts.push_back(tok.encode(text, /*add_bos=*/true));
  expect_steps_match(*model, prompts, 40);
  SamplingOptions o;
  o.max_new_tokens = 116;
  o.temperature = 0;
  o.eos_id = tok.eos_id();
  o.pad_id = tok.pad_id();
  expect_generate_matches(*model, prompts, o);
  expect_generate_matches(*model, {prompts[0]}, o);
}
