#include "rlhf/rlhf_stage.h"

#include <chrono>
#include <cmath>
#include <cstdio>

#include "common/data/batching.h"  // seeded_permutation
#include "common/data/preference_data.h"
#include "common/dist/interrupt.h"
#include "common/io/hf_dir.h"
#include "common/io/reward_model_dir.h"
#include "common/io/safetensors.h"
#include "common/model/reward_model.h"
#include "common/recipe/stage_io.h"
#include "common/tokenizer/tokenizer.h"
#include "common/train/checkpoint.h"
#include "common/train/epoch_cursor.h"
#include "common/train/metrics.h"
#include "common/train/nonfinite_guard.h"
#include "common/train/parallel_adamw.h"
#include "common/train/precision.h"
#include "common/train/schedule.h"
#include "common/train/stage_loop.h"
#include "common/train/train_config.h"  // read_parallel_options
#include "common/util/error.h"
#include "common/util/files.h"
#include "rlhf/ppo_math.h"

namespace tiller {

// ---------------------------------------------------------------------------------------------
// Config

namespace {

// rollout: sampling, and the missing-EOS penalty.
void read_rollout(const nlohmann::json& json, const std::string& path, ConfigErrors& errors,
                  RlhfStageConfig& c) {
  ConfigReader g(json, path, errors);
  SamplingOptions& s = c.ppo.sampling;
  c.batch_size = g.integer("batch_size", c.batch_size);
  read_on_policy_sampling(g, "PPO", s);
  // null (the default): responses without EOS are scored by the reward model like the others.
  c.ppo.missing_eos_penalty = g.number_or_null("missing_eos_penalty", std::nullopt);
  g.require(c.batch_size >= 1, "batch_size", "must be at least 1");
}

// reward: what is done to the scores.
void read_reward(const nlohmann::json& json, const std::string& path, ConfigErrors& errors,
                 RlhfStageConfig& c) {
  ConfigReader w(json, path, errors);
  c.ppo.whiten_rewards = w.boolean("whiten", false);
  c.ppo.reward_clip = w.number("clip", 0.0);
  c.reward_max_seq_len = w.integer("max_seq_len", 0);
  w.require(c.ppo.reward_clip >= 0, "clip", "must be >= 0 (0: no clipping)");
  w.require(c.reward_max_seq_len >= 0, "max_seq_len", "must be >= 0 (0: the RM's own)");
  w.require(!c.ppo.whiten_rewards || c.batch_size >= 2, "whiten",
            "needs rollout.batch_size >= 2: one episode's score cannot be whitened");
}

// kl: the KL penalty and its controller.
void read_kl(const nlohmann::json& json, const std::string& path, ConfigErrors& errors,
             RlhfStageConfig& c) {
  ConfigReader k(json, path, errors);
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

// ppo: the PPO update, the critic's head and rollout dumps.
void read_ppo(const nlohmann::json& json, const std::string& path, ConfigErrors& errors,
              RlhfStageConfig& c) {
  ConfigReader p(json, path, errors);
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
  // auto: the reward model's own head predicts its scores (raw head - offset); whitened, the
  // first rollout's mean and deviation map it onto them (PpoOptions::calibrate_value_scale).
  // From the base stories260K (tests/ppo_e2e_test.cpp) that learned what a zero head did not.
  if (c.critic_head == "auto") c.critic_head = "reward_model";
  o.calibrate_value_scale = o.whiten_rewards && c.critic_head == "reward_model";
  c.dump_rollouts = p.integer("dump_rollouts", 0);
  p.require(c.dump_rollouts >= 0, "dump_rollouts",
            "must be >= 0 (the first N iterations' rollouts written as safetensors)");
  p.require(o.epochs >= 1, "epochs", "must be at least 1");
  p.require(o.mini_batch_size >= 1 && c.batch_size % std::max<int64_t>(1, o.mini_batch_size) == 0,
            "mini_batch_size",
            "must be at least 1 and divide rollout.batch_size " + std::to_string(c.batch_size));
  p.require(
      o.micro_batch_size >= 1 && o.mini_batch_size % std::max<int64_t>(1, o.micro_batch_size) == 0,
      "micro_batch_size", "must be at least 1 and divide mini_batch_size");
  p.require(o.gamma > 0 && o.gamma <= 1, "gamma", "must be in (0, 1]");
  p.require(o.lam >= 0 && o.lam <= 1, "lambda", "must be in [0, 1]");
  p.require(o.clip > 0 && o.clip < 1, "clip", "must be in (0, 1)");
  p.require(o.value_clip > 0, "value_clip", "must be positive");
  p.require(o.value_coef >= 0, "value_coef", "must be >= 0");
}

// train: optimizers, schedule, checkpoints.
void read_train(const nlohmann::json& json, const std::string& path, ConfigErrors& errors,
                RlhfStageConfig& c) {
  ConfigReader t(json, path, errors);
  read_rl_train(t, c.train);
  c.actor_lr = t.number("actor_lr", c.actor_lr);
  c.critic_lr = t.number("critic_lr", c.critic_lr);
  c.ppo.actor_grad_clip = c.ppo.critic_grad_clip = c.train.grad_clip;
  t.require(c.actor_lr > 0 && c.actor_lr < 1, "actor_lr", "must be in (0, 1)");
  t.require(c.critic_lr > 0 && c.critic_lr < 1, "critic_lr", "must be in (0, 1)");
}

// eval: the evaluation rollouts and baselines.
void read_eval(const nlohmann::json& json, const std::string& path, ConfigErrors& errors,
               RlhfStageConfig& c) {
  ConfigReader e(json, path, errors);
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

}  // namespace

RlhfStageConfig parse_rlhf_stage(const StageEntry& entry, ConfigErrors& errors) {
  RlhfStageConfig c;
  ConfigReader r(*entry.body, entry.path, errors);
  c.name = r.string("name", "");
  r.string("type", "");
  c.policy = r.string("policy", c.policy);
  c.reference = r.string("reference", c.policy);
  c.reward_model = r.string("reward_model", c.reward_model);
  c.critic = r.string("critic", c.reward_model);
  read_prompt_data(r.object("data"), r.path_of("data"), errors,
                   {"auto", "prompt", "messages", "alpaca", "hh"}, c.data);
  read_rollout(r.object("rollout"), r.path_of("rollout"), errors, c);
  read_reward(r.object("reward"), r.path_of("reward"), errors, c);
  read_kl(r.object("kl"), r.path_of("kl"), errors, c);
  read_ppo(r.object("ppo"), r.path_of("ppo"), errors, c);
  read_train(r.object("train"), r.path_of("train"), errors, c);
  c.ground_truth = parse_ground_truth(r.raw("ground_truth"), r.path_of("ground_truth"), errors);
  read_samples(r.object("samples"), r.path_of("samples"), errors, c.sample_every, c.sample_count);
  read_eval(r.object("eval"), r.path_of("eval"), errors, c);
  c.lora = read_lora_section(r, errors);
  if (c.reference == c.policy)
    refuse_modules_to_save_beside_switched_off_reference(c.lora, r, errors);
  c.critic_lora = read_lora_section(r, errors, "critic_lora");
  train_score_head_whole(c.critic_lora);  // the value head learns the returns
  r.require(!(c.critic_lora.enabled && c.critic_lora.options.base_dtype == "bf16" &&
              c.critic == c.reward_model),
            "critic_lora",
            "base_dtype bf16 is refused for a critic that is the reward model: it computes with "
            "the reward model's own fp32 weights (name another critic to store its base in bf16)");
  return c;
}

namespace {

nlohmann::json train_values(const RlhfStageConfig& c) {
  nlohmann::json train = rl_train_values(c.train);
  train["actor_lr"] = c.actor_lr;
  train["critic_lr"] = c.critic_lr;
  return train;
}

// The stage's sections (data, rollout, reward, kl, ppo, train, eval, samples).
nlohmann::json section_values(const RlhfStageConfig& c) {
  const PpoOptions& o = c.ppo;
  const SamplingOptions& s = o.sampling;
  return {
      {"data", prompt_data_values(c.data)},
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
      {"train", train_values(c)},
      {"eval", {{"prompts", c.eval_prompts}, {"every", c.eval_every}, {"baselines", c.baselines}}},
      {"samples", samples_values(c.sample_every, c.sample_count)}};
}

}  // namespace

nlohmann::json rlhf_stated_defaults(const RlhfStageConfig& c) {
  nlohmann::json stated = section_values(c);
  stated["policy"] = c.policy;
  stated["reference"] = c.reference;
  stated["reward_model"] = c.reward_model;
  stated["critic"] = c.critic;
  if (c.ground_truth.enabled()) stated["ground_truth"] = ground_truth_values(c.ground_truth);
  if (c.lora.enabled) stated["lora"] = lora_section_values(c.lora);
  if (c.critic_lora.enabled) stated["critic_lora"] = lora_section_values(c.critic_lora);
  return stated;
}

// ---------------------------------------------------------------------------------------------
// Run

namespace {

// The models PPO holds, checked against each other and moved to the device: the actor and the
// critic train, the reference and the reward model are frozen.
struct PpoModels {
  Transformer actor{nullptr}, reference{nullptr}, critic{nullptr};
  RewardModel reward;
  std::string reward_dir;
  int64_t reward_max_len = 0;  // the length the RM scores prompt + response at
  int64_t reward_pad = 0;
  double value_offset = 0;  // subtracted from the critic's head (ppo.critic_head)
};

// With critic_lora: adapters on the critic (their own seed stream: not the actor's draws). A
// critic read from the reward model's directory then computes with the reward model's frozen
// weights, as one copy; its score head, trained whole, stays its own.
void apply_critic_lora(PpoModels& m, const RlhfStageConfig& c, const std::string& critic_dir,
                       uint64_t seed) {
  if (!c.critic_lora.enabled) return;
  apply_lora_section(*m.critic, c.critic_lora, critic_dir, mix_seed({seed, kCriticLoraStream}),
                     c.name + " (critic)");
  if (critic_dir != m.reward_dir) return;
  const int64_t bytes =
      share_frozen_base(*m.critic, *m.reward.model, "stage " + c.name + ": the LoRA critic");
  std::printf(
      "[%s] the LoRA critic computes with the reward model's frozen weights (%.1f MiB "
      "held once)\n",
      c.name.c_str(), static_cast<double>(bytes) / (1 << 20));
}

PpoModels load_models(const Recipe& recipe, const RlhfStageConfig& c, const std::string& policy_dir,
                      const Tokenizer& tok, const torch::Device& device) {
  PpoModels m;
  m.actor = load_causal_lm(policy_dir, "policy");
  apply_lora_section(*m.actor, c.lora, policy_dir, recipe.run.seed, c.name);
  // With LoRA, a reference that is the policy's init is the actor with its adapters switched off:
  // no second copy of the weights.
  m.reference = has_lora(*m.actor) && c.reference == c.policy
                    ? m.actor
                    : load_causal_lm(resolve_model_reference(recipe, c.reference), "reference",
                                     QuantizedModels::load_frozen);
  m.reward_dir = resolve_model_reference(recipe, c.reward_model);
  m.reward = load_reward_model(m.reward_dir);
  const std::string critic_dir = resolve_model_reference(recipe, c.critic);
  m.critic = load_hf_model(critic_dir, /*num_labels=*/1);
  // The critic's values on the scale of the returns it learns to predict (a resumed run's
  // checkpoint replaces the head).
  if (c.critic_head == "zeros") {
    torch::NoGradGuard no_grad;
    m.critic->score->weight.zero_();
  } else {
    m.value_offset = read_reward_metadata(critic_dir).offset;
  }
  tok.check_matches(m.actor->config, c.policy);
  check(read_file(tokenizer_path_in(m.reward_dir)) == read_file(tokenizer_path_in(policy_dir)),
        "stage " + c.name + ": the reward model " + m.reward_dir +
            " has a different tokenizer from the policy's; it scores the policy's tokens");
  const RewardMetadata& meta = m.reward.metadata;
  if (!meta.template_name.empty() && meta.template_name != c.data.template_name)
    std::fprintf(stderr,
                 "[%s] warning: the reward model was trained with the '%s' template, the prompts "
                 "use '%s'\n",
                 c.name.c_str(), meta.template_name.c_str(), c.data.template_name.c_str());
  m.reward_max_len = c.reward_max_seq_len > 0 ? c.reward_max_seq_len
                     : meta.max_seq_len > 0   ? meta.max_seq_len
                                              : m.reward.model->config.max_position_embeddings;
  check(c.data.max_prompt_len < m.reward_max_len,
        "stage " + c.name + ": data.max_prompt_len " + std::to_string(c.data.max_prompt_len) +
            " leaves no room for a response in the reward model's " +
            std::to_string(m.reward_max_len) + " tokens; set data.max_prompt_len below " +
            std::to_string(m.reward_max_len) + " (or reward.max_seq_len above it)");
  check(c.data.max_prompt_len + c.ppo.sampling.max_new_tokens <=
            m.actor->config.max_position_embeddings,
        "stage " + c.name +
            ": data.max_prompt_len + rollout.max_new_tokens exceeds the policy's context of " +
            std::to_string(m.actor->config.max_position_embeddings));
  m.reward_pad = m.reward.model->config.pad_token_id >= 0 ? m.reward.model->config.pad_token_id
                                                          : reward_pad_id(tok);
  for (TransformerImpl* frozen : {m.reference.get(), m.reward.model.get()}) {
    if (frozen == m.actor.get()) continue;
    for (auto& p : frozen->parameters()) p.requires_grad_(false);
    frozen->eval();
    frozen->to(device);
  }
  m.actor->to(device);
  m.critic->to(device);
  apply_critic_lora(m, c, critic_dir, recipe.run.seed);
  m.actor->train();
  m.critic->train();
  return m;
}

// The prompts: a seeded hold-out for the evaluation rollouts (with their fixed seeds), the rest
// for training.
struct PromptSplit {
  std::vector<std::vector<int64_t>> train, eval;
  std::vector<uint64_t> eval_seeds;
};

PromptSplit split_prompts(const RlhfStageConfig& c, const Tokenizer& tok, uint64_t seed,
                          int data_parallel_ranks) {
  PromptStats stats;
  const auto all = load_prompts(c.data, tok, &stats);
  const int64_t usable = static_cast<int64_t>(all.size());
  check(c.eval_prompts < usable,
        "stage " + c.name + ": eval.prompts " + std::to_string(c.eval_prompts) + " holds out " +
            (c.eval_prompts == usable ? "every one" : "more than all") + " of the " +
            std::to_string(usable) + " usable prompts in " + c.data.path +
            ", leaving none to train on; lower eval.prompts");
  PromptSplit split;
  const HeldOutSplit held_out = hold_out(usable, c.eval_prompts, seed);
  for (int64_t i : held_out.train) split.train.push_back(all[static_cast<size_t>(i)]);
  for (int64_t i : held_out.eval) split.eval.push_back(all[static_cast<size_t>(i)]);
  split.eval_seeds = held_out.eval_seeds;
  std::printf(
      "[%s] prompts: %lld records -> %zu train / %zu evaluation; %lld over %lld tokens "
      "dropped; %lld bad lines skipped\n",
      c.name.c_str(), (long long)stats.records, split.train.size(), split.eval.size(),
      (long long)stats.too_long, (long long)c.data.max_prompt_len, (long long)stats.skipped);
  if (static_cast<int64_t>(split.train.size()) < c.batch_size)
    std::fprintf(stderr,
                 "[%s] warning: %zu training prompts for rollout.batch_size %lld: every rollout "
                 "repeats prompts\n",
                 c.name.c_str(), split.train.size(), (long long)c.batch_size);
  // The evaluation rollouts are shared by the data-parallel ranks too: found now, not at the
  // first evaluation.
  const std::string share_error = eval_prompts_share_error(static_cast<int64_t>(split.eval.size()),
                                                           c.eval_prompts, data_parallel_ranks);
  check(share_error.empty(), "stage " + c.name + ": " + share_error);
  return split;
}

// Why `ranks` data-parallel ranks cannot share the rollouts, or "".
std::string ppo_data_parallel_error(const RlhfStageConfig& c, int64_t ranks) {
  if (c.batch_size < ranks)
    return "rollout.batch_size " + std::to_string(c.batch_size) + " is smaller than the " +
           std::to_string(ranks) + " data-parallel ranks";
  return eval_prompts_share_error(c.eval_prompts, c.eval_prompts, ranks);
}

// Scores episodes with the reward model: prompt + response + EOS, as it was trained.
EpisodeScorer reward_model_scorer(PpoModels& m, const Tokenizer& tok, int64_t micro_batch) {
  return [&m, &tok, micro_batch](const std::vector<std::vector<int64_t>>& prompts,
                                 const std::vector<std::vector<int64_t>>& responses) {
    std::vector<std::vector<int64_t>> sequences;
    for (size_t i = 0; i < prompts.size(); ++i)
      sequences.push_back(
          reward_sequence(prompts[i], responses[i], tok.eos_id(), m.reward_max_len).tokens);
    c10::InferenceMode inference;
    const auto scores = score_sequences(*m.reward.model, sequences, m.reward_pad, micro_batch,
                                        m.reward.metadata.offset);
    return torch::tensor(scores, torch::kDouble).to(torch::kFloat);
  };
}

// What the stage reports beside training: evaluation rollouts on the held-out prompts (same seeds
// every time: paired comparisons), baselines, samples (samples.jsonl and the console), the
// ground-truth rule, loud warnings when a rollout carries no reward signal, and rollout dumps.
struct PpoReports {
  const RlhfStageConfig& c;
  const Recipe& recipe;
  const Tokenizer& tok;
  const PromptSplit& prompts;
  PpoTrainer& trainer;
  PpoModels& models;
  std::string stage_dir;
  bool warned_penalty = false, warned_constant = false;
  int64_t no_signal_iterations = 0;  // this attempt's (a resumed run counts from its resume)

  std::vector<double> truth_of(const std::vector<std::vector<int64_t>>& responses) const {
    std::vector<double> truth;
    if (c.ground_truth.enabled())
      for (const auto& response : responses)
        truth.push_back(c.ground_truth.score(response_text(tok, response)));
    return truth;
  }

  void log_samples(const Rollout& r, int64_t at, const std::vector<double>& truth) const {
    if (c.sample_count > 0)
      std::printf("[%s] samples at iteration %lld (score | prompt -> response)\n", c.name.c_str(),
                  (long long)at);
    for (int64_t i = 0; i < std::min<int64_t>(c.sample_count, r.size()); ++i) {
      const std::string prompt = tok.decode(r.prompts[i]);
      const std::string response = response_text(tok, r.responses[i]);
      std::printf("  %8.3f | %s -> %s\n", r.scorer_scores[i].item<double>(),
                  one_line(prompt, 40).c_str(), one_line(response, 70).c_str());
      nlohmann::json line = {{"iteration", at},
                             {"prompt", prompt},
                             {"response", response},
                             {"score", r.scorer_scores[i].item<double>()},
                             {"ended_with_eos", r.generation.ended_with_eos[i].item<bool>()}};
      if (c.ground_truth.enabled()) line["ground_truth"] = truth[i];
      if (dist::is_main()) append_jsonl(stage_dir + "/samples.jsonl", line);
    }
  }

  nlohmann::json evaluate(int64_t at, double beta) const {
    nlohmann::json out = nlohmann::json::object();
    if (prompts.eval.empty()) return out;
    const Rollout r = trainer.rollout(prompts.eval, prompts.eval_seeds, beta);
    const RolloutStats s = rollout_stats(r);
    const auto truth = truth_of(r.responses);
    out = {{"eval_rm_score", s.score_mean}, {"eval_kl_k1", s.kl_k1},
           {"eval_kl_k3", s.kl_k3},         {"eval_response_length", s.response_length},
           {"eval_eos_rate", s.eos_rate},   {"eval_entropy", s.entropy}};
    if (c.ground_truth.enabled()) out["eval_ground_truth"] = mean_of(truth);
    log_samples(r, at, truth);
    std::printf(
        "[%s] evaluation at iteration %lld (%zu prompts): rm_score %.4f%s  kl %.4f  "
        "length %.1f  eos %.2f\n",
        c.name.c_str(), (long long)at, prompts.eval.size(), s.score_mean,
        c.ground_truth.enabled() ? ("  ground_truth " + std::to_string(mean_of(truth))).c_str()
                                 : "",
        s.kl_k1, s.response_length, s.eos_rate);
    return out;
  }

  // Another policy on the same evaluation prompts and seeds (the summary's "base" row).
  nlohmann::json evaluate_baseline(const std::string& reference_name,
                                   const EpisodeScorer& scorer) const {
    Transformer model = load_causal_lm(resolve_model_reference(recipe, reference_name), "baseline",
                                       QuantizedModels::load_frozen);
    model->to(models.actor->parameters().front().device());
    model->eval();
    SamplingOptions sampling = trainer.options().sampling;
    sampling.row_seeds = prompts.eval_seeds;
    const GenerationBatch g = generate(*model, prompts.eval, sampling);
    std::vector<std::vector<int64_t>> responses;
    for (int64_t b = 0; b < g.batch(); ++b) responses.push_back(g.response(b));
    nlohmann::json out = {{"rm_score", scorer(prompts.eval, responses).mean().item<double>()}};
    if (c.ground_truth.enabled()) out["ground_truth"] = mean_of(truth_of(responses));
    std::printf("[%s] baseline %s: %s\n", c.name.c_str(), reference_name.c_str(),
                out.dump().c_str());
    return out;
  }

  // Loud, once per run (and in every metrics record): a rollout whose scores carry no signal.
  void warn_if_no_signal(const Rollout& r, int64_t at) {
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
  }

  // Every tensor of the rollout, and what an independent check needs to recompute them.
  void dump(const Rollout& r, int64_t at) const {
    const std::string dir = stage_dir + "/rollouts";
    make_directories(dir);
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
        {"value_offset", exact_text(trainer.critic_scale().offset)},
        {"value_scale", exact_text(trainer.critic_scale().scale)},
        {"reward_offset", exact_text(models.reward.metadata.offset)},
        {"reward_max_seq_len", std::to_string(models.reward_max_len)},
        {"reward_pad_id", std::to_string(models.reward_pad)},
        {"eos_id", std::to_string(o.sampling.eos_id)},
        {"pad_id", std::to_string(o.sampling.pad_id)},
        {"config", rlhf_stated_defaults(c).dump()}};
    write_safetensors(dir + name, tensors, metadata);
  }
};

// One iteration's metrics record and progress-line figures.
StepReport iteration_report(const RlhfStageConfig& c, const Rollout& r, const RolloutStats& s,
                            const LearnStats& learned, const std::vector<double>& truth,
                            const ParallelAdamW& actor_optimizer) {
  StepReport report;
  report.record = {{"rm_score", s.score_mean},
                   {"rm_score_std", s.score_std},
                   {"score_penalized", s.penalized_score_mean},
                   {"score", s.score_trained_mean},
                   {"eos_penalized_fraction", s.eos_penalized_fraction},
                   {"scores_constant", r.scores_constant},
                   {"kl_k1", s.kl_k1},
                   {"kl_k3", s.kl_k3},
                   {"beta", r.beta},
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
                   {"seconds_generate", r.seconds_generate},
                   {"seconds_score", r.seconds_score},
                   {"seconds_train", learned.seconds}};
  report.shown = {{"rm", s.score_mean},
                  {"eos", s.eos_rate},
                  {"kl", s.kl_k1},
                  {"clip", learned.clipfrac},
                  {"len", s.response_length}};
  if (c.ground_truth.enabled()) {
    report.record["ground_truth"] = mean_of(truth);
    report.shown["truth"] = mean_of(truth);
  }
  // The score PPO learns from, when the penalty makes it differ from the RM's.
  if (c.ppo.missing_eos_penalty) report.shown["rm_penalized"] = s.penalized_score_mean;
  report.tokens = r.mask.sum().item<double>();
  report.seconds = r.seconds_generate + r.seconds_score + learned.seconds;
  return report;
}

// complete.json: the evaluation figures before and after, the KL bound, the run's counts.
nlohmann::json ppo_summary(const RlhfStageConfig& c, const nlohmann::json& initial_eval,
                           const nlohmann::json& last_eval, const PromptSplit& prompts,
                           const PpoReports& reports, const CriticScale& critic_scale, double beta,
                           int64_t iterations, int64_t skipped) {
  nlohmann::json summary = {{"iterations", iterations},
                            {"train_prompts", prompts.train.size()},
                            {"eval_prompts", prompts.eval.size()},
                            {"beta_final", beta},
                            {"skipped_updates", skipped},
                            {"critic_head", c.critic_head},
                            {"critic_value_offset", critic_scale.offset},
                            {"critic_value_scale", critic_scale.scale}};
  if (reports.no_signal_iterations > 0) {
    summary["no_signal_iterations"] = reports.no_signal_iterations;
    std::fprintf(stderr, "[%s] WARNING: %lld iterations learned from constant scores (no signal)\n",
                 c.name.c_str(), (long long)reports.no_signal_iterations);
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
  return summary;
}

}  // namespace

nlohmann::json run_rlhf_stage(const Recipe& recipe, const RlhfStageConfig& c) {
  require_no_tensor_parallel(recipe, c.name, "PPO");
  StageLoop loop(recipe, c.name, c.train.loop(c.eval_every));
  const uint64_t seed = recipe.run.seed;
  const std::string policy_dir = resolve_model_reference(recipe, c.policy);
  const std::string tokenizer_path = tokenizer_path_in(policy_dir);
  const Tokenizer tok(tokenizer_path);
  PpoModels models = load_models(recipe, c, policy_dir, tok, loop.device());
  // Data parallel: each rank generates, scores and trains on its share of every rollout batch.
  const dist::Group& data_parallel = dist::world();
  const std::string layout_error = ppo_data_parallel_error(c, data_parallel.size());
  check(layout_error.empty(), "stage " + c.name + ": " + layout_error);
  const PromptSplit prompts = split_prompts(c, tok, seed, data_parallel.size());
  if (!data_parallel.single())
    std::printf("[%s] data parallel: %d ranks share each rollout of %lld episodes\n",
                c.name.c_str(), data_parallel.size(), (long long)c.batch_size);

  PpoOptions options = c.ppo;
  options.sampling.eos_id = tok.eos_id();
  options.sampling.pad_id = reward_pad_id(tok);
  options.bf16 = use_bf16(c.train.precision, loop.device());
  options.value_offset = models.value_offset;
  const EpisodeScorer scorer = reward_model_scorer(models, tok, options.micro_batch_size);
  ParallelAdamW actor_optimizer(*models.actor, c.train.optimizer(c.actor_lr), data_parallel,
                                c.train.parallel);
  ParallelAdamW critic_optimizer(*models.critic, c.train.optimizer(c.critic_lr), data_parallel,
                                 c.train.parallel);
  PpoTrainer trainer(options, *models.actor, *models.reference, *models.critic, scorer,
                     actor_optimizer, critic_optimizer, data_parallel);
  ppo::KLController kl(c.beta, c.kl_target, c.kl_horizon);

  EpochCursor<int64_t> cursor([&](int64_t epoch) {
    return seeded_permutation(static_cast<int64_t>(prompts.train.size()),
                              mix_seed({seed, kTrainStream, static_cast<uint64_t>(epoch)}));
  });
  nlohmann::json initial_eval, last_eval;
  loop.resume({{{"actor", models.actor.get()}, {"critic", models.critic.get()}},
               {{"actor_optimizer", &actor_optimizer}, {"critic_optimizer", &critic_optimizer}}},
              [&](const nlohmann::json& state) {
                cursor.seek(state.at("prompt_epoch").get<int64_t>(),
                            state.at("prompt_index").get<int64_t>());
                kl.set_value(state.at("beta").get<double>());
                if (state.contains("critic_scale")) {
                  const auto& saved = state.at("critic_scale");
                  trainer.restore_critic_scale({saved.at("offset").get<double>(),
                                                saved.at("scale").get<double>(),
                                                saved.at("pending").get<bool>()});
                }
                initial_eval = state.value("initial_eval", nlohmann::json());
              });
  last_eval = initial_eval;
  PpoReports reports{c, recipe, tok, prompts, trainer, models, loop.stage_dir()};
  if (dist::is_main())
    truncate_jsonl_from(loop.stage_dir() + "/samples.jsonl", "iteration", loop.first_unlogged());

  StageSteps steps;
  steps.step = [&](const StepContext& context) {
    const int64_t iteration = context.step;
    for (auto [optimizer, lr] :
         {std::pair{&actor_optimizer, c.actor_lr}, std::pair{&critic_optimizer, c.critic_lr}})
      set_scheduled_learning_rate(*optimizer, c.train.schedule_for(lr), iteration);
    std::vector<std::vector<int64_t>> batch;
    std::vector<uint64_t> episode_seeds;
    for (int64_t index : cursor.take(c.batch_size)) {
      episode_seeds.push_back(mix_seed({seed, static_cast<uint64_t>(iteration), batch.size()}));
      batch.push_back(prompts.train[static_cast<size_t>(index)]);
    }
    const Rollout r = trainer.rollout(batch, episode_seeds, kl.value());
    const auto truth = reports.truth_of(r.responses);
    reports.warn_if_no_signal(r, iteration + 1);
    if (iteration < c.dump_rollouts && dist::is_main()) reports.dump(r, iteration + 1);
    const LearnStats learned =
        trainer.learn(r, mix_seed({seed, kShuffleStream, static_cast<uint64_t>(iteration)}),
                      &context.guard, iteration + 1);
    const RolloutStats stats = rollout_stats(r);
    kl.update(stats.kl_k1, c.batch_size);
    const bool samples_now = c.sample_every > 0 && (iteration + 1) % c.sample_every == 0;
    if (samples_now && !context.evaluates_after) reports.log_samples(r, iteration + 1, truth);
    return iteration_report(c, r, stats, learned, truth, actor_optimizer);
  };
  steps.evaluate = [&](int64_t at) {
    StepReport report;
    report.record = reports.evaluate(at, kl.value());
    if (at == 0) {
      initial_eval = report.record;
      if (!prompts.eval.empty())
        for (const auto& b : c.baselines)
          initial_eval["baselines"][b] = reports.evaluate_baseline(b, scorer);
    }
    last_eval = report.record;
    return report;
  };
  steps.state = [&] {
    return nlohmann::json{{"prompt_epoch", cursor.epoch()},
                          {"prompt_index", cursor.index()},
                          {"beta", kl.value()},
                          {"critic_scale",
                           {{"offset", trainer.critic_scale().offset},
                            {"scale", trainer.critic_scale().scale},
                            {"pending", trainer.critic_scale().pending}}},
                          {"initial_eval", initial_eval}};
  };
  loop.run(steps);

  nlohmann::json summary =
      ppo_summary(c, initial_eval, last_eval, prompts, reports, trainer.critic_scale(), kl.value(),
                  loop.step(), loop.guard().skipped());
  if (!data_parallel.single()) summary["data_parallel_ranks"] = data_parallel.size();
  return loop.finish(summary, [&](const std::string& final_dir) {
    models.actor->to(torch::kCPU);
    if (!dist::is_main()) return;
    SaveOptions save_options;
    save_options.tokenizer_path = tokenizer_path;
    save_hf_model(*models.actor, final_dir, save_options);
  });
}

// ---------------------------------------------------------------------------------------------
// Registry entry

StageType rlhf_stage_type() {
  StageType type = typed_stage_type<RlhfStageConfig>(parse_rlhf_stage, run_rlhf_stage);
  type.description = "RLHF with PPO against a reward model";
  type.stated_defaults = [](const std::any& config) {
    return rlhf_stated_defaults(std::any_cast<const RlhfStageConfig&>(config));
  };
  type.data_parallel_error = [](const std::any& config, int ranks) {
    return ppo_data_parallel_error(std::any_cast<const RlhfStageConfig&>(config), ranks);
  };
  type.batch_layout = [](const std::any& config, int ranks) {
    const int64_t batch = std::any_cast<const RlhfStageConfig&>(config).batch_size;
    return "rollout batch " + std::to_string(batch) + " episodes shared by " +
           std::to_string(ranks) + " ranks";
  };
  type.summary_rows = [](const std::string& stage, const nlohmann::json& summary) {
    auto get = [&](const char* key) { return summary.value(key, nlohmann::json()); };
    std::vector<SummaryRow> rows;
    if (summary.contains("baselines"))
      for (const auto& [name, figures] : summary["baselines"].items())
        rows.push_back(
            {"ground-truth rate, " + name, figures.value("ground_truth", nlohmann::json())});
    rows.push_back({"ground-truth rate, policy before " + stage, get("ground_truth_initial")});
    rows.push_back({"ground-truth rate, after " + stage, get("ground_truth_final")});
    rows.push_back({stage + ": RM score before", get("rm_score_initial")});
    rows.push_back({stage + ": RM score after", get("rm_score_final")});
    rows.push_back({stage + ": final KL to the reference (nats/response)", get("kl_final")});
    return rows;
  };
  type.report_figures = {"ground_truth_initial", "ground_truth_final", "rm_score_initial",
                         "rm_score_final", "kl_final"};
  type.report_charts = {
      {"rm_score",
       "Reward-model score (and after the missing-EOS penalty)",
       {"rm_score", "score_penalized"}},
      {"ground_truth", "Ground-truth rate", {"ground_truth"}},
      {"kl", "KL to the reference (k1, k3)", {"kl_k1", "kl_k3"}},
      {"beta", "KL coefficient", {"beta"}},
      {"entropy", "Entropy", {"entropy"}},
      {"response_length", "Response length (tokens)", {"response_length"}},
      {"eos_rate",
       "Responses ending with EOS (and penalized for not)",
       {"eos_rate", "eos_penalized_fraction"}},
      {"clipfrac", "Policy clip fraction", {"clipfrac"}},
      {"approx_kl", "Approximate KL per update", {"approx_kl"}},
      {"policy_loss", "Policy loss", {"policy_loss"}},
      {"value_loss", "Value loss", {"value_loss"}},
      {"explained_variance", "Value explained variance", {"explained_variance"}},
      {"seconds", "Seconds per iteration", {"seconds_generate", "seconds_score", "seconds_train"}}};
  type.step_name = "iteration";
  return type;
}

}  // namespace tiller
