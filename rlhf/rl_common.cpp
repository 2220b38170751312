#include "rlhf/rl_common.h"

#include <cmath>
#include <cstdio>

#include "common/data/batching.h"  // seeded_permutation
#include "common/io/hf_dir.h"
#include "common/tokenizer/chat_template.h"  // chat_template_names
#include "common/tokenizer/tokenizer.h"
#include "common/train/train_config.h"  // read_parallel_options
#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

void read_rl_train(ConfigReader& t, RlTrainOptions& o) {
  o.iterations = t.integer("iterations", o.iterations);
  o.schedule = t.string("schedule", o.schedule);
  o.min_lr_ratio = t.number("min_lr_ratio", o.min_lr_ratio);
  o.warmup_iterations = t.integer("warmup_iterations", o.warmup_iterations);
  o.weight_decay = t.number("weight_decay", o.weight_decay);
  o.beta1 = t.number("beta1", o.beta1);
  o.beta2 = t.number("beta2", o.beta2);
  o.eps = t.number("eps", o.eps);
  o.grad_clip = t.number("grad_clip", o.grad_clip);
  o.checkpoint_every = t.integer("checkpoint_every", o.checkpoint_every);
  o.keep_checkpoints = t.integer("keep_checkpoints", o.keep_checkpoints);
  o.log_every = t.integer("log_every", o.log_every);
  o.precision = t.string("precision", o.precision);
  o.max_nonfinite_steps = t.integer("max_nonfinite_steps", o.max_nonfinite_steps);
  o.parallel = read_parallel_options(t);
  t.require(o.iterations >= 1, "iterations", "must be at least 1");
  t.one_of("schedule", o.schedule, {"linear", "cosine", "constant"});
  t.require(o.min_lr_ratio >= 0 && o.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]");
  t.require(o.warmup_iterations >= 0, "warmup_iterations", "must be >= 0");
  t.require(o.weight_decay >= 0, "weight_decay", "must be >= 0");
  t.require(o.beta1 >= 0 && o.beta1 < 1, "beta1", "must be in [0, 1)");
  t.require(o.beta2 >= 0 && o.beta2 < 1, "beta2", "must be in [0, 1)");
  t.require(o.eps > 0, "eps", "must be positive");
  t.require(o.checkpoint_every >= 0, "checkpoint_every", "must be >= 0");
  t.require(o.keep_checkpoints >= 1, "keep_checkpoints", "must be at least 1");
  t.require(o.log_every >= 1, "log_every", "must be at least 1");
  t.one_of("precision", o.precision, {"fp32", "bf16", "auto"});
  t.require(o.max_nonfinite_steps >= 1, "max_nonfinite_steps", "must be at least 1");
}

nlohmann::json rl_train_values(const RlTrainOptions& o) {
  return {{"iterations", o.iterations},
          {"schedule", o.schedule},
          {"min_lr_ratio", o.min_lr_ratio},
          {"warmup_iterations", o.warmup_iterations},
          {"weight_decay", o.weight_decay},
          {"beta1", o.beta1},
          {"beta2", o.beta2},
          {"eps", o.eps},
          {"grad_clip", o.grad_clip},
          {"checkpoint_every", o.checkpoint_every},
          {"keep_checkpoints", o.keep_checkpoints},
          {"log_every", o.log_every},
          {"precision", o.precision},
          {"max_nonfinite_steps", o.max_nonfinite_steps},
          {"zero_stage", o.parallel.zero_stage},
          {"allreduce_bucket_mb", static_cast<double>(o.parallel.bucket_bytes) / (1 << 20)}};
}

void read_prompt_data(const nlohmann::json& json, const std::string& path, ConfigErrors& errors,
                      const std::set<std::string>& formats, PromptDataOptions& data) {
  ConfigReader d(json, path, errors);
  data.path = d.required_string("prompts");
  data.format = d.string("format", data.format);
  data.template_name = d.string("template", data.template_name);
  data.max_prompt_len = d.integer("max_prompt_len", data.max_prompt_len);
  data.max_records = d.integer("max_records", -1);
  data.skip_bad_lines = d.boolean("skip_bad_lines", false);
  d.one_of("format", data.format, formats);
  d.one_of("template", data.template_name,
           std::set<std::string>(chat_template_names().begin(), chat_template_names().end()));
  d.require(data.max_prompt_len >= 1, "max_prompt_len", "must be at least 1");
  d.require(data.max_records == -1 || data.max_records >= 1, "max_records",
            "must be at least 1 (or -1: all)");
  if (!data.path.empty() && !path_exists(data.path))
    errors.add(d.path_of("prompts"), "file " + data.path + " does not exist");
}

nlohmann::json prompt_data_values(const PromptDataOptions& data) {
  return {{"prompts", data.path},
          {"format", data.format},
          {"template", data.template_name},
          {"max_prompt_len", data.max_prompt_len},
          {"max_records", data.max_records},
          {"skip_bad_lines", data.skip_bad_lines}};
}

void read_on_policy_sampling(ConfigReader& g, const std::string& algorithm, SamplingOptions& s) {
  s.max_new_tokens = g.integer("max_new_tokens", s.max_new_tokens);
  s.temperature = g.number("temperature", s.temperature);
  s.top_k = g.integer("top_k", s.top_k);
  s.top_p = g.number("top_p", s.top_p);
  g.require(s.max_new_tokens >= 1, "max_new_tokens", "must be at least 1");
  g.require(s.temperature > 0, "temperature",
            "must be > 0 (" + algorithm + " samples; the log-probs use the same temperature)");
  g.require(s.top_k == 0, "top_k",
            "must be 0 in " + algorithm +
                ": a top-k sample comes from another distribution than the log-probabilities " +
                algorithm + " learns from (off-policy)");
  g.require(s.top_p == 1, "top_p",
            "must be 1 in " + algorithm +
                ": a top-p sample comes from another distribution than the log-probabilities " +
                algorithm + " learns from (off-policy)");
}

void read_samples(const nlohmann::json& json, const std::string& path, ConfigErrors& errors,
                  int64_t& every, int64_t& count) {
  ConfigReader s(json, path, errors);
  every = s.integer("every", every);
  count = s.integer("count", count);
  s.require(every >= 0, "every", "must be >= 0 (0: only before and after)");
  s.require(count >= 0, "count", "must be >= 0");
}

nlohmann::json samples_values(int64_t every, int64_t count) {
  return {{"every", every}, {"count", count}};
}

uint64_t mix_seed(std::initializer_list<uint64_t> values) {
  uint64_t h = 0x9e3779b97f4a7c15ull;
  for (uint64_t v : values) {
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
    h ^= h >> 31;
  }
  return h;
}

HeldOutSplit hold_out(int64_t count, int64_t held_out, uint64_t seed) {
  HeldOutSplit split;
  const auto shuffled = seeded_permutation(count, seed);
  for (int64_t i = 0; i < count; ++i)
    (i < held_out ? split.eval : split.train).push_back(shuffled[static_cast<size_t>(i)]);
  for (size_t i = 0; i < split.eval.size(); ++i)
    split.eval_seeds.push_back(mix_seed({seed, kEvalStream, i}));
  return split;
}

std::string exact_text(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.17g", value);
  return text;
}

double mean_of(const std::vector<double>& values) {
  double sum = 0;
  for (double v : values) sum += v;
  return values.empty() ? std::nan("") : sum / static_cast<double>(values.size());
}

std::string response_text(const Tokenizer& tok, std::vector<int64_t> response) {
  if (!response.empty() && response.back() == tok.eos_id()) response.pop_back();
  return tok.decode(response);
}

std::string one_line(std::string text, size_t width) {
  for (char& ch : text)
    if (ch == '\n' || ch == '\r' || ch == '\t') ch = ' ';
  return text.size() > width ? text.substr(0, width - 3) + "..." : text;
}

std::string eval_prompts_share_error(int64_t count, int64_t asked, int64_t ranks) {
  if (count == 0 || count >= ranks) return "";
  return std::to_string(count) + " evaluation prompts (eval.prompts " + std::to_string(asked) +
         ") cannot be shared by " + std::to_string(ranks) +
         " data-parallel ranks; raise eval.prompts or set it to 0";
}

}  // namespace tiller
