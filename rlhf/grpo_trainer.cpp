#include "rlhf/grpo_trainer.h"

#include <algorithm>
#include <cmath>

#include "common/data/batching.h"  // seeded_permutation
#include "common/model/lora.h"
#include "common/rollout/batch_layout.h"
#include "common/rollout/shared_prompt.h"
#include "common/torch_compat.h"
#include "common/train/nonfinite_guard.h"
#include "common/train/token_log_probs.h"
#include "common/util/clock.h"
#include "common/util/error.h"
#include "rlhf/ppo_math.h"

namespace tiller {

std::string default_loss_aggregation(const std::string& algorithm) {
  if (algorithm == "dr_grpo") return "sequence_sum_constant";
  if (algorithm == "dapo" || algorithm == "reinforce_pp") return "token_mean";
  return "sequence_mean";
}

GrpoTrainer::GrpoTrainer(GrpoOptions options, TransformerImpl& actor, TransformerImpl* reference,
                         ParallelAdamW& optimizer, const dist::Group& group)
    : options_(std::move(options)),
      actor_(actor),
      reference_(reference),
      optimizer_(optimizer),
      group_(group) {
  const GrpoOptions& o = options_;
  options_.sampling.validate();
  check(o.group_size >= 1, "grpo: group_size must be at least 1");
  check(o.epochs >= 1 && o.micro_batch_size >= 1 && o.mini_batch_size >= 0,
        "grpo: epochs and micro_batch_size must be at least 1, mini_batch_size >= 0");
  check(!o.needs_reference() || reference_ != nullptr, "grpo: kl.beta > 0 needs a reference model");
  check(actor.config.num_labels == 0, "grpo: the policy must be a causal LM");
  check(reference_ == nullptr || reference_->config.vocab_size == actor.config.vocab_size,
        "grpo: the policy and the reference must share one vocabulary");
  // With LoRA the reference may be the policy itself, computing with its adapters switched off.
  if (reference_ != nullptr && reference_ != &actor_)
    for (auto& p : reference_->parameters()) p.requires_grad_(false);
}

GenerationBatch GrpoTrainer::sample(const std::vector<std::vector<int64_t>>& prompts,
                                    const std::vector<uint64_t>& row_seeds, int64_t group_size) {
  const int64_t g = group_size > 0 ? group_size : options_.group_size;
  check(static_cast<int64_t>(row_seeds.size()) == static_cast<int64_t>(prompts.size()) * g,
        "grpo: one seed per sampled row is needed");
  SamplingOptions sampling = options_.sampling;
  sampling.row_seeds = row_seeds;
  // The log-probs come from the training pass's own computation (prepare/learn).
  sampling.full_pass_logprobs = false;
  return generate_groups(actor_, prompts, g, sampling);
}

std::pair<torch::Tensor, torch::Tensor> GrpoTrainer::pass(TransformerImpl& model,
                                                          const GroupBatch& b,
                                                          const torch::Tensor& rows, bool entropy) {
  const auto mask = b.mask.index_select(0, rows);
  torch::Tensor logits;
  {
    compat::AutocastGuard cast(options_.bf16, b.sequence_ids.device());
    const auto ids = b.sequence_ids.index_select(0, rows);
    const auto sequence_mask = b.sequence_mask.index_select(0, rows);
    const int64_t prompt_len = b.generation.prompt_ids.size(1);
    const double temperature = options_.sampling.temperature;
    logits =
        options_.share_prompts
            ? response_logits_sharing_prompts(model, ids, sequence_mask, prompt_len, temperature)
            : response_logits(model, ids, sequence_mask, prompt_len, temperature);
  }
  const auto tokens = b.generation.response_ids.index_select(0, rows);
  if (!entropy) return {token_log_probs(logits, tokens) * mask, torch::Tensor()};
  const auto [logp, ent] = token_log_probs_and_entropy(logits, tokens);
  return {logp * mask, ent * mask};
}

torch::Tensor GrpoTrainer::all_rows_logprobs(TransformerImpl& model, const GroupBatch& b) {
  // Every rank has rows: the stage gives each whole groups (grpo_data_parallel_error).
  const dist::Shard mine = dist::shard_of(b.size(), group_.rank(), group_.size());
  torch::Tensor local;
  {
    c10::InferenceMode inference;
    local =
        in_chunks(mine.begin, mine.begin + mine.count, options_.micro_batch_size, b.mask.device(),
                  [&](const torch::Tensor& rows) { return pass(model, b, rows, false).first; });
  }
  local = local.clone();  // a normal tensor, usable beside autograd ones
  return group_.single() ? local : dist::gather_rows(group_, local, b.size());
}

std::pair<torch::Tensor, torch::Tensor> GrpoTrainer::logprobs(const GenerationBatch& generation) {
  GroupBatch b;
  b.generation = generation;
  b.sequence_ids = generation.sequence_ids();
  b.sequence_mask = generation.sequence_mask();
  b.mask = generation.response_mask.to(torch::kFloat);
  const torch::Tensor policy = all_rows_logprobs(actor_, b);
  torch::Tensor ref;
  if (reference_ != nullptr) {
    const LoraSwitchedOff base_only(*reference_);
    ref = all_rows_logprobs(*reference_, b);
  }
  return {policy, ref};
}

GroupBatch GrpoTrainer::prepare(GenerationBatch generation, const torch::Tensor& scores) {
  const GrpoOptions& o = options_;
  check(generation.batch() % o.group_size == 0 && scores.numel() == generation.batch(),
        "grpo: a batch must be whole groups with one score per row");
  const bool reinforce = o.algorithm == "reinforce_pp";
  GroupBatch b;
  b.group_size = o.group_size;
  b.generation = std::move(generation);
  b.sequence_ids = b.generation.sequence_ids();
  b.sequence_mask = b.generation.sequence_mask();
  b.mask = b.generation.response_mask.to(torch::kFloat);
  b.scores = scores.to(b.mask.device(), torch::kFloat);
  // Old log-probs: for the ratio of a second and later update, and REINFORCE++'s KL reward.
  if (o.epochs > 1 || (reinforce && o.needs_reference())) {
    auto [policy, ref] = logprobs(b.generation);
    b.old_logprobs = policy;
    b.ref_logprobs = ref;
  } else if (o.needs_reference()) {
    const LoraSwitchedOff base_only(*reference_);
    b.ref_logprobs = all_rows_logprobs(*reference_, b);
  }
  if (reinforce) {
    const auto logp = b.old_logprobs.defined() ? b.old_logprobs : torch::zeros_like(b.mask);
    const auto ref = b.ref_logprobs.defined() ? b.ref_logprobs : logp;
    b.advantages = grpo::reinforce_pp_advantages(b.scores, logp, ref, b.mask, o.beta);
  } else {
    b.advantages =
        grpo::group_advantages(b.scores, o.group_size, o.algorithm).unsqueeze(1) * b.mask;
  }
  return b;
}

GrpoLearnStats GrpoTrainer::learn(const GroupBatch& b, uint64_t shuffle_seed, NonFiniteGuard* guard,
                                  int64_t step_for_guard) {
  const GrpoOptions& o = options_;
  const auto started = Clock::now();
  GrpoLearnStats s;
  const int64_t n = b.size();
  const int64_t mini = o.mini_batch_size > 0 ? std::min(o.mini_batch_size, n) : n;
  int64_t minibatches = 0;
  optimizer_.zero_grad();
  for (int64_t epoch = 0; epoch < o.epochs; ++epoch) {
    const auto order =
        seeded_permutation(n, shuffle_seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(epoch));
    for (int64_t start = 0; start < n; start += mini) {
      std::vector<int64_t> minibatch(order.begin() + start,
                                     order.begin() + std::min(n, start + mini));
      // In row order, so that a micro-batch holds whole groups where it can (their prompt is
      // then computed once); the minibatch, and so its update, is the same set of rows.
      std::sort(minibatch.begin(), minibatch.end());
      learn_minibatch(b, minibatch, epoch == 0, guard, step_for_guard, s);
      ++minibatches;
    }
  }
  const double count = static_cast<double>(std::max<int64_t>(1, minibatches));
  for (double* v : {&s.policy_loss, &s.kl, &s.clipfrac_low, &s.clipfrac_high, &s.grad_norm})
    *v /= count;
  s.seconds = seconds_since(started);
  return s;
}

void GrpoTrainer::learn_minibatch(const GroupBatch& b, const std::vector<int64_t>& minibatch,
                                  bool first_epoch, NonFiniteGuard* guard, int64_t step_for_guard,
                                  GrpoLearnStats& s) {
  const GrpoOptions& o = options_;
  const std::vector<double> row_tokens = row_token_counts(b.mask);
  grpo::Aggregation aggregation;
  aggregation.mode = o.loss_aggregation;
  aggregation.minibatch_tokens = minibatch_tokens(minibatch, row_tokens);
  aggregation.minibatch_sequences = static_cast<double>(minibatch.size());
  aggregation.constant = static_cast<double>(o.sampling.max_new_tokens);
  // The KL is in REINFORCE++'s rewards, not in its loss.
  const double loss_beta = o.algorithm == "reinforce_pp" ? 0.0 : o.beta;
  double loss = 0, kl = 0, low = 0, high = 0, entropy = 0;
  // This rank's share of the minibatch; the figures and gradients are shares of the whole
  // minibatch's (its token and sequence counts), summed over the ranks below.
  const dist::Shard mine =
      dist::shard_of(static_cast<int64_t>(minibatch.size()), group_.rank(), group_.size());
  for (const MicroBatchRows& micro : micro_batch_rows(minibatch, row_tokens, mine.begin, mine.count,
                                                      o.micro_batch_size, b.mask.device())) {
    const torch::Tensor& rows = micro.rows;
    const auto mask = b.mask.index_select(0, rows);
    auto [logp, ent] = pass(actor_, b, rows, /*entropy=*/first_epoch);
    const auto old =
        b.old_logprobs.defined() ? b.old_logprobs.index_select(0, rows) : logp.detach();
    const auto ref =
        b.ref_logprobs.defined() ? b.ref_logprobs.index_select(0, rows) : torch::Tensor();
    const auto result = grpo::policy_loss(logp, old, ref, b.advantages.index_select(0, rows), mask,
                                          o.clip_low, o.clip_high, loss_beta, aggregation);
    result.loss.backward();
    // Token-weighted shares of the minibatch's figures.
    const double share = micro.weight;
    const auto figures =
        torch::stack({result.loss.detach(), result.kl, result.clipfrac_low, result.clipfrac_high})
            .to(torch::kDouble)
            .cpu();
    const auto f = figures.accessor<double, 1>();
    loss += f[0];
    kl += f[1] * share;
    low += f[2] * share;
    high += f[3] * share;
    if (first_epoch) entropy += (ent.sum() / aggregation.minibatch_tokens).item<double>();
  }
  if (!group_.single()) {
    const std::vector<double> sums = group_.sum({loss, kl, low, high, entropy});
    loss = sums[0], kl = sums[1], low = sums[2], high = sums[3], entropy = sums[4];
  }
  const double norm = optimizer_.reduce_gradients_and_clip(o.grad_clip);
  const bool accept = guard ? guard->accept(loss, norm, step_for_guard)
                            : std::isfinite(loss) && std::isfinite(norm);
  if (accept) optimizer_.step();
  optimizer_.zero_grad();
  ++(accept ? s.updates : s.skipped_updates);
  s.policy_loss += loss;
  s.kl += kl;
  s.clipfrac_low += low;
  s.clipfrac_high += high;
  s.grad_norm += norm;
  if (first_epoch)
    s.entropy += entropy * static_cast<double>(minibatch.size()) / static_cast<double>(b.size());
}

}  // namespace tiller
