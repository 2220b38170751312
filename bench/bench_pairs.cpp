#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "bench/bench.h"
#include "common/data/preference_data.h"
#include "common/io/hf_dir.h"
#include "common/tokenizer/tokenizer.h"
#include "common/train/pairwise_reward.h"
#include "common/util/error.h"
#include "dpo/pair_log_probs.h"

namespace tiller::bench {

namespace {

void check_pairs_options(const PairsOptions& o) {
  check(o.pairs >= 1, "bench pairs: --pairs must be at least 1");
  check(o.micro_batch >= 1, "bench pairs: --micro-batch must be at least 1");
  check(o.prompt_tokens >= 1, "bench pairs: --prompt-tokens must be at least 1");
  check(o.response_tokens >= 1, "bench pairs: --response-tokens must be at least 1");
  check(o.repeats >= 1, "bench pairs: --repeats must be at least 1");
  check(o.data.empty() || !o.model_dir.empty(),
        "bench pairs: --data needs --model (the directory whose tokenizer reads it)");
}

// Pairs of one prompt each: prompt_tokens tokens, then two different responses of 1/2 to all of
// response_tokens tokens, the lengths varying from pair to pair.
std::vector<PreferencePair> synthetic_pairs(const PairsOptions& o, int64_t vocab) {
  std::vector<PreferencePair> pairs(static_cast<size_t>(o.pairs));
  for (int64_t i = 0; i < o.pairs; ++i) {
    PreferencePair& p = pairs[static_cast<size_t>(i)];
    for (int64_t t = 0; t < o.prompt_tokens; ++t) p.chosen.push_back((i * 31 + t * 7 + 3) % vocab);
    p.rejected = p.chosen;
    const int64_t half = (o.response_tokens + 1) / 2;
    const int64_t chosen_len = half + (i * 5) % (o.response_tokens - half + 1);
    const int64_t rejected_len = half + (i * 11 + 3) % (o.response_tokens - half + 1);
    for (int64_t t = 0; t < chosen_len; ++t) p.chosen.push_back((i * 13 + t * 5 + 1) % vocab);
    for (int64_t t = 0; t < rejected_len; ++t) p.rejected.push_back((i * 17 + t * 3 + 2) % vocab);
    p.chosen_prompt_tokens = p.rejected_prompt_tokens = o.prompt_tokens;
  }
  return pairs;
}

std::vector<PreferencePair> file_pairs(const PairsOptions& o, int64_t context) {
  Tokenizer tokenizer(tokenizer_path_in(o.model_dir));
  PreferenceDataOptions data;
  data.path = o.data;
  data.format = o.format;
  data.template_name = o.template_name;
  data.max_seq_len = o.max_seq_len > 0 ? o.max_seq_len : context;
  check(data.max_seq_len <= context, "bench pairs: --max-seq-len " +
                                         std::to_string(data.max_seq_len) +
                                         " exceeds the model's context " + std::to_string(context));
  auto pairs = load_preference_pairs(data, tokenizer, nullptr);
  if (static_cast<int64_t>(pairs.size()) > o.pairs) pairs.resize(static_cast<size_t>(o.pairs));
  return pairs;
}

// The fastest pass of one objective each way (forward and backward of every micro-batch).
struct ObjectiveTimes {
  double shared_s = 1e30, one_row_s = 1e30;
};

}  // namespace

void run_pairs(const PairsOptions& o) {
  // Checked before any output, so that a bad flag never leaves half a table behind.
  check_pairs_options(o);
  apply_threads(o.threads);
  std::string label;
  Transformer policy = load_bench_model(o.model_dir, o.shape, label);
  policy->train();
  ModelConfig reward_config = policy->config;
  reward_config.num_labels = 1;
  Transformer reward(reward_config);
  reward->init_weights(1234);
  reward->train();
  const std::vector<PreferencePair> pairs =
      o.data.empty() ? synthetic_pairs(o, policy->config.vocab_size)
                     : file_pairs(o, policy->config.max_position_embeddings);
  for (const PreferencePair& p : pairs)
    check(static_cast<int64_t>(std::max(p.chosen.size(), p.rejected.size())) <=
              policy->config.max_position_embeddings,
          "bench pairs: --prompt-tokens + --response-tokens exceed the context of " + label + " (" +
              std::to_string(policy->config.max_position_embeddings) + ")");
  const auto order = identity_order(pairs.size());
  const int64_t pad_id = 0;

  // The micro-batches, their tokens, and how many the rule packs: the same for both objectives
  // (the layers' cost does not depend on the head), counted once, outside the clock.
  struct MicroBatch {
    size_t begin, count;
    ComparisonBatch batch;
  };
  std::vector<MicroBatch> batches;
  int64_t tokens = 0, packed_batches = 0;
  for (size_t begin = 0; begin < pairs.size(); begin += static_cast<size_t>(o.micro_batch)) {
    const size_t count = std::min(pairs.size() - begin, static_cast<size_t>(o.micro_batch));
    ComparisonBatch batch = make_pair_batch(pairs, order, begin, count, pad_id, false);
    const auto lengths = batch.rows.attention_mask.sum(1).contiguous();
    const std::vector<int64_t> row_lengths(lengths.data_ptr<int64_t>(),
                                           lengths.data_ptr<int64_t>() + lengths.numel());
    packed_batches += prefix_packed_rows(policy->config, row_lengths, batch.shared_prefixes) > 0;
    tokens += batch.tokens;
    batches.push_back({begin, count, std::move(batch)});
  }

  // One pass of an objective over every micro-batch, forward and backward.
  const auto pass = [&](bool dpo, bool share) {
    Stopwatch watch;
    for (const MicroBatch& m : batches) {
      torch::Tensor loss;
      if (dpo) {
        const SideLogProbs logps =
            pair_log_probs(*policy, PairSlice{pairs, order, m.begin, m.count}, pad_id, share);
        loss = -torch::log_sigmoid(logps.chosen - logps.rejected).sum();
      } else {
        const auto scores = m.batch.scores(*reward, share);
        loss = -torch::log_sigmoid(scores.index_select(0, m.batch.better) -
                                   scores.index_select(0, m.batch.worse))
                    .sum();
      }
      loss.backward();
    }
    const double seconds = watch.seconds();
    (dpo ? policy : reward)->zero_grad();
    return seconds;
  };
  // The two sides alternate within each round so that both meet the same load; the first round
  // warms up.
  ObjectiveTimes dpo, reward_model;
  for (int r = 0; r < o.repeats + 1; ++r)
    for (bool share : {true, false})
      for (ObjectiveTimes* times : {&dpo, &reward_model}) {
        const double seconds = pass(times == &dpo, share);
        if (r == 0) continue;
        double& best = share ? times->shared_s : times->one_row_s;
        best = std::min(best, seconds);
      }
  const auto side_json = [&](const ObjectiveTimes& t) {
    return nlohmann::json{{"shared_tokens_per_s", tokens / t.shared_s},
                          {"one_row_tokens_per_s", tokens / t.one_row_s},
                          {"speedup", t.one_row_s / t.shared_s},
                          {"packed_batches", packed_batches},
                          {"batches", static_cast<int64_t>(batches.size())},
                          {"tokens", tokens}};
  };
  if (o.json) {
    const nlohmann::json doc = {
        {"shape", label},
        {"parameters", policy->config.parameter_count()},
        {"threads", torch::get_num_threads()},
        {"pairs", static_cast<int64_t>(pairs.size())},
        {"micro_batch", o.micro_batch},
        {"data", o.data.empty() ? nlohmann::json("synthetic") : nlohmann::json(o.data)},
        {"dpo", side_json(dpo)},
        {"reward", side_json(reward_model)}};
    std::printf("%s\n", doc.dump(2).c_str());
    return;
  }
  std::printf("model: %s (%.2fM parameters), %zu pairs (%s), %lld per micro-batch, %d threads\n",
              label.c_str(), policy->config.parameter_count() / 1e6, pairs.size(),
              o.data.empty() ? "synthetic" : o.data.c_str(), (long long)o.micro_batch,
              torch::get_num_threads());
  std::printf("%-8s  %16s  %18s  %8s  %14s\n", "", "shared tokens/s", "one row tokens/s", "speedup",
              "packed batches");
  for (const auto& [name, t] :
       {std::pair<const char*, const ObjectiveTimes&>{"dpo", dpo}, {"reward", reward_model}})
    std::printf("%-8s  %16.0f  %18.0f  %7.2fx  %8lld of %zu\n", name, tokens / t.shared_s,
                tokens / t.one_row_s, t.one_row_s / t.shared_s, (long long)packed_batches,
                batches.size());
}

}  // namespace tiller::bench
