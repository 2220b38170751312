// Every documented key of every stage type, set to a value that is not its default, is found in
// the config the stage runs with and in the resolved recipe (the type's stated values); the table
// covers every key the parsers read (a key read and dropped, or read and not stated, fails it).
// Where the effect is cheap to observe (the schedule's learning rate, the loop's cadence, the
// optimizer's settings, a short run's metrics and checkpoints) it is checked too.
#include <gtest/gtest.h>

#include <algorithm>
#include <any>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>

#include "common/io/hf_dir.h"
#include "common/io/llama2c.h"
#include "common/recipe/pipeline.h"
#include "common/train/pairwise_reward.h"
#include "common/train/stage_loop.h"
#include "common/util/files.h"
#include "dpo/dpo_stage.h"
#include "prepare/prepare_stage.h"
#include "reward/reward_stage.h"
#include "rlhf/grpo_stage.h"
#include "rlhf/rlhf_stage.h"
#include "sft/sft_stage.h"
#include "stages/stage_types.h"
#include "tests/test_util.h"

using namespace tiller;
using json = nlohmann::json;

namespace {

// One row of the table: a key of a stage body, a value that is not its default, and where the
// parsed config holds it.
struct KeyCase {
  std::string type;                             // pretrain, sft, reward, rlhf, dpo
  std::string key;                              // "train.lr": the path in the stage body
  json value;                                   // not the default
  std::function<json(const std::any&)> parsed;  // the value in the parsed config
  std::vector<std::string> drop = {};           // keys of the base body the case removes
};

template <typename Config>
std::function<json(const std::any&)> field(std::function<json(const Config&)> get) {
  return [get](const std::any& config) { return get(std::any_cast<const Config&>(config)); };
}

// The value at a dotted path of a JSON object; null when absent.
json at_path(const json& object, const std::string& key) {
  const json* node = &object;
  size_t start = 0;
  while (true) {
    const size_t dot = key.find('.', start);
    const std::string part = key.substr(start, dot == std::string::npos ? dot : dot - start);
    if (!node->is_object() || !node->contains(part)) return nullptr;
    node = &(*node)[part];
    if (dot == std::string::npos) return *node;
    start = dot + 1;
  }
}

void set_path(json& object, const std::string& key, const json& value) {
  json* node = &object;
  size_t start = 0;
  for (size_t dot; (dot = key.find('.', start)) != std::string::npos; start = dot + 1)
    node = &(*node)[key.substr(start, dot - start)];
  (*node)[key.substr(start)] = value;
}

// Files the bodies name (their contents are never read by the parsers).
struct Files {
  std::string dir, data, other;
};

const Files& files() {
  static const Files f = [] {
    Files out;
    out.dir = test::temp_dir("stage_keys");
    out.data = out.dir + "/data.jsonl";
    out.other = out.dir + "/other.jsonl";
    std::ofstream(out.data) << "{}\n";
    std::ofstream(out.other) << "{}\n";
    return out;
  }();
  return f;
}

// The smallest valid body of each type.
json base_body(const std::string& type) {
  const Files& f = files();
  if (type == "pretrain")
    return {{"name", "s"},
            {"type", type},
            {"model", {{"shape", "stories260k"}}},
            {"tokenizer", {{"train", f.data}}},
            {"data", {{"train", f.data}}}};
  if (type == "sft") return {{"name", "s"}, {"type", type}, {"data", {{"train", f.data}}}};
  if (type == "prepare")
    return {{"name", "s"}, {"type", type}, {"inputs", f.data}, {"tokenizer", f.data}};
  if (type == "reward" || type == "dpo")
    return {{"name", "s"}, {"type", type}, {"init", "@sft"}, {"data", {{"train", f.data}}}};
  if (type == "grpo")
    return {{"name", "s"},
            {"type", type},
            {"data", {{"prompts", f.data}}},
            {"rewards", json::array({{{"type", "math_answer"}}})}};
  return {{"name", "s"}, {"type", type}, {"data", {{"prompts", f.data}}}};
}

struct Parsed {
  std::any config;
  json stated;
  std::string errors;
};

Parsed parse(const json& body) {
  ConfigErrors errors;
  StageEntry entry{body.value("name", ""), body.value("type", ""), "stages[0]", &body};
  Parsed out;
  out.config = parse_stage(entry, errors);
  for (const auto& e : errors.list()) out.errors += e + "\n";
  const StageType* type = find_stage_type(stage_registry(), entry.type);
  if (out.errors.empty() && type != nullptr && type->stated_defaults)
    out.stated = type->stated_defaults(out.config);
  return out;
}

// The shared "train" object's keys, for each of the types that read it.
std::vector<KeyCase> train_cases(const std::string& type) {
  const std::vector<std::pair<std::string, json>> values = {{"steps", 7},
                                                            {"batch_size", 4},
                                                            {"micro_batch_size", 2},
                                                            {"lr", 0.01},
                                                            {"min_lr_ratio", 0.5},
                                                            {"warmup_steps", 3},
                                                            {"schedule", "linear"},
                                                            {"max_seq_len", 64},
                                                            {"weight_decay", 0.1},
                                                            {"beta1", 0.8},
                                                            {"beta2", 0.99},
                                                            {"eps", 1e-6},
                                                            {"grad_clip", 0.5},
                                                            {"checkpoint_every", 5},
                                                            {"keep_checkpoints", 3},
                                                            {"eval_every", 4},
                                                            {"eval_batches", 2},
                                                            {"log_every", 2},
                                                            {"precision", "bf16"},
                                                            {"activation_checkpointing", true},
                                                            {"max_nonfinite_steps", 2},
                                                            {"loss_spike_zscore", 3.0},
                                                            {"loss_spike_window", 10},
                                                            {"forecast", 0.3},
                                                            {"forecast_from_runs", "runs/sweep"},
                                                            {"zero_stage", 1},
                                                            {"allreduce_bucket_mb", 8.0}};
  const std::map<std::string, std::function<json(const TrainConfig&)>> fields = {
      {"steps", [](const TrainConfig& t) { return json(t.steps); }},
      {"batch_size", [](const TrainConfig& t) { return json(t.batch_size); }},
      {"micro_batch_size", [](const TrainConfig& t) { return json(t.micro_batch_size); }},
      {"lr", [](const TrainConfig& t) { return json(t.lr); }},
      {"min_lr_ratio", [](const TrainConfig& t) { return json(t.min_lr_ratio); }},
      {"warmup_steps", [](const TrainConfig& t) { return json(t.warmup_steps); }},
      {"schedule", [](const TrainConfig& t) { return json(t.schedule); }},
      {"max_seq_len", [](const TrainConfig& t) { return json(t.max_seq_len); }},
      {"weight_decay", [](const TrainConfig& t) { return json(t.weight_decay); }},
      {"beta1", [](const TrainConfig& t) { return json(t.beta1); }},
      {"beta2", [](const TrainConfig& t) { return json(t.beta2); }},
      {"eps", [](const TrainConfig& t) { return json(t.eps); }},
      {"grad_clip", [](const TrainConfig& t) { return json(t.grad_clip); }},
      {"checkpoint_every", [](const TrainConfig& t) { return json(t.checkpoint_every); }},
      {"keep_checkpoints", [](const TrainConfig& t) { return json(t.keep_checkpoints); }},
      {"eval_every", [](const TrainConfig& t) { return json(t.eval_every); }},
      {"eval_batches", [](const TrainConfig& t) { return json(t.eval_batches); }},
      {"log_every", [](const TrainConfig& t) { return json(t.log_every); }},
      {"precision", [](const TrainConfig& t) { return json(t.precision); }},
      {"activation_checkpointing",
       [](const TrainConfig& t) { return json(t.activation_checkpointing); }},
      {"max_nonfinite_steps", [](const TrainConfig& t) { return json(t.max_nonfinite_steps); }},
      {"loss_spike_zscore", [](const TrainConfig& t) { return json(t.loss_spike_zscore); }},
      {"loss_spike_window", [](const TrainConfig& t) { return json(t.loss_spike_window); }},
      {"forecast", [](const TrainConfig& t) { return json(t.forecast); }},
      {"forecast_from_runs", [](const TrainConfig& t) { return json(t.forecast_from_runs); }},
      {"zero_stage", [](const TrainConfig& t) { return json(t.parallel.zero_stage); }},
      {"allreduce_bucket_mb", [](const TrainConfig& t) {
         return json(static_cast<double>(t.parallel.bucket_bytes) / (1 << 20));
       }}};
  std::vector<KeyCase> cases;
  for (const auto& [key, value] : values) {
    const auto get = fields.at(key);
    std::function<json(const std::any&)> parsed;
    if (type == "reward")
      parsed = field<RewardStageConfig>([get](const RewardStageConfig& c) { return get(c.train); });
    else if (type == "dpo")
      parsed = field<DpoStageConfig>([get](const DpoStageConfig& c) { return get(c.train); });
    else
      parsed = field<SftStageConfig>([get](const SftStageConfig& c) { return get(c.train); });
    cases.push_back({type, "train." + key, value, parsed});
  }
  return cases;
}

// Keys of pretrain and sft bodies.
std::vector<KeyCase> language_model_cases(const std::string& type) {
  using C = SftStageConfig;
  const Files& f = files();
  std::vector<KeyCase> cases = {
      {type, "data.train", f.other, field<C>([](const C& c) { return json(c.data.path); })},
      {type, "data.val", f.other, field<C>([](const C& c) { return json(c.val_path); })},
      {type, "data.val_fraction", 0.2, field<C>([](const C& c) { return json(c.val_fraction); })},
      {type, "data.packing", false, field<C>([](const C& c) { return json(c.packing); })},
      {type, "data.skip_bad_lines", true,
       field<C>([](const C& c) { return json(c.data.skip_bad_lines); })},
  };
  if (type == "sft") {
    cases.push_back({type, "init", "@pretrain", field<C>([](const C& c) { return json(c.init); })});
    cases.push_back(
        {type, "tokenizer", f.other, field<C>([](const C& c) { return json(c.tokenizer); })});
    cases.push_back(
        {type, "data.format", "alpaca", field<C>([](const C& c) { return json(c.data.format); })});
    cases.push_back({type, "data.template", "llama2",
                     field<C>([](const C& c) { return json(c.data.template_name); })});
    cases.push_back({type, "data.train_on_prompt", true,
                     field<C>([](const C& c) { return json(c.data.train_on_prompt); })});
    cases.push_back({type, "data.max_records", 5,
                     field<C>([](const C& c) { return json(c.data.max_records); })});
    return cases;
  }
  cases.push_back({type,
                   "init",
                   "@base",
                   field<C>([](const C& c) { return json(c.init); }),
                   {"model", "tokenizer"}});
  cases.push_back(
      {type, "tokenizer", f.other, field<C>([](const C& c) { return json(c.tokenizer); })});
  cases.push_back({type, "tokenizer.train", f.other,
                   field<C>([](const C& c) { return json(c.tokenizer_corpus); })});
  cases.push_back({type, "tokenizer.vocab_size", 300,
                   field<C>([](const C& c) { return json(c.tokenizer_vocab_size); })});
  cases.push_back(
      {type, "model.shape", "llama-15m", field<C>([](const C& c) { return json(c.model_shape); })});
  for (const auto& [key, value] :
       std::vector<std::pair<std::string, int>>{{"vocab_size", 512},
                                                {"hidden_size", 96},
                                                {"intermediate_size", 200},
                                                {"num_hidden_layers", 3},
                                                {"num_attention_heads", 6},
                                                {"num_key_value_heads", 2},
                                                {"max_position_embeddings", 128}})
    cases.push_back({type, "model." + key, value, field<C>([key = key](const C& c) {
                       return c.model_fields.value(key, json());
                     })});
  return cases;
}

std::vector<KeyCase> reward_cases() {
  using C = RewardStageConfig;
  const Files& f = files();
  return {
      {"reward", "init", "@other", field<C>([](const C& c) { return json(c.init); })},
      {"reward", "data.train", f.other, field<C>([](const C& c) { return json(c.data.path); })},
      {"reward", "data.val", f.other, field<C>([](const C& c) { return json(c.val_path); })},
      {"reward", "data.val_fraction", 0.2,
       field<C>([](const C& c) { return json(c.val_fraction); })},
      {"reward", "data.format", "hh", field<C>([](const C& c) { return json(c.data.format); })},
      {"reward", "data.template", "plain",
       field<C>([](const C& c) { return json(c.data.template_name); })},
      {"reward", "data.skip_bad_lines", true,
       field<C>([](const C& c) { return json(c.data.skip_bad_lines); })},
      {"reward", "data.max_records", 5,
       field<C>([](const C& c) { return json(c.data.max_records); })},
      {"reward", "loss.use_margin", false, field<C>([](const C& c) { return json(c.use_margin); })},
      {"reward", "loss.center_coef", 0.01,
       field<C>([](const C& c) { return json(c.center_coef); })},
      {"reward", "normalize.reference", "train_chosen",
       field<C>([](const C& c) { return json(c.normalize_reference); })},
      {"reward", "share_prefixes", false,
       field<C>([](const C& c) { return json(c.share_prefixes); })},
      {"reward", "loss.rankings", "pairs",
       field<C>([](const C& c) { return json(c.ranking_loss); })},
  };
}

std::vector<KeyCase> rlhf_cases() {
  using C = RlhfStageConfig;
  const Files& f = files();
  auto row = [](const std::string& key, json value, std::function<json(const C&)> get) {
    return KeyCase{"rlhf", key, std::move(value), field<C>(std::move(get))};
  };
  return {
      row("policy", "@p", [](const C& c) { return json(c.policy); }),
      row("reference", "@r", [](const C& c) { return json(c.reference); }),
      row("reward_model", "@rm", [](const C& c) { return json(c.reward_model); }),
      row("critic", "@c", [](const C& c) { return json(c.critic); }),
      row("data.prompts", f.other, [](const C& c) { return json(c.data.path); }),
      row("data.format", "prompt", [](const C& c) { return json(c.data.format); }),
      row("data.template", "plain", [](const C& c) { return json(c.data.template_name); }),
      row("data.max_prompt_len", 128, [](const C& c) { return json(c.data.max_prompt_len); }),
      row("data.max_records", 5, [](const C& c) { return json(c.data.max_records); }),
      row("data.skip_bad_lines", true, [](const C& c) { return json(c.data.skip_bad_lines); }),
      row("rollout.batch_size", 32, [](const C& c) { return json(c.batch_size); }),
      row("rollout.max_new_tokens", 32,
          [](const C& c) { return json(c.ppo.sampling.max_new_tokens); }),
      row("rollout.temperature", 0.7, [](const C& c) { return json(c.ppo.sampling.temperature); }),
      row("rollout.missing_eos_penalty", -3.0,
          [](const C& c) { return json(c.ppo.missing_eos_penalty.value_or(0)); }),
      row("reward.whiten", true, [](const C& c) { return json(c.ppo.whiten_rewards); }),
      row("reward.clip", 5.0, [](const C& c) { return json(c.ppo.reward_clip); }),
      row("reward.max_seq_len", 128, [](const C& c) { return json(c.reward_max_seq_len); }),
      row("kl.beta", 0.1, [](const C& c) { return json(c.beta); }),
      row("kl.target", 6.0, [](const C& c) { return json(c.kl_target); }),
      row("kl.horizon", 5000.0, [](const C& c) { return json(c.kl_horizon); }),
      row("kl.max", 10.0, [](const C& c) { return json(c.kl_max); }),
      row("ppo.epochs", 2, [](const C& c) { return json(c.ppo.epochs); }),
      row("ppo.mini_batch_size", 4, [](const C& c) { return json(c.ppo.mini_batch_size); }),
      row("ppo.micro_batch_size", 2, [](const C& c) { return json(c.ppo.micro_batch_size); }),
      row("ppo.gamma", 0.99, [](const C& c) { return json(c.ppo.gamma); }),
      row("ppo.lambda", 0.9, [](const C& c) { return json(c.ppo.lam); }),
      row("ppo.clip", 0.1, [](const C& c) { return json(c.ppo.clip); }),
      row("ppo.value_clip", 0.3, [](const C& c) { return json(c.ppo.value_clip); }),
      row("ppo.value_coef", 0.5, [](const C& c) { return json(c.ppo.value_coef); }),
      row("ppo.whiten_advantages", false, [](const C& c) { return json(c.ppo.whiten_advantages); }),
      row("ppo.critic_head", "zeros", [](const C& c) { return json(c.critic_head); }),
      row("ppo.dump_rollouts", 2, [](const C& c) { return json(c.dump_rollouts); }),
      row("train.iterations", 7, [](const C& c) { return json(c.train.iterations); }),
      row("train.actor_lr", 1e-4, [](const C& c) { return json(c.actor_lr); }),
      row("train.critic_lr", 2e-4, [](const C& c) { return json(c.critic_lr); }),
      row("train.schedule", "linear", [](const C& c) { return json(c.train.schedule); }),
      row("train.min_lr_ratio", 0.5, [](const C& c) { return json(c.train.min_lr_ratio); }),
      row("train.warmup_iterations", 2, [](const C& c) { return json(c.train.warmup_iterations); }),
      row("train.grad_clip", 0.5, [](const C& c) { return json(c.ppo.actor_grad_clip); }),
      row("train.weight_decay", 0.1, [](const C& c) { return json(c.train.weight_decay); }),
      row("train.beta1", 0.8, [](const C& c) { return json(c.train.beta1); }),
      row("train.beta2", 0.99, [](const C& c) { return json(c.train.beta2); }),
      row("train.eps", 1e-6, [](const C& c) { return json(c.train.eps); }),
      row("train.checkpoint_every", 5, [](const C& c) { return json(c.train.checkpoint_every); }),
      row("train.keep_checkpoints", 3, [](const C& c) { return json(c.train.keep_checkpoints); }),
      row("train.log_every", 2, [](const C& c) { return json(c.train.log_every); }),
      row("train.precision", "bf16", [](const C& c) { return json(c.train.precision); }),
      row("train.max_nonfinite_steps", 2,
          [](const C& c) { return json(c.train.max_nonfinite_steps); }),
      row("train.zero_stage", 1, [](const C& c) { return json(c.train.parallel.zero_stage); }),
      row("train.allreduce_bucket_mb", 8.0,
          [](const C& c) {
            return json(static_cast<double>(c.train.parallel.bucket_bytes) / (1 << 20));
          }),
      row("ground_truth", json{{"rule", "contains"}, {"text", "x"}},
          [](const C& c) {
            return json{{"rule", c.ground_truth.kind}, {"text", c.ground_truth.text}};
          }),
      row("ground_truth.rule", "regex", [](const C& c) { return json(c.ground_truth.kind); }),
      row("ground_truth.pattern", "y+", [](const C& c) { return json(c.ground_truth.pattern); }),
      row("ground_truth.ignore_case", true,
          [](const C& c) { return json(c.ground_truth.ignore_case); }),
      row("ground_truth.text", "z", [](const C& c) { return json(c.ground_truth.text); }),
      row("ground_truth.min_words", 2, [](const C& c) { return json(c.ground_truth.min_words); }),
      row("ground_truth.max_words", 5, [](const C& c) { return json(c.ground_truth.max_words); }),
      row("eval.prompts", 16, [](const C& c) { return json(c.eval_prompts); }),
      row("eval.every", 3, [](const C& c) { return json(c.eval_every); }),
      row("eval.baselines", json::array({"@base"}), [](const C& c) { return json(c.baselines); }),
      row("samples.every", 5, [](const C& c) { return json(c.sample_every); }),
      row("samples.count", 2, [](const C& c) { return json(c.sample_count); }),
  };
}

// The online-RL "train" keys (rl_common.h) other than learning rates and grad_clip, for `type`
// whose config holds them in `train`.
template <typename C>
std::vector<KeyCase> rl_train_cases(const std::string& type) {
  auto row = [&](const std::string& key, json value,
                 std::function<json(const RlTrainOptions&)> get) {
    return KeyCase{type, "train." + key, std::move(value),
                   field<C>([get](const C& c) { return get(c.train); })};
  };
  using T = RlTrainOptions;
  return {row("iterations", 7, [](const T& t) { return json(t.iterations); }),
          row("schedule", "linear", [](const T& t) { return json(t.schedule); }),
          row("min_lr_ratio", 0.5, [](const T& t) { return json(t.min_lr_ratio); }),
          row("warmup_iterations", 2, [](const T& t) { return json(t.warmup_iterations); }),
          row("grad_clip", 0.5, [](const T& t) { return json(t.grad_clip); }),
          row("weight_decay", 0.1, [](const T& t) { return json(t.weight_decay); }),
          row("beta1", 0.8, [](const T& t) { return json(t.beta1); }),
          row("beta2", 0.99, [](const T& t) { return json(t.beta2); }),
          row("eps", 1e-6, [](const T& t) { return json(t.eps); }),
          row("checkpoint_every", 5, [](const T& t) { return json(t.checkpoint_every); }),
          row("keep_checkpoints", 3, [](const T& t) { return json(t.keep_checkpoints); }),
          row("log_every", 2, [](const T& t) { return json(t.log_every); }),
          row("precision", "bf16", [](const T& t) { return json(t.precision); }),
          row("max_nonfinite_steps", 2, [](const T& t) { return json(t.max_nonfinite_steps); }),
          row("zero_stage", 1, [](const T& t) { return json(t.parallel.zero_stage); }),
          row("allreduce_bucket_mb", 8.0, [](const T& t) {
            return json(static_cast<double>(t.parallel.bucket_bytes) / (1 << 20));
          })};
}

std::vector<KeyCase> grpo_cases() {
  using C = GrpoStageConfig;
  const Files& f = files();
  auto row = [](const std::string& key, json value, std::function<json(const C&)> get) {
    return KeyCase{"grpo", key, std::move(value), field<C>(std::move(get))};
  };
  std::vector<KeyCase> cases = {
      row("policy", "@p", [](const C& c) { return json(c.policy); }),
      row("reference", "@r", [](const C& c) { return json(c.reference); }),
      row("algorithm", "rloo", [](const C& c) { return json(c.grpo.algorithm); }),
      row("data.prompts", f.other, [](const C& c) { return json(c.data.path); }),
      row("data.format", "gsm8k", [](const C& c) { return json(c.data.format); }),
      row("data.template", "plain", [](const C& c) { return json(c.data.template_name); }),
      row("data.max_prompt_len", 128, [](const C& c) { return json(c.data.max_prompt_len); }),
      row("data.max_records", 5, [](const C& c) { return json(c.data.max_records); }),
      row("data.skip_bad_lines", true, [](const C& c) { return json(c.data.skip_bad_lines); }),
      row("rollout.prompts_per_iteration", 4,
          [](const C& c) { return json(c.prompts_per_iteration); }),
      row("rollout.group_size", 4, [](const C& c) { return json(c.grpo.group_size); }),
      row("rollout.max_new_tokens", 32,
          [](const C& c) { return json(c.grpo.sampling.max_new_tokens); }),
      row("rollout.temperature", 0.7, [](const C& c) { return json(c.grpo.sampling.temperature); }),
      row("rewards",
          json::array({{{"type", "contains"},
                        {"name", "has_x"},
                        {"text", "x"},
                        {"ignore_case", true},
                        {"weight", 0.5}}}),
          [](const C& c) { return reward_function_values(c.rewards); }),
      row("kl.beta", 0.1, [](const C& c) { return json(c.grpo.beta); }),
      row("grpo.epochs", 2, [](const C& c) { return json(c.grpo.epochs); }),
      row("grpo.mini_batch_size", 16, [](const C& c) { return json(c.grpo.mini_batch_size); }),
      row("grpo.micro_batch_size", 4, [](const C& c) { return json(c.grpo.micro_batch_size); }),
      row("grpo.clip_low", 0.1, [](const C& c) { return json(c.grpo.clip_low); }),
      row("grpo.clip_high", 0.3, [](const C& c) { return json(c.grpo.clip_high); }),
      row("grpo.loss_aggregation", "token_mean",
          [](const C& c) { return json(c.grpo.loss_aggregation); }),
      row("grpo.share_prompts", false, [](const C& c) { return json(c.grpo.share_prompts); }),
      row("grpo.dynamic_sampling", true, [](const C& c) { return json(c.dynamic_sampling); }),
      row("grpo.max_sampling_rounds", 2, [](const C& c) { return json(c.max_sampling_rounds); }),
      row("grpo.overlong_buffer", 8, [](const C& c) { return json(c.overlong_buffer); }),
      row("grpo.overlong_penalty", 0.5, [](const C& c) { return json(c.overlong_penalty); }),
      row("train.lr", 1e-4, [](const C& c) { return json(c.lr); }),
      row("eval.prompts", 16, [](const C& c) { return json(c.eval_prompts); }),
      row("eval.every", 3, [](const C& c) { return json(c.eval_every); }),
      row("eval.samples", 4, [](const C& c) { return json(c.eval_samples); }),
      row("samples.every", 5, [](const C& c) { return json(c.sample_every); }),
      row("samples.count", 2, [](const C& c) { return json(c.sample_count); }),
  };
  auto train = rl_train_cases<C>("grpo");
  cases.insert(cases.end(), train.begin(), train.end());
  return cases;
}

// The loss keys apply under the loss types that use them (case_body picks the type): gamma under
// simpo, the reference section under the reference losses (sigmoid, the default).
std::vector<KeyCase> dpo_cases() {
  using C = DpoStageConfig;
  const Files& f = files();
  auto row = [](const std::string& key, json value, std::function<json(const C&)> get) {
    return KeyCase{"dpo", key, std::move(value), field<C>(std::move(get))};
  };
  return {
      row("init", "@other", [](const C& c) { return json(c.init); }),
      row("data.train", f.other, [](const C& c) { return json(c.data.path); }),
      row("data.val", f.other, [](const C& c) { return json(c.val_path); }),
      row("data.val_fraction", 0.2, [](const C& c) { return json(c.val_fraction); }),
      row("data.format", "hh", [](const C& c) { return json(c.data.format); }),
      row("data.template", "plain", [](const C& c) { return json(c.data.template_name); }),
      row("data.skip_bad_lines", true, [](const C& c) { return json(c.data.skip_bad_lines); }),
      row("data.max_records", 5, [](const C& c) { return json(c.data.max_records); }),
      row("loss.type", "ipo", [](const C& c) { return json(c.loss.type); }),
      row("loss.beta", 0.3, [](const C& c) { return json(c.loss.beta); }),
      row("loss.label_smoothing", 0.1, [](const C& c) { return json(c.loss.label_smoothing); }),
      row("loss.gamma", 1.5, [](const C& c) { return json(c.loss.gamma); }),
      row("loss.sft_weight", 0.5, [](const C& c) { return json(c.loss.sft_weight); }),
      row("reference.model", "@r", [](const C& c) { return json(c.reference); }),
      row("reference.mode", "live", [](const C& c) { return json(c.reference_mode); }),
      row("reference.chunk_pairs", 16, [](const C& c) { return json(c.cache_chunk_pairs); }),
      row("share_prefixes", false, [](const C& c) { return json(c.share_prefixes); }),
      row("eval.prompts", f.other, [](const C& c) { return json(c.sample_eval.prompts.path); }),
      row("eval.format", "prompt", [](const C& c) { return json(c.sample_eval.prompts.format); }),
      row("eval.template", "plain",
          [](const C& c) { return json(c.sample_eval.prompts.template_name); }),
      row("eval.max_prompt_len", 32,
          [](const C& c) { return json(c.sample_eval.prompts.max_prompt_len); }),
      row("eval.count", 8, [](const C& c) { return json(c.sample_eval.count); }),
      row("eval.max_new_tokens", 16, [](const C& c) { return json(c.sample_eval.max_new_tokens); }),
      row("eval.temperature", 0.7, [](const C& c) { return json(c.sample_eval.temperature); }),
      row("ground_truth", json{{"rule", "contains"}, {"text", "x"}},
          [](const C& c) {
            const GroundTruthRule& g = c.sample_eval.ground_truth;
            return json{{"rule", g.kind}, {"text", g.text}};
          }),
      row("ground_truth.rule", "regex",
          [](const C& c) { return json(c.sample_eval.ground_truth.kind); }),
      row("ground_truth.pattern", "y+",
          [](const C& c) { return json(c.sample_eval.ground_truth.pattern); }),
      row("ground_truth.ignore_case", true,
          [](const C& c) { return json(c.sample_eval.ground_truth.ignore_case); }),
      row("ground_truth.text", "z",
          [](const C& c) { return json(c.sample_eval.ground_truth.text); }),
      row("ground_truth.min_words", 2,
          [](const C& c) { return json(c.sample_eval.ground_truth.min_words); }),
      row("ground_truth.max_words", 5,
          [](const C& c) { return json(c.sample_eval.ground_truth.max_words); }),
  };
}

// Keys read only to be refused, or whose only accepted value is their default: nothing else can
// be set.
// Keys of a prepare body: each held in the config as prepare_config_values states it (a step's
// section runs once one of its keys is given).
std::vector<KeyCase> prepare_cases() {
  const Files& f = files();
  const std::vector<std::pair<std::string, json>> values = {
      {"inputs", json::array({{{"path", f.other},
                               {"format", "jsonl"},
                               {"field", "body"},
                               {"documents", "paragraphs"}}})},
      {"tokenizer", f.other},
      {"threads", 3},
      {"memory_mb", 64},
      {"max_document_bytes", 4096},
      {"bad_documents", "skip"},
      {"normalize.nfc", false},
      {"normalize.control_chars", false},
      {"normalize.whitespace", false},
      {"boilerplate.patterns", json::array({"subscribe now"})},
      {"boilerplate.min_words_per_line", 2},
      {"boilerplate.require_terminal_punctuation", true},
      {"boilerplate.drop_curly_bracket_lines", true},
      {"c4.min_sentences", 2},
      {"c4.drop_lorem_ipsum", false},
      {"c4.drop_curly_bracket", true},
      {"gopher_quality.min_words", 20},
      {"gopher_quality.max_words", 1000},
      {"gopher_quality.min_mean_word_length", 2.0},
      {"gopher_quality.max_mean_word_length", 12.0},
      {"gopher_quality.max_symbol_word_ratio", 0.2},
      {"gopher_quality.max_bullet_lines_ratio", 0.5},
      {"gopher_quality.max_ellipsis_lines_ratio", 0.5},
      {"gopher_quality.min_alpha_words_ratio", 0.5},
      {"gopher_quality.min_stop_words", 1},
      {"gopher_quality.stop_words", json::array({"the", "a"})},
      {"gopher_repetition.max_dup_line_frac", 0.5},
      {"gopher_repetition.max_dup_para_frac", 0.5},
      {"gopher_repetition.max_dup_line_char_frac", 0.5},
      {"gopher_repetition.max_dup_para_char_frac", 0.5},
      {"gopher_repetition.max_top_ngram_char_frac", {{"2", 0.3}}},
      {"gopher_repetition.max_dup_ngram_char_frac", {{"5", 0.3}}},
      {"pii.email", false},
      {"pii.ip", false},
      {"pii.phone", false},
      {"pii.email_token", "[email]"},
      {"pii.ip_token", "[ip]"},
      {"pii.phone_token", "[phone]"},
      {"exact_dedup", true},
      {"near_dedup.shingle_words", 3},
      {"near_dedup.permutations", 64},
      {"near_dedup.bands", 64},
      {"near_dedup.rows", 16},
      {"near_dedup.threshold", 0.7},
      {"near_dedup.seed", 7},
      {"validation_fraction", 0.1},
      {"shard_tokens", 1000},
      {"examples", 5}};
  std::vector<KeyCase> cases;
  for (const auto& [key, value] : values) {
    const std::string path = key;
    cases.push_back(
        {"prepare", key, value, field<PrepareStageConfig>([path](const PrepareStageConfig& c) {
           return at_path(prepare_config_values(c.prepare), path);
         })});
  }
  return cases;
}

const std::set<std::string> kNoOtherValue = {
    "pretrain data.template",         // refused: pretraining reads plain text
    "pretrain data.train_on_prompt",  // refused: pretraining trains every token
    "pretrain data.max_records",      // refused: pretraining reads the whole file
    "pretrain data.format",           // text (shards needs a prepared directory: shards_test.cpp)
    "rlhf kl.estimator",              // k1 (k3 is refused in PPO's reward)
    "rlhf rollout.top_k",             // 0 (PPO's ratios are those of the whole distribution)
    "rlhf rollout.top_p",             // 1
    "grpo rollout.top_k",             // 0 (the update's ratios are of the whole distribution)
    "grpo rollout.top_p",             // 1
};

std::vector<KeyCase> all_cases() {
  std::vector<KeyCase> cases;
  for (const std::string type : {"pretrain", "sft", "reward", "dpo"}) {
    auto train = train_cases(type);
    cases.insert(cases.end(), train.begin(), train.end());
  }
  for (const std::string type : {"pretrain", "sft"}) {
    auto lm = language_model_cases(type);
    cases.insert(cases.end(), lm.begin(), lm.end());
  }
  auto reward = reward_cases();
  cases.insert(cases.end(), reward.begin(), reward.end());
  auto rlhf = rlhf_cases();
  cases.insert(cases.end(), rlhf.begin(), rlhf.end());
  auto dpo = dpo_cases();
  cases.insert(cases.end(), dpo.begin(), dpo.end());
  auto grpo = grpo_cases();
  cases.insert(cases.end(), grpo.begin(), grpo.end());
  auto prepare = prepare_cases();
  cases.insert(cases.end(), prepare.begin(), prepare.end());
  return cases;
}

// The body of a case: the base body with the case's key set (a ground-truth key beside the rest
// of a rule it needs; a val file instead of the default split's fraction).
json case_body(const KeyCase& c) {
  json body = base_body(c.type);
  for (const auto& key : c.drop) body.erase(key);
  if (c.key == "ground_truth.text")
    body["ground_truth"] = {{"rule", "contains"}};
  else if (c.key == "ground_truth.min_words" || c.key == "ground_truth.max_words")
    body["ground_truth"] = {{"rule", "length"}};
  else if (c.key.rfind("ground_truth.", 0) == 0)
    body["ground_truth"] = {{"rule", "regex"}, {"pattern", "x"}};
  if (c.key.rfind("tokenizer.", 0) == 0 && !body["tokenizer"].is_object())
    body["tokenizer"] = {{"train", files().data}};
  if (c.type == "rlhf" && c.key == "ppo.micro_batch_size") body["ppo"]["mini_batch_size"] = 4;
  if (c.type == "reward" && c.key == "normalize.reference") body["data"]["val_fraction"] = 0.1;
  if (c.type == "reward" && c.key == "loss.rankings") body["data"]["format"] = "ranking";
  if (c.key == "tokenizer" && c.type == "pretrain") body.erase("tokenizer");
  // dpo: the sampling check and its rule need the prompts; gamma is SimPO's.
  if (c.type == "dpo" && (c.key.rfind("eval.", 0) == 0 || c.key.rfind("ground_truth", 0) == 0))
    body["eval"]["prompts"] = files().data;
  if (c.type == "dpo" && c.key == "loss.gamma") body["loss"]["type"] = "simpo";
  // The finished runs forecast only with train.forecast on.
  if (c.key == "train.forecast_from_runs") body["train"]["forecast"] = 0.3;
  // MinHash's bands x rows must stay its permutations.
  if (c.key == "near_dedup.permutations") body["near_dedup"] = {{"bands", 8}, {"rows", 8}};
  if (c.key == "near_dedup.bands") body["near_dedup"] = {{"rows", 2}};
  if (c.key == "near_dedup.rows") body["near_dedup"] = {{"bands", 8}};
  set_path(body, c.key, c.value);
  return body;
}

}  // namespace

TEST(StageKeys, EveryKeySetToANonDefaultIsParsedAndStatedInTheResolvedRecipe) {
  const auto cases = all_cases();
  for (const KeyCase& c : cases) {
    SCOPED_TRACE(c.type + " " + c.key + " = " + c.value.dump());
    const json body = case_body(c);
    const Parsed parsed = parse(body);
    ASSERT_EQ(parsed.errors, "") << body.dump();
    // The value is not the default: the base body's parse holds something else.
    const Parsed base = parse(base_body(c.type));
    ASSERT_EQ(base.errors, "");
    if (c.drop.empty()) {
      EXPECT_NE(c.parsed(base.config), c.value) << "the default itself";
    }
    EXPECT_EQ(c.parsed(parsed.config), c.value) << "parsed, not held in the config";
    const json stated = at_path(parsed.stated, c.key);
    if (c.value.is_object()) {
      for (const auto& item : c.value.items())
        EXPECT_EQ(stated.value(item.key(), json()), item.value()) << parsed.stated.dump();
    } else {
      EXPECT_EQ(stated, c.value) << "not stated in the resolved recipe: " << parsed.stated.dump();
    }
  }
}

// The table covers every key the parsers look up: a key a stage reads but the table does not set
// fails here (so a new key must be added to the table, and so to the stated values).
TEST(StageKeys, TheTableCoversEveryKeyTheParsersRead) {
  const auto cases = all_cases();
  std::set<std::string> covered = kNoOtherValue;
  for (const KeyCase& c : cases) covered.insert(c.type + " " + c.key);
  // A section ("sft train") is covered by its keys.
  auto is_section = [&](const std::string& key) {
    const auto next = covered.lower_bound(key + ".");
    return next != covered.end() && next->rfind(key + ".", 0) == 0;
  };
  std::set<std::string> read;
  std::string type;
  ConfigReader::set_key_observer([&](const std::string& path) {
    static const std::regex stage_prefix(R"(^stages\[\d+\]\.)");
    read.insert(type + " " + std::regex_replace(path, stage_prefix, ""));
  });
  for (const KeyCase& c : cases) {
    type = c.type;
    parse(case_body(c));
  }
  ConfigReader::set_key_observer(nullptr);
  std::string missing;
  for (const std::string& key : read) {
    const std::string path = key.substr(key.find(' ') + 1);
    if (path == "name" || path == "type") continue;
    // A list's entries ("grpo rewards[0].weight") are covered by the list's row; their keys by
    // their parser's own tests (tests/reward_functions_test.cpp).
    if (path.find('[') != std::string::npos && covered.count(key.substr(0, key.find('['))))
      continue;
    if (!covered.count(key) && !is_section(key)) missing += " '" + key + "'";
  }
  EXPECT_EQ(missing, "") << "read by a parser, not in the table";
  // Every registered type has its rows (a new stage type adds its keys here).
  for (const StageType& registered : stage_registry())
    EXPECT_TRUE(std::any_of(cases.begin(), cases.end(),
                            [&](const KeyCase& c) { return c.type == registered.type; }))
        << registered.type << " has no rows in the table";
  EXPECT_GT(read.size(), 150u);
}

// The resolved recipe is itself a recipe: each type's stated values, merged into its body, parse
// back to the same values (so `tiller run RUN_DIR/recipe.json` runs what ran).
TEST(StageKeys, StatedValuesParseBackToThemselves) {
  for (const KeyCase& c : all_cases()) {
    SCOPED_TRACE(c.type + " " + c.key);
    const Parsed first = parse(case_body(c));
    ASSERT_EQ(first.errors, "");
    json body = first.stated;
    body["name"] = "s";
    body["type"] = c.type;
    const Parsed again = parse(body);
    ASSERT_EQ(again.errors, "") << body.dump();
    EXPECT_EQ(again.stated, first.stated);
  }
}

// What the keys do, where it is cheap to see: the schedule, the loop's cadence and the optimizer.
TEST(StageKeys, TrainKeysReachTheScheduleTheLoopAndTheOptimizer) {
  json body = base_body("sft");
  body["train"] = {{"steps", 10},
                   {"lr", 0.01},
                   {"warmup_steps", 2},
                   {"schedule", "linear"},
                   {"min_lr_ratio", 0.5},
                   {"checkpoint_every", 3},
                   {"keep_checkpoints", 4},
                   {"log_every", 5},
                   {"eval_every", 6},
                   {"max_nonfinite_steps", 7},
                   {"loss_spike_zscore", 2.5},
                   {"loss_spike_window", 9},
                   {"weight_decay", 0.2},
                   {"beta1", 0.7},
                   {"beta2", 0.9},
                   {"eps", 1e-5}};
  const Parsed parsed = parse(body);
  ASSERT_EQ(parsed.errors, "");
  const TrainConfig& train = std::any_cast<const SftStageConfig&>(parsed.config).train;
  // Warmup: lr * (step + 1) / warmup; then linear from lr to lr * min_lr_ratio over the 8 steps
  // left after it.
  const ScheduleOptions schedule = train.schedule_options();
  EXPECT_DOUBLE_EQ(learning_rate(schedule, 0), 0.005);
  EXPECT_DOUBLE_EQ(learning_rate(schedule, 1), 0.01);
  EXPECT_DOUBLE_EQ(learning_rate(schedule, 2), 0.01);
  EXPECT_DOUBLE_EQ(learning_rate(schedule, 6), 0.01 + (0.005 - 0.01) * 4.0 / 8.0);
  EXPECT_DOUBLE_EQ(learning_rate(schedule, 10), 0.005);
  const LoopSchedule loop = loop_schedule(train);
  EXPECT_EQ(loop.steps, 10);
  EXPECT_EQ(loop.checkpoint_every, 3);
  EXPECT_EQ(loop.keep_checkpoints, 4);
  EXPECT_EQ(loop.log_every, 5);
  EXPECT_EQ(loop.eval_every, 6);
  EXPECT_EQ(loop.max_nonfinite_steps, 7);
  EXPECT_EQ(loop.loss_spike_zscore, 2.5);
  EXPECT_EQ(loop.loss_spike_window, 9);
  const OptimizerOptions optimizer = train.optimizer();
  EXPECT_EQ(optimizer.lr, 0.01);
  EXPECT_EQ(optimizer.weight_decay, 0.2);
  EXPECT_EQ(optimizer.beta1, 0.7);
  EXPECT_EQ(optimizer.beta2, 0.9);
  EXPECT_EQ(optimizer.eps, 1e-5);
}

// The reward offset's reference set: the validation chosen responses when there is validation
// data, the training ones when there is none (and val_chosen is then refused), stated either way.
TEST(StageKeys, TheRewardReferenceSetFollowsTheValidationData) {
  json body = base_body("reward");
  EXPECT_EQ(at_path(parse(body).stated, "normalize.reference"), "val_chosen");
  body["data"]["val_fraction"] = 0;
  EXPECT_EQ(at_path(parse(body).stated, "normalize.reference"), "train_chosen");
  body["normalize"] = {{"reference", "val_chosen"}};
  EXPECT_NE(parse(body).errors.find("stages[0].normalize.reference: \"val_chosen\" needs "
                                    "validation data"),
            std::string::npos)
      << parse(body).errors;
  body["data"].erase("val_fraction");
  body["data"]["val"] = files().other;
  EXPECT_EQ(parse(body).errors, "");
}

// A tokenizer trained by an sft stage that loads its model from init would be ignored: refused.
TEST(StageKeys, ATokenizerToTrainBesideInitIsRefused) {
  json body = base_body("sft");
  body["tokenizer"] = {{"train", files().data}};
  EXPECT_NE(parse(body).errors.find("stages[0].tokenizer: a tokenizer is trained"),
            std::string::npos)
      << parse(body).errors;
}

// Without validation data the offset is the training pairs' chosen responses' mean raw score:
// complete.json says so (and over how many), and those responses score 0 on average after it.
TEST(StageKeys, WithoutValidationDataTheRewardOffsetIsTheTrainingChosenMean) {
  const std::string bin = test::shared_file("models/stories260K/stories260K.bin");
  const std::string tok = test::shared_file("models/stories260K/tok512.model");
  if (bin.empty() || tok.empty()) GTEST_SKIP() << "skipped: ../shared/data/models/stories260K";
  const std::string dir = test::temp_dir("stage_keys_offset");
  {
    auto model = import_llama2c(bin);
    SaveOptions options;
    options.tokenizer_path = tok;
    save_hf_model(*model, dir + "/init", options);
  }
  {
    std::ofstream pairs(dir + "/pairs.jsonl");
    for (const std::string name : {"Tom", "Lily", "Ben", "Mia", "Sam", "Sue"})
      pairs << json{{"prompt", "A story about " + name + "."},
                    {"chosen", name + " was happy and smiled."},
                    {"rejected", name + " was sad."}}
                   .dump()
            << "\n";
  }
  std::ofstream(dir + "/r.json") << json{
      {"run", {{"name", "rm"}, {"dir", dir + "/run"}, {"threads", 1}}},
      {"base", {{"hf", dir + "/init"}}},
      {"stages",
       {{{"name", "rm"},
         {"type", "reward"},
         {"init", "@base"},
         {"data", {{"train", dir + "/pairs.jsonl"}, {"template", "plain"}, {"val_fraction", 0}}},
         {"train", {{"steps", 2}, {"batch_size", 2}, {"max_seq_len", 48}}}}}}};
  ConfigErrors errors;
  const Recipe recipe = load_recipe(dir + "/r.json", {}, errors);
  const std::any config = parse_stage(recipe.stages.at(0), errors);
  ASSERT_TRUE(errors.empty()) << errors.list()[0];
  const json summary = run_reward_stage(recipe, std::any_cast<const RewardStageConfig&>(config));
  EXPECT_EQ(summary["normalize_reference"], "train_chosen");
  EXPECT_EQ(summary["normalize_reference_sequences"], 6);
  EXPECT_EQ(summary["train_pairs"], 6);
  EXPECT_EQ(read_json_file(dir + "/run/rm/complete.json")["normalize_reference"], "train_chosen");
  const RewardEvalResult scored =
      evaluate_reward_model(dir + "/run/rm/final", dir + "/pairs.jsonl");
  EXPECT_EQ(scored.pairs, 6);
  EXPECT_NEAR(scored.chosen_reward, 0.0, 1e-5);
}
