#include "rlhf/rlhf_stage.h"

#include <chrono>
#include <cmath>
#include <cstdio>

#include "common/data/batching.h"  // seeded_permutation
#include "common/data/preference_data.h"
#include "common/io/checkpoint.h"
#include "common/io/hf_dir.h"
#include "common/io/safetensors.h"
#include "common/model/reward_model.h"
#include "common/recipe/stage_io.h"
#include "common/tokenizer/tokenizer.h"
#include "common/train/metrics.h"
#include "common/train/nonfinite_guard.h"
#include "common/train/parallel_adamw.h"
#include "common/train/precision.h"
#include "common/train/schedule.h"
#include "common/train/train_config.h"  // read_parallel_options
#include "common/util/error.h"
#include "common/util/files.h"
#include "common/util/interrupt.h"
#include "rlhf/ppo_math.h"

namespace tiller {

// ---------------------------------------------------------------------------------------------
// Config

RlhfStageConfig parse_rlhf_stage(const StageEntry& entry, ConfigErrors& errors) {
  RlhfStageConfig c;
  ConfigReader r(*entry.body, entry.path, errors);
  c.name = r.string("name", "");
  r.string("type", "");
  c.policy = r.string("policy", c.policy);
  c.reference = r.string("reference", c.policy);
  c.reward_model = r.string("reward_model", c.reward_model);
  c.critic = r.string("critic", c.reward_model);
  {
    ConfigReader d(r.object("data"), r.path_of("data"), errors);
    c.data.path = d.required_string("prompts");
    c.data.format = d.string("format", c.data.format);
    c.data.template_name = d.string("template", c.data.template_name);
    c.data.max_prompt_len = d.integer("max_prompt_len", c.data.max_prompt_len);
    c.data.max_records = d.integer("max_records", -1);
    c.data.skip_bad_lines = d.boolean("skip_bad_lines", false);
    d.one_of("format", c.data.format, {"auto", "prompt", "messages", "alpaca", "hh"});
    d.one_of("template", c.data.template_name, {"chatml", "llama2", "alpaca", "plain"});
    d.require(c.data.max_prompt_len >= 1, "max_prompt_len", "must be at least 1");
    d.require(c.data.max_records == -1 || c.data.max_records >= 1, "max_records",
              "must be at least 1 (or -1: all)");
    if (!c.data.path.empty() && !path_exists(c.data.path))
      errors.add(d.path_of("prompts"), "file " + c.data.path + " does not exist");
  }
  {
    ConfigReader g(r.object("rollout"), r.path_of("rollout"), errors);
    SamplingOptions& s = c.ppo.sampling;
    c.batch_size = g.integer("batch_size", c.batch_size);
    s.max_new_tokens = g.integer("max_new_tokens", s.max_new_tokens);
    s.temperature = g.number("temperature", s.temperature);
    s.top_k = g.integer("top_k", s.top_k);
    s.top_p = g.number("top_p", s.top_p);
    // null (the default): responses without EOS are scored by the reward model like the others.
    c.ppo.missing_eos_penalty = g.number_or_null("missing_eos_penalty", std::nullopt);
    g.require(c.batch_size >= 1, "batch_size", "must be at least 1");
    g.require(s.max_new_tokens >= 1, "max_new_tokens", "must be at least 1");
    g.require(s.temperature > 0, "temperature",
              "must be > 0 (PPO samples; the log-probs use the same temperature)");
    // PPO's ratios and KL use the log-probabilities of the whole (temperature-scaled)
    // distribution; a response drawn from a truncated one would make every update off-policy.
    g.require(s.top_k == 0, "top_k",
              "must be 0 in PPO: a top-k sample comes from another distribution than the "
              "log-probabilities PPO learns from (off-policy)");
    g.require(s.top_p == 1, "top_p",
              "must be 1 in PPO: a top-p sample comes from another distribution than the "
              "log-probabilities PPO learns from (off-policy)");
  }
  {
    ConfigReader w(r.object("reward"), r.path_of("reward"), errors);
    c.ppo.whiten_rewards = w.boolean("whiten", false);
    c.ppo.reward_clip = w.number("clip", 0.0);
    c.reward_max_seq_len = w.integer("max_seq_len", 0);
    w.require(c.ppo.reward_clip >= 0, "clip", "must be >= 0 (0: no clipping)");
    w.require(c.reward_max_seq_len >= 0, "max_seq_len", "must be >= 0 (0: the RM's own)");
    w.require(!c.ppo.whiten_rewards || c.batch_size >= 2, "whiten",
              "needs rollout.batch_size >= 2: one episode's score cannot be whitened");
  }
  {
    ConfigReader k(r.object("kl"), r.path_of("kl"), errors);
    c.ppo.kl_estimator = k.string("estimator", c.ppo.kl_estimator);
    c.beta = k.number("beta", c.beta);
    c.kl_target = k.number("target", c.kl_target);
    c.kl_horizon = k.number("horizon", c.kl_horizon);
    c.kl_max = k.number("max", c.kl_max);
    // k3 = exp(ref - logp) - (ref - logp) - 1 is second order in the log-ratio: as a reward it
    // has almost no gradient near the reference (a tenth of the true KL's on a 5-way softmax,
    // tests/ppo_math_test.cpp). It belongs in a KL loss term, which PPO here does not have.
    k.require(c.ppo.kl_estimator != "k3", "estimator",
              "k3 is refused in PPO's reward: near the reference its gradient is a small fraction "
              "of the true KL's (use k1; k3 is for a KL loss term)");
    k.one_of("estimator", c.ppo.kl_estimator, {"k1", "k3"});
    k.require(c.beta >= 0 && std::isfinite(c.beta), "beta", "must be >= 0");
    k.require(c.kl_target >= 0, "target", "must be >= 0 (0: fixed beta)");
    k.require(c.kl_horizon > 0, "horizon", "must be positive");
    k.require(c.kl_max >= 0, "max", "must be >= 0 (0: no bound)");
  }
  {
    ConfigReader p(r.object("ppo"), r.path_of("ppo"), errors);
    PpoOptions& o = c.ppo;
    o.epochs = p.integer("epochs", o.epochs);
    o.mini_batch_size = p.integer("mini_batch_size", o.mini_batch_size);
    o.micro_batch_size = p.integer("micro_batch_size", o.mini_batch_size);
    o.gamma = p.number("gamma", o.gamma);
    o.lam = p.number("lambda", o.lam);
    o.clip = p.number("clip", o.clip);
    o.value_clip = p.number("value_clip", o.value_clip);
    o.value_coef = p.number("value_coef", o.value_coef);
    o.whiten_advantages = p.boolean("whiten_advantages", o.whiten_advantages);
    c.critic_head = p.string("critic_head", "auto");
    p.one_of("critic_head", c.critic_head, {"auto", "reward_model", "zeros"});
    // auto: whitened scores have mean 0, and a zero head starts the critic there; unwhitened ones
    // are the reward model's (raw head - offset), which its own head, less the offset, predicts.
    if (c.critic_head == "auto") c.critic_head = c.ppo.whiten_rewards ? "zeros" : "reward_model";
    c.dump_rollouts = p.integer("dump_rollouts", 0);
    p.require(c.dump_rollouts >= 0, "dump_rollouts",
              "must be >= 0 (the first N iterations' rollouts written as safetensors)");
    p.require(o.epochs >= 1, "epochs", "must be at least 1");
    p.require(o.mini_batch_size >= 1 && c.batch_size % std::max<int64_t>(1, o.mini_batch_size) == 0,
              "mini_batch_size",
              "must be at least 1 and divide rollout.batch_size " + std::to_string(c.batch_size));
    p.require(o.micro_batch_size >= 1 &&
                  o.mini_batch_size % std::max<int64_t>(1, o.micro_batch_size) == 0,
              "micro_batch_size", "must be at least 1 and divide mini_batch_size");
    p.require(o.gamma > 0 && o.gamma <= 1, "gamma", "must be in (0, 1]");
    p.require(o.lam >= 0 && o.lam <= 1, "lambda", "must be in [0, 1]");
    p.require(o.clip > 0 && o.clip < 1, "clip", "must be in (0, 1)");
    p.require(o.value_clip > 0, "value_clip", "must be positive");
    p.require(o.value_coef >= 0, "value_coef", "must be >= 0");
  }
  {
    ConfigReader t(r.object("train"), r.path_of("train"), errors);
    c.iterations = t.integer("iterations", c.iterations);
    c.actor_lr = t.number("actor_lr", c.actor_lr);
    c.critic_lr = t.number("critic_lr", c.critic_lr);
    c.schedule = t.string("schedule", c.schedule);
    c.min_lr_ratio = t.number("min_lr_ratio", c.min_lr_ratio);
    c.warmup_iterations = t.integer("warmup_iterations", c.warmup_iterations);
    c.weight_decay = t.number("weight_decay", c.weight_decay);
    c.beta1 = t.number("beta1", c.beta1);
    c.beta2 = t.number("beta2", c.beta2);
    c.eps = t.number("eps", c.eps);
    const double grad_clip = t.number("grad_clip", 1.0);
    c.ppo.actor_grad_clip = c.ppo.critic_grad_clip = grad_clip;
    c.checkpoint_every = t.integer("checkpoint_every", c.checkpoint_every);
    c.keep_checkpoints = t.integer("keep_checkpoints", c.keep_checkpoints);
    c.log_every = t.integer("log_every", c.log_every);
    c.precision = t.string("precision", c.precision);
    c.max_nonfinite_steps = t.integer("max_nonfinite_steps", c.max_nonfinite_steps);
    c.parallel = read_parallel_options(t);
    t.require(c.iterations >= 1, "iterations", "must be at least 1");
    t.require(c.actor_lr > 0 && c.actor_lr < 1, "actor_lr", "must be in (0, 1)");
    t.require(c.critic_lr > 0 && c.critic_lr < 1, "critic_lr", "must be in (0, 1)");
    t.one_of("schedule", c.schedule, {"linear", "cosine", "constant"});
    t.require(c.min_lr_ratio >= 0 && c.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]");
    t.require(c.warmup_iterations >= 0, "warmup_iterations", "must be >= 0");
    t.require(c.weight_decay >= 0, "weight_decay", "must be >= 0");
    t.require(c.beta1 >= 0 && c.beta1 < 1, "beta1", "must be in [0, 1)");
    t.require(c.beta2 >= 0 && c.beta2 < 1, "beta2", "must be in [0, 1)");
    t.require(c.eps > 0, "eps", "must be positive");
    t.require(c.checkpoint_every >= 0, "checkpoint_every", "must be >= 0");
    t.require(c.keep_checkpoints >= 1, "keep_checkpoints", "must be at least 1");
    t.require(c.log_every >= 1, "log_every", "must be at least 1");
    t.one_of("precision", c.precision, {"fp32", "bf16", "auto"});
    t.require(c.max_nonfinite_steps >= 1, "max_nonfinite_steps", "must be at least 1");
  }
  c.ground_truth = parse_ground_truth(r.raw("ground_truth"), r.path_of("ground_truth"), errors);
  {
    ConfigReader s(r.object("samples"), r.path_of("samples"), errors);
    c.sample_every = s.integer("every", c.sample_every);
    c.sample_count = s.integer("count", c.sample_count);
    s.require(c.sample_every >= 0, "every", "must be >= 0 (0: only before and after)");
    s.require(c.sample_count >= 0, "count", "must be >= 0");
  }
  {
    ConfigReader e(r.object("eval"), r.path_of("eval"), errors);
    c.eval_prompts = e.integer("prompts", c.eval_prompts);
    c.eval_every = e.integer("every", c.eval_every);
    const auto& baselines = e.raw("baselines");
    if (baselines.is_array()) {
      for (const auto& b : baselines) {
        if (b.is_string())
          c.baselines.push_back(b.get<std::string>());
        else
          errors.add(e.path_of("baselines"), "expected a list of model references (strings)");
      }
    } else if (!baselines.is_null()) {
      errors.add(e.path_of("baselines"), "expected a list of model references (strings)");
    }
    e.require(c.eval_prompts >= 0, "prompts", "must be >= 0 (0: no evaluation rollouts)");
    e.require(c.baselines.empty() || c.eval_prompts > 0, "baselines",
              "baselines are evaluated on the evaluation prompts; eval.prompts must be > 0");
    e.require(c.eval_every >= 0, "every", "must be >= 0 (0: before and after only)");
  }
  return c;
}

nlohmann::json rlhf_stated_defaults(const RlhfStageConfig& c) {
  const PpoOptions& o = c.ppo;
  const SamplingOptions& s = o.sampling;
  return {{"data",
           {{"format", c.data.format},
            {"template", c.data.template_name},
            {"max_prompt_len", c.data.max_prompt_len},
            {"max_records", c.data.max_records},
            {"skip_bad_lines", c.data.skip_bad_lines}}},
          {"rollout",
           {{"batch_size", c.batch_size},
            {"max_new_tokens", s.max_new_tokens},
            {"temperature", s.temperature},
            {"top_k", s.top_k},
            {"top_p", s.top_p},
            {"missing_eos_penalty", o.missing_eos_penalty ? nlohmann::json(*o.missing_eos_penalty)
                                                          : nlohmann::json(nullptr)}}},
          {"reward",
           {{"whiten", o.whiten_rewards},
            {"clip", o.reward_clip},
            {"max_seq_len", c.reward_max_seq_len}}},
          {"kl",
           {{"estimator", o.kl_estimator},
            {"beta", c.beta},
            {"target", c.kl_target},
            {"horizon", c.kl_horizon},
            {"max", c.kl_max}}},
          {"ppo",
           {{"epochs", o.epochs},
            {"mini_batch_size", o.mini_batch_size},
            {"micro_batch_size", o.micro_batch_size},
            {"gamma", o.gamma},
            {"lambda", o.lam},
            {"clip", o.clip},
            {"value_clip", o.value_clip},
            {"value_coef", o.value_coef},
            {"whiten_advantages", o.whiten_advantages},
            {"critic_head", c.critic_head},
            {"dump_rollouts", c.dump_rollouts}}},
          {"train",
           {{"iterations", c.iterations},
            {"actor_lr", c.actor_lr},
            {"critic_lr", c.critic_lr},
            {"schedule", c.schedule},
            {"min_lr_ratio", c.min_lr_ratio},
            {"warmup_iterations", c.warmup_iterations},
            {"weight_decay", c.weight_decay},
            {"beta1", c.beta1},
            {"beta2", c.beta2},
            {"eps", c.eps},
            {"grad_clip", o.actor_grad_clip},
            {"checkpoint_every", c.checkpoint_every},
            {"keep_checkpoints", c.keep_checkpoints},
            {"log_every", c.log_every},
            {"precision", c.precision},
            {"max_nonfinite_steps", c.max_nonfinite_steps},
            {"zero_stage", c.parallel.zero_stage},
            {"allreduce_bucket_mb", static_cast<double>(c.parallel.bucket_bytes) / (1 << 20)}}},
          {"eval", {{"prompts", c.eval_prompts}, {"every", c.eval_every}}},
          {"samples", {{"every", c.sample_every}, {"count", c.sample_count}}}};
}

// ---------------------------------------------------------------------------------------------
// Run

namespace {

// A 64-bit mix of several values (splitmix64 steps): episode and shuffle seeds.
// A double as text that reads back to the same value.
std::string exact_text(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.17g", value);
  return text;
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

constexpr uint64_t kEvalStream = 0xe7a1, kTrainStream = 0x7a1a, kShuffleStream = 0x5f1e;

Transformer load_causal_lm(const std::string& dir, const std::string& role) {
  Transformer model = load_hf_model(dir);
  check(model->config.num_labels == 0,
        role + " " + dir + " has a score head; it must be a causal LM");
  return model;
}

std::string response_text(const Tokenizer& tok, std::vector<int64_t> response) {
  if (!response.empty() && response.back() == tok.eos_id()) response.pop_back();
  return tok.decode(response);
}

}  // namespace

nlohmann::json run_rlhf_stage(const Recipe& recipe, const RlhfStageConfig& c) {
  check(recipe.run.tensor_parallel == 1, "stage " + c.name +
                                             ": PPO stages do not support run.tensor_parallel " +
                                             std::to_string(recipe.run.tensor_parallel) +
                                             " yet; run them with run.tensor_parallel=1");
  const std::string stage_dir = recipe.stage_dir(c.name);
  const std::string checkpoints = stage_dir + "/checkpoints";
  const uint64_t seed = recipe.run.seed;
  torch::manual_seed(seed);
  const torch::Device device(recipe.run.device);

  // Roles
  const std::string policy_dir = resolve_model_reference(recipe, c.policy);
  Transformer actor = load_causal_lm(policy_dir, "policy");
  Transformer reference = load_causal_lm(resolve_model_reference(recipe, c.reference), "reference");
  const std::string rm_dir = resolve_model_reference(recipe, c.reward_model);
  RewardModel rm = load_reward_model(rm_dir);
  const std::string critic_dir = resolve_model_reference(recipe, c.critic);
  Transformer critic = load_hf_model(critic_dir, /*num_labels=*/1);
  // The critic's values on the scale of the returns it learns to predict (a resumed run's
  // checkpoint replaces the head below).
  double value_offset = 0.0;
  if (c.critic_head == "zeros") {
    torch::NoGradGuard no_grad;
    critic->score->weight.zero_();
  } else {
    value_offset = read_reward_metadata(critic_dir).offset;
  }
  const std::string tokenizer_path = tokenizer_path_in(policy_dir);
  Tokenizer tok(tokenizer_path);
  tok.check_matches(actor->config, c.policy);
  check(read_file(tokenizer_path_in(rm_dir)) == read_file(tokenizer_path),
        "stage " + c.name + ": the reward model " + rm_dir +
            " has a different tokenizer from the policy's; it scores the policy's tokens");
  if (!rm.metadata.template_name.empty() && rm.metadata.template_name != c.data.template_name)
    std::fprintf(stderr,
                 "[%s] warning: the reward model was trained with the '%s' template, the prompts "
                 "use '%s'\n",
                 c.name.c_str(), rm.metadata.template_name.c_str(), c.data.template_name.c_str());
  const int64_t rm_max_len = c.reward_max_seq_len > 0 ? c.reward_max_seq_len
                             : rm.metadata.max_seq_len > 0
                                 ? rm.metadata.max_seq_len
                                 : rm.model->config.max_position_embeddings;
  check(c.data.max_prompt_len < rm_max_len,
        "stage " + c.name + ": data.max_prompt_len " + std::to_string(c.data.max_prompt_len) +
            " leaves no room for a response in the reward model's " + std::to_string(rm_max_len) +
            " tokens; set data.max_prompt_len below " + std::to_string(rm_max_len) +
            " (or reward.max_seq_len above it)");
  check(c.data.max_prompt_len + c.ppo.sampling.max_new_tokens <=
            actor->config.max_position_embeddings,
        "stage " + c.name +
            ": data.max_prompt_len + rollout.max_new_tokens exceeds the policy's "
            "context of " +
            std::to_string(actor->config.max_position_embeddings));
  for (TransformerImpl* frozen : {reference.get(), rm.model.get()}) {
    for (auto& p : frozen->parameters()) p.requires_grad_(false);
    frozen->eval();
    frozen->to(device);
  }
  actor->to(device);
  critic->to(device);
  actor->train();
  critic->train();

  // Prompts: a seeded hold-out for the evaluation rollouts, the rest for training.
  PromptStats stats;
  auto all_prompts = load_prompts(c.data, tok, &stats);
  const auto shuffled = seeded_permutation(static_cast<int64_t>(all_prompts.size()), seed);
  check(c.eval_prompts < static_cast<int64_t>(all_prompts.size()),
        "stage " + c.name + ": eval.prompts " + std::to_string(c.eval_prompts) + " holds out " +
            (c.eval_prompts == static_cast<int64_t>(all_prompts.size()) ? "every one"
                                                                        : "more than all") +
            " of the " + std::to_string(all_prompts.size()) + " usable prompts in " + c.data.path +
            ", leaving none to train on; lower eval.prompts");
  const size_t eval_count = static_cast<size_t>(c.eval_prompts);
  std::vector<std::vector<int64_t>> eval_prompts, train_prompts;
  for (size_t i = 0; i < shuffled.size(); ++i)
    (i < eval_count ? eval_prompts : train_prompts)
        .push_back(all_prompts[static_cast<size_t>(shuffled[i])]);
  std::printf(
      "[%s] prompts: %lld records -> %zu train / %zu evaluation; %lld over %lld tokens "
      "dropped; %lld bad lines skipped\n",
      c.name.c_str(), (long long)stats.records, train_prompts.size(), eval_prompts.size(),
      (long long)stats.too_long, (long long)c.data.max_prompt_len, (long long)stats.skipped);
  if (static_cast<int64_t>(train_prompts.size()) < c.batch_size)
    std::fprintf(stderr,
                 "[%s] warning: %zu training prompts for rollout.batch_size %lld: every rollout "
                 "repeats prompts\n",
                 c.name.c_str(), train_prompts.size(), (long long)c.batch_size);

  // Trainer
  PpoOptions options = c.ppo;
  options.sampling.eos_id = tok.eos_id();
  options.sampling.pad_id = reward_pad_id(tok);
  options.bf16 = use_bf16(c.precision, device);
  options.value_offset = value_offset;
  const int64_t rm_pad =
      rm.model->config.pad_token_id >= 0 ? rm.model->config.pad_token_id : reward_pad_id(tok);
  EpisodeScorer scorer = [&](const std::vector<std::vector<int64_t>>& prompts,
                             const std::vector<std::vector<int64_t>>& responses) {
    std::vector<std::vector<int64_t>> sequences;
    for (size_t i = 0; i < prompts.size(); ++i)
      sequences.push_back(
          reward_sequence(prompts[i], responses[i], tok.eos_id(), rm_max_len).tokens);
    std::vector<double> scores;
    {
      c10::InferenceMode inference;
      scores = score_sequences(*rm.model, sequences, rm_pad, options.micro_batch_size,
                               rm.metadata.offset);
    }
    return torch::tensor(scores, torch::kDouble).to(torch::kFloat);
  };
  // Data parallel: each rank generates, scores and trains on its share of every rollout batch.
  const dist::Group& dp = dist::world();
  check(c.batch_size >= dp.size(), "stage " + c.name + ": rollout.batch_size " +
                                       std::to_string(c.batch_size) + " is smaller than the " +
                                       std::to_string(dp.size()) + " data-parallel ranks");
  // The evaluation rollouts are shared the same way; found now, not at the first evaluation.
  check(eval_prompts.empty() || static_cast<int64_t>(eval_prompts.size()) >= dp.size(),
        "stage " + c.name + ": " + std::to_string(eval_prompts.size()) +
            " evaluation prompts (eval.prompts " + std::to_string(c.eval_prompts) +
            ") cannot be shared by " + std::to_string(dp.size()) +
            " data-parallel ranks; raise eval.prompts or set it to 0");
  if (!dp.single())
    std::printf("[%s] data parallel: %d ranks share each rollout of %lld episodes\n",
                c.name.c_str(), dp.size(), (long long)c.batch_size);
  ParallelAdamW actor_optimizer(*actor, {c.actor_lr, c.weight_decay, c.beta1, c.beta2, c.eps}, dp,
                                c.parallel);
  ParallelAdamW critic_optimizer(*critic, {c.critic_lr, c.weight_decay, c.beta1, c.beta2, c.eps},
                                 dp, c.parallel);
  PpoTrainer trainer(options, *actor, *reference, *critic, scorer, actor_optimizer,
                     critic_optimizer, dp);
  ppo::KLController kl(c.beta, c.kl_target, c.kl_horizon);

  // Resume
  CheckpointParts parts{
      {{"actor", actor.get()}, {"critic", critic.get()}},
      {{"actor_optimizer", &actor_optimizer}, {"critic_optimizer", &critic_optimizer}}};
  NonFiniteGuard guard(c.name, checkpoints, c.max_nonfinite_steps);
  int64_t iteration = 0, prompt_epoch = 0, prompt_index = 0;
  nlohmann::json initial_eval;
  auto state = load_latest_checkpoint(checkpoints, parts);
  if (!state.is_null()) {
    iteration = state.at("step").get<int64_t>();
    prompt_epoch = state.at("prompt_epoch").get<int64_t>();
    prompt_index = state.at("prompt_index").get<int64_t>();
    kl.set_value(state.at("beta").get<double>());
    initial_eval = state.value("initial_eval", nlohmann::json());
    guard.restore(state);
    std::printf("[%s] resumed from %s/step-%lld\n", c.name.c_str(), checkpoints.c_str(),
                (long long)iteration);
  }
  // Step iteration's record was logged before its checkpoint: lines after it are a killed
  // attempt's.
  const int64_t first_unlogged = state.is_null() ? 0 : iteration + 1;
  MetricsLog metrics(stage_dir, first_unlogged);
  const std::string samples_path = stage_dir + "/samples.jsonl";
  if (dist::is_main()) truncate_jsonl_from(samples_path, "iteration", first_unlogged);
  Progress progress(iteration, c.iterations);
  auto prompt_order = [&](int64_t epoch) {
    return seeded_permutation(static_cast<int64_t>(train_prompts.size()),
                              mix_seed({seed, kTrainStream, static_cast<uint64_t>(epoch)}));
  };
  std::vector<int64_t> order = prompt_order(prompt_epoch);

  // Samples go to samples.jsonl and, as a short table, to the console.
  auto one_line = [](std::string text, size_t width) {
    for (char& ch : text)
      if (ch == '\n' || ch == '\r' || ch == '\t') ch = ' ';
    return text.size() > width ? text.substr(0, width - 3) + "..." : text;
  };
  auto log_samples = [&](const Rollout& r, int64_t at, const std::vector<double>& truth) {
    if (c.sample_count > 0)
      std::printf("[%s] samples at iteration %lld (score | prompt -> response)\n", c.name.c_str(),
                  (long long)at);
    for (int64_t i = 0; i < std::min<int64_t>(c.sample_count, r.size()); ++i) {
      std::printf("  %8.3f | %s -> %s\n", r.scorer_scores[i].item<double>(),
                  one_line(tok.decode(r.prompts[i]), 40).c_str(),
                  one_line(response_text(tok, r.responses[i]), 70).c_str());
      nlohmann::json line = {{"iteration", at},
                             {"prompt", tok.decode(r.prompts[i])},
                             {"response", response_text(tok, r.responses[i])},
                             {"score", r.scorer_scores[i].item<double>()},
                             {"ended_with_eos", r.generation.ended_with_eos[i].item<bool>()}};
      if (c.ground_truth.enabled()) line["ground_truth"] = truth[i];
      if (dist::is_main()) append_jsonl(samples_path, line);
    }
  };
  auto truth_of = [&](const std::vector<std::vector<int64_t>>& responses) {
    std::vector<double> truth;
    if (c.ground_truth.enabled())
      for (const auto& response : responses)
        truth.push_back(c.ground_truth.score(response_text(tok, response)));
    return truth;
  };
  auto mean = [](const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return v.empty() ? std::nan("") : s / static_cast<double>(v.size());
  };
  // Evaluation rollouts: the held-out prompts with the same seeds every time (paired comparisons).
  std::vector<uint64_t> eval_seeds;
  for (size_t i = 0; i < eval_prompts.size(); ++i)
    eval_seeds.push_back(mix_seed({seed, kEvalStream, i}));
  auto evaluate = [&](int64_t at) {
    nlohmann::json out = nlohmann::json::object();
    if (eval_prompts.empty()) return out;
    const Rollout r = trainer.rollout(eval_prompts, eval_seeds, kl.value());
    const RolloutStats s = rollout_stats(r);
    const auto truth = truth_of(r.responses);
    out = {{"eval_rm_score", s.score_mean}, {"eval_kl_k1", s.kl_k1},
           {"eval_kl_k3", s.kl_k3},         {"eval_response_length", s.response_length},
           {"eval_eos_rate", s.eos_rate},   {"eval_entropy", s.entropy}};
    if (c.ground_truth.enabled()) out["eval_ground_truth"] = mean(truth);
    log_samples(r, at, truth);
    std::printf(
        "[%s] evaluation at iteration %lld (%zu prompts): rm_score %.4f%s  kl %.4f  "
        "length %.1f  eos %.2f\n",
        c.name.c_str(), (long long)at, eval_prompts.size(), s.score_mean,
        c.ground_truth.enabled() ? ("  ground_truth " + std::to_string(mean(truth))).c_str() : "",
        s.kl_k1, s.response_length, s.eos_rate);
    return out;
  };

  // Other policies on the same evaluation prompts and seeds (the table's "base" row).
  auto evaluate_baseline = [&](const std::string& reference_name) {
    Transformer model = load_causal_lm(resolve_model_reference(recipe, reference_name), "baseline");
    model->to(device);
    model->eval();
    SamplingOptions sampling = options.sampling;
    sampling.row_seeds = eval_seeds;
    const GenerationBatch g = generate(*model, eval_prompts, sampling);
    std::vector<std::vector<int64_t>> responses;
    for (int64_t b = 0; b < g.batch(); ++b) responses.push_back(g.response(b));
    const auto truth = truth_of(responses);
    nlohmann::json out = {{"rm_score", scorer(eval_prompts, responses).mean().item<double>()}};
    if (c.ground_truth.enabled()) out["ground_truth"] = mean(truth);
    std::printf("[%s] baseline %s: %s\n", c.name.c_str(), reference_name.c_str(),
                out.dump().c_str());
    return out;
  };

  if (iteration == 0) {
    initial_eval = evaluate(0);
    if (!eval_prompts.empty())
      for (const auto& b : c.baselines) initial_eval["baselines"][b] = evaluate_baseline(b);
    if (!initial_eval.empty()) {
      nlohmann::json record = initial_eval;
      record.erase("baselines");
      record["step"] = 0;
      metrics.log(record);
    }
  }
  auto save = [&](int64_t at) {
    nlohmann::json s = {{"step", at},
                        {"prompt_epoch", prompt_epoch},
                        {"prompt_index", prompt_index},
                        {"beta", kl.value()},
                        {"initial_eval", initial_eval}};
    s.update(guard.to_json());
    save_checkpoint(checkpoints, parts, s, c.keep_checkpoints);
  };

  // Loud, once per run (and in every metrics record): a rollout whose scores carry no signal.
  bool warned_penalty = false, warned_constant = false;
  int64_t no_signal_iterations = 0;  // this attempt's (a resumed run counts from its resume)
  auto warn_if_no_signal = [&](const Rollout& r, int64_t at) {
    if (r.scores_constant) ++no_signal_iterations;
    if (r.eos_penalized == r.size() && !warned_penalty) {
      warned_penalty = true;
      std::fprintf(stderr,
                   "[%s] WARNING: at iteration %lld no response ended with EOS within "
                   "rollout.max_new_tokens %lld, so rollout.missing_eos_penalty %g replaced every "
                   "score: PPO learns from no reward signal. Set missing_eos_penalty to null (the "
                   "reward model scores unfinished responses) or raise max_new_tokens.\n",
                   c.name.c_str(), (long long)at, (long long)c.ppo.sampling.max_new_tokens,
                   *c.ppo.missing_eos_penalty);
    } else if (r.scores_constant && !warned_constant && r.eos_penalized < r.size()) {
      warned_constant = true;
      std::fprintf(stderr,
                   "[%s] WARNING: at iteration %lld every episode's score was %g: PPO learns "
                   "from no reward signal%s.\n",
                   c.name.c_str(), (long long)at, r.penalized_scores[0].item<double>(),
                   c.ppo.whiten_rewards ? " (whitened, every score is 0)" : "");
    }
  };
  const std::string dump_dir = stage_dir + "/rollouts";
  auto dump_rollout = [&](const Rollout& r, int64_t at) {
    make_directories(dump_dir);
    char name[64];
    std::snprintf(name, sizeof(name), "/iteration-%06lld.safetensors", (long long)at);
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (auto& [key, tensor] : rollout_tensors(r))
      tensors.emplace_back(key, tensor.detach().cpu().contiguous());
    const PpoOptions& o = trainer.options();
    const std::map<std::string, std::string> metadata = {
        {"iteration", std::to_string(at)},
        {"beta", exact_text(r.beta)},
        {"temperature", exact_text(o.sampling.temperature)},
        {"value_offset", exact_text(o.value_offset)},
        {"reward_offset", exact_text(rm.metadata.offset)},
        {"reward_max_seq_len", std::to_string(rm_max_len)},
        {"reward_pad_id", std::to_string(rm_pad)},
        {"eos_id", std::to_string(o.sampling.eos_id)},
        {"pad_id", std::to_string(o.sampling.pad_id)},
        {"config", rlhf_stated_defaults(c).dump()}};
    write_safetensors(dump_dir + name, tensors, metadata);
  };

  nlohmann::json last_eval = initial_eval;
  while (iteration < c.iterations) {
    for (auto [optimizer, lr] :
         {std::pair{&actor_optimizer, c.actor_lr}, std::pair{&critic_optimizer, c.critic_lr}})
      optimizer->set_learning_rate(learning_rate(
          {lr, c.min_lr_ratio, c.warmup_iterations, c.iterations, c.schedule}, iteration));
    std::vector<std::vector<int64_t>> prompts;
    std::vector<uint64_t> seeds;
    while (static_cast<int64_t>(prompts.size()) < c.batch_size) {
      if (prompt_index >= static_cast<int64_t>(order.size())) {
        order = prompt_order(++prompt_epoch);
        prompt_index = 0;
      }
      seeds.push_back(mix_seed({seed, static_cast<uint64_t>(iteration), prompts.size()}));
      prompts.push_back(train_prompts[static_cast<size_t>(order[prompt_index++])]);
    }
    const double beta = kl.value();
    const Rollout r = trainer.rollout(prompts, seeds, beta);
    const RolloutStats s = rollout_stats(r);
    const auto truth = truth_of(r.responses);
    warn_if_no_signal(r, iteration + 1);
    if (iteration < c.dump_rollouts && dist::is_main()) dump_rollout(r, iteration + 1);
    const LearnStats learned =
        trainer.learn(r, mix_seed({seed, kShuffleStream, static_cast<uint64_t>(iteration)}), &guard,
                      iteration + 1);
    kl.update(c.ppo.kl_estimator == "k3" ? s.kl_k3 : s.kl_k1, c.batch_size);
    ++iteration;

    nlohmann::json record = {{"step", iteration},
                             {"rm_score", s.score_mean},
                             {"rm_score_std", s.score_std},
                             {"score_penalized", s.penalized_score_mean},
                             {"score", s.score_trained_mean},
                             {"eos_penalized_fraction", s.eos_penalized_fraction},
                             {"scores_constant", r.scores_constant},
                             {"kl_k1", s.kl_k1},
                             {"kl_k3", s.kl_k3},
                             {"beta", beta},
                             {"entropy", s.entropy},
                             {"response_length", s.response_length},
                             {"eos_rate", s.eos_rate},
                             {"policy_loss", learned.policy_loss},
                             {"value_loss", learned.value_loss},
                             {"clipfrac", learned.clipfrac},
                             {"value_clipfrac", learned.value_clipfrac},
                             {"approx_kl", learned.approx_kl},
                             {"first_ratio_max_deviation", learned.first_ratio_max_deviation},
                             {"explained_variance", learned.explained_variance},
                             {"actor_grad_norm", learned.actor_grad_norm},
                             {"critic_grad_norm", learned.critic_grad_norm},
                             {"actor_lr", actor_optimizer.learning_rate()},
                             {"skipped_updates", guard.skipped()},
                             {"seconds_generate", r.seconds_generate},
                             {"seconds_score", r.seconds_score},
                             {"seconds_train", learned.seconds}};
    if (c.ground_truth.enabled()) record["ground_truth"] = mean(truth);
    const bool eval_now =
        (c.eval_every > 0 && iteration % c.eval_every == 0) || iteration == c.iterations;
    if (c.sample_every > 0 && iteration % c.sample_every == 0 && !eval_now)
      log_samples(r, iteration, truth);
    if (eval_now) {
      last_eval = evaluate(iteration);
      record.update(last_eval);
    }
    if (iteration % c.log_every == 0 || iteration == c.iterations || eval_now) {
      metrics.log(record);
      std::map<std::string, double> shown = {{"rm", s.score_mean},
                                             {"eos", s.eos_rate},
                                             {"kl", s.kl_k1},
                                             {"clip", learned.clipfrac},
                                             {"len", s.response_length}};
      if (c.ground_truth.enabled()) shown["truth"] = mean(truth);
      // The score PPO learns from, when the penalty makes it differ from the RM's.
      if (c.ppo.missing_eos_penalty) shown["rm_penalized"] = s.penalized_score_mean;
      const double seconds = r.seconds_generate + r.seconds_score + learned.seconds;
      const double tokens = r.mask.sum().item<double>();
      std::printf("[%s] %s\n", c.name.c_str(),
                  progress.line(iteration, shown, tokens / std::max(seconds, 1e-9)).c_str());
    }
    const bool save_now = (c.checkpoint_every > 0 && iteration % c.checkpoint_every == 0) ||
                          iteration == c.iterations;
    if (save_now) save(iteration);
    stop_if_interrupted(c.name, iteration, save_now, [&] { save(iteration); });
  }

  nlohmann::json summary = {{"stage", c.name},
                            {"type", "rlhf"},
                            {"iterations", iteration},
                            {"train_prompts", train_prompts.size()},
                            {"eval_prompts", eval_prompts.size()},
                            {"beta_final", kl.value()},
                            {"skipped_updates", guard.skipped()},
                            {"critic_head", c.critic_head},
                            {"critic_value_offset", value_offset}};
  if (no_signal_iterations > 0) {
    summary["no_signal_iterations"] = no_signal_iterations;
    std::fprintf(stderr, "[%s] WARNING: %lld iterations learned from constant scores (no signal)\n",
                 c.name.c_str(), (long long)no_signal_iterations);
  }
  if (c.ground_truth.enabled()) summary["ground_truth_rule"] = c.ground_truth.describe();
  for (const auto& [key, initial_key, final_key] :
       {std::tuple{"eval_rm_score", "rm_score_initial", "rm_score_final"},
        std::tuple{"eval_ground_truth", "ground_truth_initial", "ground_truth_final"},
        std::tuple{"eval_kl_k1", "kl_initial", "kl_final"},
        std::tuple{"eval_response_length", "response_length_initial", "response_length_final"},
        std::tuple{"eval_eos_rate", "eos_rate_initial", "eos_rate_final"}}) {
    if (initial_eval.contains(key)) summary[initial_key] = initial_eval[key];
    if (last_eval.contains(key)) summary[final_key] = last_eval[key];
  }
  if (initial_eval.contains("baselines")) summary["baselines"] = initial_eval["baselines"];
  if (c.kl_max > 0 && last_eval.contains("eval_kl_k1")) {
    const double final_kl = last_eval["eval_kl_k1"].get<double>();
    summary["kl_max"] = c.kl_max;
    summary["kl_within_bound"] = final_kl <= c.kl_max;
    if (final_kl > c.kl_max)
      std::fprintf(stderr, "[%s] warning: final KL %.4f exceeds kl.max %.4f\n", c.name.c_str(),
                   final_kl, c.kl_max);
  }

  SaveOptions save_options;
  save_options.tokenizer_path = tokenizer_path;
  actor->to(torch::kCPU);
  const std::string final_dir = stage_output_dir(recipe, c.name);
  if (!dp.single()) summary["data_parallel_ranks"] = dp.size();
  if (dist::is_main()) {
    save_hf_model(*actor, final_dir, save_options);
    mark_stage_complete(recipe, c.name, summary);
  }
  dist::world().barrier();  // the next stage, on every rank, reads what rank 0 wrote
  std::printf("[%s] done: %s\n", c.name.c_str(), final_dir.c_str());
  return summary;
}

}  // namespace tiller
