#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "bench/bench.h"
#include "common/io/hf_dir.h"
#include "common/model/attention_mask.h"
#include "common/rollout/generator.h"

namespace tiller::bench {

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

void run_decode(const DecodeOptions& o) {
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
    sampling.max_new_tokens = o.new_tokens;
    sampling.temperature = 1.0;
    sampling.stop_at_eos = false;  // every row runs the full length
    double best_prefill = 0, best_decode = 0;
    for (int r = 0; r < o.repeats + 1; ++r) {  // the first round warms up
      // Prefill alone: one forward over the prompts.
      auto start = std::chrono::steady_clock::now();
      {
        torch::NoGradGuard no_grad;
        auto ids = torch::tensor(prompts[0]).repeat({batch, 1});
        auto mask = torch::ones_like(ids);
        model->forward(ids, mask);
      }
      const double prefill_s = seconds_since(start);
      start = std::chrono::steady_clock::now();
      auto out = generate(*model, prompts, sampling);
      const double total_s = seconds_since(start);
      const double decode_s = std::max(total_s - prefill_s, 1e-9);
      if (r == 0) continue;
      best_prefill = std::max(best_prefill, batch * o.prompt_tokens / prefill_s);
      best_decode = std::max(best_decode, batch * (o.new_tokens - 1) / decode_s);
    }
    rows.push_back({{"batch", batch}, {"prefill_tokens_per_s", best_prefill},
                    {"decode_tokens_per_s", best_decode}});
    if (!o.json) std::printf("%6lld  %14.0f  %14.0f\n", (long long)batch, best_prefill, best_decode);
  }
  if (o.json) {
    nlohmann::json doc = {{"bench", "decode"}, {"model", label},
                          {"parameters", config.parameter_count()},
                          {"threads", torch::get_num_threads()}, {"results", rows}};
    std::printf("%s\n", doc.dump(2).c_str());
  }
}

}  // namespace tiller::bench
