#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "bench/bench.h"
#include "common/rollout/generator.h"
#include "common/util/error.h"

namespace tiller::bench {

namespace {

// The fastest seconds of each side, for the prefill and for the whole generation.
struct GroupTimes {
  double groups_prefill_s = 1e30, groups_total_s = 1e30;
  double repeated_prefill_s = 1e30, repeated_total_s = 1e30;
};

void check_groups_options(const GroupsOptions& o) {
  check(o.prompts >= 1, "bench groups: --prompts must be at least 1");
  check(o.group >= 1, "bench groups: --group must be at least 1");
  check(o.prompt_tokens >= 1, "bench groups: --prompt-tokens must be at least 1");
  check(o.new_tokens >= 1, "bench groups: --new-tokens must be at least 1");
  check(o.repeats >= 1, "bench groups: --repeats must be at least 1");
}

}  // namespace

void run_groups(const GroupsOptions& o) {
  // Checked before any output, so that a bad flag never leaves half a table behind.
  check_groups_options(o);
  apply_threads(o.threads);
  std::string label;
  Transformer model = load_bench_model(o.model_dir, o.shape, label);
  const auto& config = model->config;
  check(o.prompt_tokens + o.new_tokens <= config.max_position_embeddings,
        "bench groups: --prompt-tokens + --new-tokens (" +
            std::to_string(o.prompt_tokens + o.new_tokens) + ") exceed the context of " + label +
            " (" + std::to_string(config.max_position_embeddings) + ")");

  std::vector<std::vector<int64_t>> prompts(o.prompts);
  for (int64_t b = 0; b < o.prompts; ++b)
    for (int64_t t = 0; t < o.prompt_tokens; ++t)
      prompts[b].push_back((b * 31 + t * 7 + 3) % config.vocab_size);
  std::vector<std::vector<int64_t>> repeated;
  for (const auto& prompt : prompts)
    for (int64_t g = 0; g < o.group; ++g) repeated.push_back(prompt);
  SamplingOptions sampling;
  sampling.temperature = 1.0;
  sampling.stop_at_eos = false;  // every row runs the full length
  // Generation alone: the rescoring pass runs on the B * G rows either way.
  sampling.full_pass_logprobs = false;
  sampling.fast_decode = !o.torch_decode;

  // The prefill is timed as generating one token, as in `bench decode`; the two sides alternate
  // within each round so that both meet the same load. The first round warms up.
  auto timed = [&](bool groups, int64_t new_tokens) {
    sampling.max_new_tokens = new_tokens;
    Stopwatch watch;
    if (groups)
      generate_groups(*model, prompts, o.group, sampling);
    else
      generate(*model, repeated, sampling);
    return watch.seconds();
  };
  GroupTimes best;
  for (int r = 0; r < o.repeats + 1; ++r) {
    const double groups_prefill = timed(true, 1), repeated_prefill = timed(false, 1);
    const double groups_total = timed(true, o.new_tokens);
    const double repeated_total = timed(false, o.new_tokens);
    if (r == 0) continue;
    best.groups_prefill_s = std::min(best.groups_prefill_s, groups_prefill);
    best.repeated_prefill_s = std::min(best.repeated_prefill_s, repeated_prefill);
    best.groups_total_s = std::min(best.groups_total_s, groups_total);
    best.repeated_total_s = std::min(best.repeated_total_s, repeated_total);
  }
  const double prefill_ratio = best.repeated_prefill_s / best.groups_prefill_s;
  const double total_ratio = best.repeated_total_s / best.groups_total_s;
  if (o.json) {
    const nlohmann::json doc = {{"shape", label},
                                {"parameters", config.parameter_count()},
                                {"threads", torch::get_num_threads()},
                                {"prompts", o.prompts},
                                {"group", o.group},
                                {"prompt_tokens", o.prompt_tokens},
                                {"new_tokens", o.new_tokens},
                                {"groups_prefill_s", best.groups_prefill_s},
                                {"groups_total_s", best.groups_total_s},
                                {"repeated_prefill_s", best.repeated_prefill_s},
                                {"repeated_total_s", best.repeated_total_s},
                                {"prefill_speedup", prefill_ratio},
                                {"total_speedup", total_ratio}};
    std::printf("%s\n", doc.dump(2).c_str());
    return;
  }
  std::printf(
      "model: %s (%.2fM parameters), %lld prompts x %lld samples, prompt %lld tokens, %lld new "
      "tokens, %d threads\n",
      label.c_str(), config.parameter_count() / 1e6, (long long)o.prompts, (long long)o.group,
      (long long)o.prompt_tokens, (long long)o.new_tokens, torch::get_num_threads());
  std::printf("%-28s  %10s  %10s\n", "", "prefill s", "total s");
  std::printf("%-28s  %10.4f  %10.4f\n", "generate_groups", best.groups_prefill_s,
              best.groups_total_s);
  std::printf("%-28s  %10.4f  %10.4f\n", "generate, prompts repeated", best.repeated_prefill_s,
              best.repeated_total_s);
  std::printf("%-28s  %9.2fx  %9.2fx\n", "speedup", prefill_ratio, total_ratio);
}

}  // namespace tiller::bench
