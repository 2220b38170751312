#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "bench/bench.h"
#include "common/io/hf_dir.h"
#include "common/model/attention_mask.h"
#include "common/rollout/generator.h"
#include "common/util/error.h"

namespace tiller::bench {

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

void run_decode(const DecodeOptions& o) {
  // Checked before any output, so that a bad flag never leaves half a table behind.
  check(o.prompt_tokens >= 1, "bench decode: --prompt-tokens must be at least 1");
  check(o.new_tokens >= 2,
        "bench decode: --new-tokens must be at least 2 (the first token comes from the prefill)");
  check(o.repeats >= 1, "bench decode: --repeats must be at least 1");
  Transformer model{nullptr};
  std::string label;
  if (!o.model_dir.empty()) {
    model = load_hf_model(o.model_dir);
    label = o.model_dir;
  } else {
    model = Transformer(builtin_shape(o.shape));
    model->init_weights(1234);
    label = o.shape;
  }
  model->eval();
  const auto& config = model->config;
  check(o.prompt_tokens + o.new_tokens <= config.max_position_embeddings,
        "bench decode: --prompt-tokens + --new-tokens (" +
            std::to_string(o.prompt_tokens + o.new_tokens) + ") exceed the context of " + label +
            " (" + std::to_string(config.max_position_embeddings) + ")");

  nlohmann::json rows = nlohmann::json::array();
  if (!o.json) {
    std::printf("model: %s (%.2fM parameters), prompt %lld tokens, %lld new tokens, %d threads\n",
                label.c_str(), config.parameter_count() / 1e6, (long long)o.prompt_tokens,
                (long long)o.new_tokens, torch::get_num_threads());
    std::printf("%6s  %14s  %14s\n", "batch", "prefill tok/s", "decode tok/s");
  }
  for (int64_t batch : o.batches) {
    std::vector<std::vector<int64_t>> prompts(batch);
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = 0; t < o.prompt_tokens; ++t)
        prompts[b].push_back((b * 31 + t * 7 + 3) % config.vocab_size);
    SamplingOptions sampling;
    sampling.temperature = 1.0;
    sampling.stop_at_eos = false;         // every row runs the full length
    sampling.full_pass_logprobs = false;  // decode alone, without the rescoring pass
    // Prefill is timed as generate() making one token, and decode as what the other new tokens
    // add: the very code paths of a rollout (a bare forward would also compute the logits of
    // every prompt slot, which generate() does not, and its time would be taken off decode's).
    // Each is the fastest of the repeats; the first round warms up.
    auto timed = [&](int64_t new_tokens) {
      sampling.max_new_tokens = new_tokens;
      const auto start = std::chrono::steady_clock::now();
      generate(*model, prompts, sampling);
      return seconds_since(start);
    };
    double prefill_s = 1e30, total_s = 1e30;
    for (int r = 0; r < o.repeats + 1; ++r) {
      const double one = timed(1), all = timed(o.new_tokens);
      if (r == 0) continue;
      prefill_s = std::min(prefill_s, one);
      total_s = std::min(total_s, all);
    }
    const double best_prefill = batch * o.prompt_tokens / prefill_s;
    const double best_decode = batch * (o.new_tokens - 1) / std::max(total_s - prefill_s, 1e-9);
    rows.push_back({{"batch", batch},
                    {"prefill_tokens_per_s", best_prefill},
                    {"decode_tokens_per_s", best_decode}});
    if (!o.json)
      std::printf("%6lld  %14.0f  %14.0f\n", (long long)batch, best_prefill, best_decode);
  }
  if (o.json) {
    nlohmann::json doc = {{"bench", "decode"},
                          {"model", label},
                          {"parameters", config.parameter_count()},
                          {"threads", torch::get_num_threads()},
                          {"results", rows}};
    std::printf("%s\n", doc.dump(2).c_str());
  }
}

}  // namespace tiller::bench
