#include "rlhf/ppo_trainer.h"

#include <cmath>
#include <limits>

#include "common/data/batching.h"  // seeded_permutation
#include "common/model/attention_mask.h"
#include "common/model/lora.h"
#include "common/rollout/batch_layout.h"
#include "common/torch_compat.h"
#include "common/train/nonfinite_guard.h"
#include "common/train/token_log_probs.h"
#include "common/util/clock.h"
#include "common/util/error.h"
#include "common/util/side_by_side.h"
#include "rlhf/ppo_math.h"

namespace tiller {

namespace {

// A micro-batch of this rank's part of a minibatch: its rows, their mask, and its share of the
// minibatch's tokens (each micro-batch's masked means weighted by it sum to the minibatch's
// masked mean, whatever the split).
struct MicroBatch {
  torch::Tensor rows, mask;
  double weight;
};

// This rank's share of a minibatch (rollout rows), cut into micro-batches whose rows are made on
// the rollout's device.
std::vector<MicroBatch> this_ranks_micro_batches(const Rollout& r,
                                                 const std::vector<int64_t>& minibatch,
                                                 const dist::Group& group,
                                                 int64_t micro_batch_size) {
  const dist::Shard mine =
      dist::shard_of(static_cast<int64_t>(minibatch.size()), group.rank(), group.size());
  std::vector<MicroBatch> out;
  for (MicroBatchRows& m : micro_batch_rows(minibatch, row_token_counts(r.mask), mine.begin,
                                            mine.count, micro_batch_size, r.mask.device())) {
    auto mask = r.mask.index_select(0, m.rows);
    out.push_back({std::move(m.rows), std::move(mask), m.weight});
  }
  return out;
}

}  // namespace

torch::Tensor response_values(TransformerImpl& critic, const torch::Tensor& sequence_ids,
                              const torch::Tensor& sequence_mask, int64_t prompt_len,
                              const CriticScale& scale) {
  check(critic.config.num_labels == 1, "response_values: the critic needs a single score head");
  const int64_t response_len = sequence_ids.size(1) - prompt_len;
  auto hidden = critic.hidden(sequence_ids, positions_from_mask(sequence_mask),
                              causal_mask(sequence_mask, sequence_ids.size(1)));
  auto values =
      critic.scores(hidden.narrow(1, prompt_len - 1, response_len)).squeeze(-1).to(torch::kFloat);
  if (scale.offset != 0.0) values = values - scale.offset;
  return scale.scale == 1.0 ? values : values / scale.scale;
}

std::vector<std::pair<std::string, torch::Tensor>> rollout_tensors(const Rollout& r) {
  const GenerationBatch& g = r.generation;
  return {{"prompt_ids", g.prompt_ids},
          {"prompt_mask", g.prompt_mask},
          {"response_ids", g.response_ids},
          {"response_mask", g.response_mask},
          {"ended_with_eos", g.ended_with_eos.to(torch::kLong)},
          {"mask", r.mask},
          {"logprobs", r.logprobs},
          {"ref_logprobs", r.ref_logprobs},
          {"entropy", r.entropy},
          {"values", r.values},
          {"scorer_scores", r.scorer_scores},
          {"penalized_scores", r.penalized_scores},
          {"scores", r.scores},
          {"kl", r.kl},
          {"rewards", r.rewards},
          {"advantages", r.advantages},
          {"returns", r.returns}};
}

RolloutStats rollout_stats(const Rollout& r) {
  RolloutStats s;
  auto scores = r.scorer_scores.to(torch::kDouble);
  s.score_mean = scores.mean().item<double>();
  s.score_std = scores.numel() > 1 ? scores.std().item<double>() : 0.0;
  s.penalized_score_mean = r.penalized_scores.to(torch::kDouble).mean().item<double>();
  s.score_trained_mean = r.scores.to(torch::kDouble).mean().item<double>();
  s.eos_penalized_fraction =
      static_cast<double>(r.eos_penalized) / static_cast<double>(std::max<int64_t>(1, r.size()));
  s.kl_k1 = (ppo::kl_k1(r.logprobs, r.ref_logprobs) * r.mask).sum(1).mean().item<double>();
  s.kl_k3 = (ppo::kl_k3(r.logprobs, r.ref_logprobs) * r.mask).sum(1).mean().item<double>();
  s.entropy = ppo::masked_mean(r.entropy, r.mask).item<double>();
  s.response_length = r.mask.sum(1).mean().item<double>();
  s.eos_rate = r.generation.ended_with_eos.to(torch::kDouble).mean().item<double>();
  return s;
}

PpoTrainer::PpoTrainer(PpoOptions options, TransformerImpl& actor, TransformerImpl& reference,
                       TransformerImpl& critic, EpisodeScorer scorer,
                       ParallelAdamW& actor_optimizer, ParallelAdamW& critic_optimizer,
                       const dist::Group& group)
    : options_(std::move(options)),
      actor_(actor),
      reference_(reference),
      critic_(critic),
      scorer_(std::move(scorer)),
      actor_optimizer_(actor_optimizer),
      critic_optimizer_(critic_optimizer),
      group_(group) {
  const PpoOptions& o = options_;
  critic_scale_ = {o.value_offset, 1.0, o.calibrate_value_scale};
  options_.sampling.validate();
  check(o.kl_estimator == "k1" || o.kl_estimator == "k3",
        "ppo: kl estimator must be k1 or k3, got '" + o.kl_estimator + "'");
  check(o.epochs >= 1 && o.mini_batch_size >= 1 && o.micro_batch_size >= 1,
        "ppo: epochs, mini_batch_size and micro_batch_size must be at least 1");
  check(o.mini_batch_size % o.micro_batch_size == 0,
        "ppo: mini_batch_size must be a multiple of micro_batch_size");
  check(actor.config.num_labels == 0 && reference.config.num_labels == 0,
        "ppo: the actor and the reference must be causal LMs");
  check(actor.config.vocab_size == reference.config.vocab_size &&
            actor.config.vocab_size == critic.config.vocab_size,
        "ppo: actor, reference and critic must share one vocabulary");
  // With LoRA the reference is the actor itself, computing with its adapters switched off.
  if (&reference_ != &actor_)
    for (auto& p : reference_.parameters()) p.requires_grad_(false);

  const auto matmul_parameters_per_token = [](const ModelConfig& c) {
    // The token embedding is a lookup; an LM's head (tied or not) is a matrix multiply.
    return static_cast<double>(c.non_embedding_parameter_count() +
                               (c.num_labels == 0 ? c.vocab_size * c.hidden_size : 0));
  };
  const double actor_size = matmul_parameters_per_token(actor.config);
  const double critic_size = matmul_parameters_per_token(critic.config);
  side_by_side_ = o.side_by_side && at::get_num_threads() >= 2 &&
                  actor.parameters().front().device().is_cpu() &&
                  critic.parameters().front().device().is_cpu() &&
                  actor_optimizer.tensor_parallel().single() &&
                  critic_optimizer.tensor_parallel().single() &&
                  std::min(actor_size, critic_size) * 2 >= std::max(actor_size, critic_size);
}

std::pair<torch::Tensor, torch::Tensor> PpoTrainer::actor_pass(TransformerImpl& model,
                                                               const Rollout& r,
                                                               const torch::Tensor& rows,
                                                               bool entropy) {
  const int64_t prompt_len = r.generation.prompt_ids.size(1);
  auto mask = r.mask.index_select(0, rows);
  torch::Tensor logits;
  {
    compat::AutocastGuard cast(options_.bf16, r.sequence_ids.device());
    logits = response_logits(model, r.sequence_ids.index_select(0, rows),
                             r.sequence_mask.index_select(0, rows), prompt_len,
                             options_.sampling.temperature);
  }
  auto tokens = r.generation.response_ids.index_select(0, rows);
  if (!entropy) return {token_log_probs(logits, tokens) * mask, torch::Tensor()};
  const auto [logp, ent] = token_log_probs_and_entropy(logits, tokens);
  return {logp * mask, ent * mask};
}

torch::Tensor PpoTrainer::critic_pass(const Rollout& r, const torch::Tensor& rows) {
  compat::AutocastGuard cast(options_.bf16, r.sequence_ids.device());
  return response_values(critic_, r.sequence_ids.index_select(0, rows),
                         r.sequence_mask.index_select(0, rows), r.generation.prompt_ids.size(1),
                         critic_scale_) *
         r.mask.index_select(0, rows);
}

Rollout PpoTrainer::rollout(const std::vector<std::vector<int64_t>>& prompts,
                            const std::vector<uint64_t>& episode_seeds, double beta) {
  const PpoOptions& o = options_;
  check(prompts.size() == episode_seeds.size(), "ppo: one seed per prompt is needed");
  const int64_t total = static_cast<int64_t>(prompts.size());
  check(total >= group_.size(), "ppo: " + std::to_string(total) + " episodes cannot be shared by " +
                                    std::to_string(group_.size()) + " data-parallel ranks");
  Rollout r;
  r.prompts = prompts;
  r.beta = beta;

  // This rank's episodes.
  const dist::Shard shard = dist::shard_of(total, group_.rank(), group_.size());
  const std::vector<std::vector<int64_t>> my_prompts(prompts.begin() + shard.begin,
                                                     prompts.begin() + shard.begin + shard.count);
  auto started = Clock::now();
  SamplingOptions sampling = o.sampling;
  sampling.row_seeds.assign(episode_seeds.begin() + shard.begin,
                            episode_seeds.begin() + shard.begin + shard.count);
  // The log-probs are computed below in the training pass's own chunks and precision.
  sampling.full_pass_logprobs = false;
  r.generation = generate(actor_, my_prompts, sampling);
  r.seconds_generate = seconds_since(started);

  started = Clock::now();
  compute_passes(r);
  for (int64_t b = 0; b < total; ++b) r.responses.push_back(r.generation.response(b));
  r.scorer_scores = dist::gather_rows(group_, r.scorer_scores, total);

  r.penalized_scores = r.scorer_scores.to(r.mask.device());
  if (o.missing_eos_penalty) {
    const auto ended = r.generation.ended_with_eos.to(r.mask.device());
    r.penalized_scores =
        ppo::apply_missing_eos_penalty(r.penalized_scores, ended, *o.missing_eos_penalty);
    r.eos_penalized = total - ended.sum().item<int64_t>();
  }
  r.scores_constant =
      total > 1 && (r.penalized_scores.max() - r.penalized_scores.min()).item<double>() == 0.0;
  r.scores = ppo::normalize_scores(r.penalized_scores, o.whiten_rewards, o.reward_clip);
  if (critic_scale_.pending && total > 1 && !r.scores_constant) calibrate_value_scale(r);
  r.kl = (o.kl_estimator == "k3" ? ppo::kl_k3(r.logprobs, r.ref_logprobs)
                                 : ppo::kl_k1(r.logprobs, r.ref_logprobs)) *
         r.mask;
  r.rewards = ppo::token_rewards(r.kl, r.scores, r.mask, beta);
  auto adv = ppo::gae(r.rewards, r.values, r.mask, o.gamma, o.lam);
  r.advantages = o.whiten_advantages ? ppo::masked_whiten(adv.advantages, r.mask) : adv.advantages;
  r.returns = adv.returns;
  r.seconds_score = seconds_since(started);
  return r;
}

void PpoTrainer::calibrate_value_scale(Rollout& r) {
  // The mean and deviation normalize_scores whitens with; every rank has every episode's score.
  const auto all = torch::ones_like(r.penalized_scores, torch::kBool);
  const double mean = ppo::masked_mean(r.penalized_scores, all).item<double>();
  const double deviation =
      std::sqrt(ppo::masked_var(r.penalized_scores, all).item<double>() + ppo::kWhitenEpsilon);
  // (head - offset) / scale was the raw score's estimate; the whitened score's is that less the
  // mean, over the deviation.
  critic_scale_.offset += mean * critic_scale_.scale;
  critic_scale_.scale *= deviation;
  critic_scale_.pending = false;
  r.values = (r.values - mean) / deviation * r.mask;
}

void PpoTrainer::restore_critic_scale(const CriticScale& scale) {
  check(scale.scale > 0 && std::isfinite(scale.scale) && std::isfinite(scale.offset),
        "ppo: the critic's value scale must be positive and finite");
  critic_scale_ = scale;
}

void PpoTrainer::compute_passes(Rollout& r) {
  const PpoOptions& o = options_;
  GenerationBatch& g = r.generation;
  const int64_t local = g.batch();
  const int64_t total = static_cast<int64_t>(r.prompts.size());
  // Every rank lays its episodes out at the widest prompt and response of the whole batch, so
  // the passes see the shapes one process would, and the rows can be gathered.
  const int64_t prompt_len =
      static_cast<int64_t>(group_.max(static_cast<double>(g.prompt_ids.size(1))));
  const int64_t response_len =
      static_cast<int64_t>(group_.max(static_cast<double>(g.response_ids.size(1))));
  widen(g, prompt_len, response_len, o.sampling.pad_id);
  r.sequence_ids = g.sequence_ids();
  r.sequence_mask = g.sequence_mask();
  r.mask = g.response_mask.to(torch::kFloat);
  std::vector<std::vector<int64_t>> my_prompts, my_responses;
  for (int64_t b = 0; b < local; ++b) my_responses.push_back(g.response(b));
  const dist::Shard shard = dist::shard_of(total, group_.rank(), group_.size());
  my_prompts.assign(r.prompts.begin() + shard.begin, r.prompts.begin() + shard.begin + local);
  // The actor's and critic's passes beside the reference's and the scorer's: similar work.
  const auto actor_and_critic = [&] {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> entropy;
    r.logprobs =
        in_chunks(local, o.micro_batch_size, r.mask.device(), [&](const torch::Tensor& rows) {
          auto [logp, ent] = actor_pass(actor_, r, rows, /*entropy=*/true);
          entropy.push_back(ent);
          return logp;
        });
    r.entropy = torch::cat(entropy, 0);
    r.values = in_chunks(local, o.micro_batch_size, r.mask.device(),
                         [&](const torch::Tensor& rows) { return critic_pass(r, rows); });
  };
  const auto reference_and_scorer = [&] {
    torch::Tensor ref;
    {
      c10::InferenceMode inference;
      ref = in_chunks(local, o.micro_batch_size, r.mask.device(), [&](const torch::Tensor& rows) {
        return actor_pass(reference_, r, rows, /*entropy=*/false).first;
      });
    }
    r.ref_logprobs = ref.clone();  // a normal tensor, usable beside autograd ones
    r.scorer_scores = scorer_(my_prompts, my_responses).to(torch::kFloat).cpu().clone();
  };
  if (&reference_ == &actor_) {  // LoRA: one model, its adapters on, then off
    actor_and_critic();
    const LoraSwitchedOff base_only(reference_);
    reference_and_scorer();
  } else {
    SideBySide(side_by_side_).run(actor_and_critic, reference_and_scorer);
  }
  check(r.scorer_scores.dim() == 1 && r.scorer_scores.size(0) == local,
        "ppo: the scorer must return one score per episode");
  check(torch::isfinite(r.scorer_scores).all().item<bool>(),
        "ppo: the reward model returned a non-finite score");
  if (group_.single()) return;

  // Everyone's episodes, in episode order.
  auto gather = [&](torch::Tensor& t) { t = dist::gather_rows(group_, t, total); };
  for (torch::Tensor* t : {&g.prompt_ids, &g.prompt_mask, &g.response_ids, &g.response_mask,
                           &g.ended_with_eos, &r.logprobs, &r.entropy, &r.values, &r.ref_logprobs})
    gather(*t);
  if (g.logprobs.defined()) gather(g.logprobs);
  r.sequence_ids = g.sequence_ids();
  r.sequence_mask = g.sequence_mask();
  r.mask = g.response_mask.to(torch::kFloat);
}

LearnStats PpoTrainer::learn(const Rollout& r, uint64_t shuffle_seed, NonFiniteGuard* guard,
                             int64_t step_for_guard) {
  const PpoOptions& o = options_;
  const auto started = Clock::now();
  LearnStats s;
  s.explained_variance = ppo::explained_variance(r.values, r.returns, r.mask).item<double>();
  const int64_t batch = r.size();
  int64_t minibatches = 0;
  SideBySide side_by_side(side_by_side_);  // restores the threads when learn() returns
  actor_optimizer_.zero_grad();
  critic_optimizer_.zero_grad();
  for (int64_t epoch = 0; epoch < o.epochs; ++epoch) {
    const auto order = seeded_permutation(
        batch, shuffle_seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(epoch));
    for (int64_t start = 0; start < batch; start += o.mini_batch_size) {
      const int64_t end = std::min(batch, start + o.mini_batch_size);
      const std::vector<int64_t> minibatch(order.begin() + start, order.begin() + end);
      learn_minibatch(r, minibatch, /*first=*/epoch == 0 && start == 0, side_by_side, guard,
                      step_for_guard, s);
      ++minibatches;
    }
  }
  const double n = static_cast<double>(std::max<int64_t>(1, minibatches));
  for (double* v : {&s.policy_loss, &s.value_loss, &s.clipfrac, &s.value_clipfrac, &s.approx_kl,
                    &s.actor_grad_norm, &s.critic_grad_norm})
    *v /= n;
  s.seconds = seconds_since(started);
  return s;
}

void PpoTrainer::learn_minibatch(const Rollout& r, const std::vector<int64_t>& minibatch,
                                 bool first, SideBySide& side_by_side, NonFiniteGuard* guard,
                                 int64_t step_for_guard, LearnStats& s) {
  const PpoOptions& o = options_;
  // On one data-parallel rank the gradients' reduction calls no collective, so each model's can
  // run in its own piece; under data parallel they all-reduce, on this thread. (Tensor parallel
  // clipping does reduce over its group, but side_by_side_ is off then: the pieces run in order.)
  const bool reduce_in_pieces = group_.single();
  double actor_norm = 0, critic_norm = 0;
  double policy_loss = 0, value_loss = 0, clipfrac = 0, value_clipfrac = 0, approx_kl = 0;
  const std::vector<MicroBatch> micro_batches =
      this_ranks_micro_batches(r, minibatch, group_, o.micro_batch_size);
  // The actor's and the critic's passes share no parameter: each backward fills its own
  // model's gradients, side by side when enabled.
  const auto actor_work = [&] {
    for (const MicroBatch& m : micro_batches) {
      auto logp = actor_pass(actor_, r, m.rows, /*entropy=*/false).first;
      auto policy = ppo::clipped_policy_loss(logp, r.logprobs.index_select(0, m.rows),
                                             r.advantages.index_select(0, m.rows), m.mask, o.clip);
      (policy.loss * m.weight).backward();
      // The figures in one read from the device, not one host sync each.
      const auto figures = torch::stack({policy.loss.detach(), policy.clipfrac, policy.approx_kl})
                               .to(torch::kDouble)
                               .cpu();
      const auto f = figures.accessor<double, 1>();
      policy_loss += f[0] * m.weight;
      clipfrac += f[1] * m.weight;
      approx_kl += f[2] * m.weight;
      if (first) {
        const double deviation = ((policy.ratio - 1).abs() * m.mask).max().item<double>();
        s.first_ratio_max_deviation = std::max(s.first_ratio_max_deviation, deviation);
      }
    }
    if (reduce_in_pieces)
      actor_norm = actor_optimizer_.reduce_gradients_and_clip(o.actor_grad_clip);
  };
  const auto critic_work = [&] {
    for (const MicroBatch& m : micro_batches) {
      auto values = critic_pass(r, m.rows);
      auto value = ppo::clipped_value_loss(values, r.values.index_select(0, m.rows),
                                           r.returns.index_select(0, m.rows), m.mask, o.value_clip);
      (value.loss * o.value_coef * m.weight).backward();
      const auto figures =
          torch::stack({value.loss.detach(), value.clipfrac}).to(torch::kDouble).cpu();
      const auto f = figures.accessor<double, 1>();
      value_loss += f[0] * m.weight;
      value_clipfrac += f[1] * m.weight;
    }
    if (reduce_in_pieces)
      critic_norm = critic_optimizer_.reduce_gradients_and_clip(o.critic_grad_clip);
  };
  side_by_side.run(actor_work, critic_work);
  if (!group_.single()) {
    const auto sums = group_.sum({policy_loss, value_loss, clipfrac, value_clipfrac, approx_kl});
    policy_loss = sums[0], value_loss = sums[1], clipfrac = sums[2];
    value_clipfrac = sums[3], approx_kl = sums[4];
    if (first) s.first_ratio_max_deviation = group_.max(s.first_ratio_max_deviation);
  }
  if (first) s.first_approx_kl = approx_kl;
  if (!reduce_in_pieces) {
    actor_norm = actor_optimizer_.reduce_gradients_and_clip(o.actor_grad_clip);
    critic_norm = critic_optimizer_.reduce_gradients_and_clip(o.critic_grad_clip);
  }
  const double loss = policy_loss + o.value_coef * value_loss;
  const bool finite =
      std::isfinite(loss) && std::isfinite(actor_norm) && std::isfinite(critic_norm);
  const bool accept =
      guard ? guard->accept(loss, actor_norm + critic_norm, step_for_guard) : finite;
  // Under ZeRO-1 a step broadcasts the updated shards: side by side on one process only.
  const auto step_and_clear = [&](ParallelAdamW& optimizer) {
    return [target = &optimizer, accept] {
      if (accept) target->step();
      target->zero_grad();
    };
  };
  if (reduce_in_pieces) {
    side_by_side.run(step_and_clear(actor_optimizer_), step_and_clear(critic_optimizer_));
  } else {
    step_and_clear(actor_optimizer_)();
    step_and_clear(critic_optimizer_)();
  }
  ++(accept ? s.updates : s.skipped_updates);
  s.policy_loss += policy_loss;
  s.value_loss += value_loss;
  s.clipfrac += clipfrac;
  s.value_clipfrac += value_clipfrac;
  s.approx_kl += approx_kl;
  s.actor_grad_norm += actor_norm;
  s.critic_grad_norm += critic_norm;
}

}  // namespace tiller
