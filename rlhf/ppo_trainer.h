// One PPO iteration over in-memory models: a rollout (generate with the actor's own weights, score
// with the reference, the critic and a scorer, turn into per-token rewards and advantages), then
// several epochs of clipped policy and value updates over shuffled minibatches. The recipe stage
// (rlhf_stage) feeds it prompts and handles data, checkpoints and metrics; tests drive it directly.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/dist/process_group.h"
#include "common/model/transformer.h"
#include "common/rollout/generator.h"
#include "common/train/parallel_adamw.h"

namespace tiller {

class NonFiniteGuard;
class SideBySide;

struct PpoOptions {
  SamplingOptions sampling;  // max_new_tokens, temperature, top_k, top_p, eos_id, pad_id
  // The score given, in place of the scorer's, to a response that never produced EOS; none (the
  // default, as TRL's) keeps the scorer's. A base model rarely ends within max_new_tokens: a
  // penalty then replaces every score by one constant and PPO learns nothing (the rollout says so).
  std::optional<double> missing_eos_penalty;
  bool whiten_rewards = false;      // whiten the episode scores over the rollout batch
  double reward_clip = 0.0;         // clip the scores to [-clip, clip] (0: no clipping)
  std::string kl_estimator = "k1";  // the per-token KL in the rewards: "k1" or "k3"
  // Subtracted from the critic's head at the start: a critic initialised from a reward model
  // predicts its raw head score, the rewards are that score less the model's tiller_reward_offset.
  double value_offset = 0.0;
  // Whitened scores and a critic that starts as the reward model: the first rollout whose scores
  // are not all equal also takes their mean and deviation (what whitening takes out) into the
  // critic's scale (CriticScale), so that the critic predicts the whitened scores.
  bool calibrate_value_scale = false;
  double gamma = 1.0, lam = 0.95;
  double clip = 0.2, value_clip = 0.2, value_coef = 0.1;
  bool whiten_advantages = true;
  int64_t epochs = 4;
  int64_t mini_batch_size = 8;   // episodes per optimizer step
  int64_t micro_batch_size = 8;  // episodes per forward/backward (gradient accumulation)
  double actor_grad_clip = 1.0, critic_grad_clip = 1.0;  // <= 0: no clipping
  bool bf16 = false;
  // The actor's and the critic's training passes side by side on the CPU, each on half the
  // intra-op threads (common/util/side_by_side.h), where that pays: see PpoTrainer::side_by_side.
  bool side_by_side = true;
};

// How the critic's head reads as a value: (head - offset) / scale. It starts at
// PpoOptions::value_offset and 1, and is part of a run's state: the calibration of
// PpoOptions::calibrate_value_scale changes it once.
struct CriticScale {
  double offset = 0.0;
  double scale = 1.0;
  bool pending = false;  // the calibration is still to come
};

// Scores episodes: prompts (token ids, BOS first) and responses (generated tokens, EOS included
// when produced) -> [B] float. When PpoTrainer::side_by_side() holds it runs on another thread
// beside the actor's and critic's passes, so it must not call collectives then.
using EpisodeScorer =
    std::function<torch::Tensor(const std::vector<std::vector<int64_t>>& prompts,
                                const std::vector<std::vector<int64_t>>& responses)>;

// A rollout batch; every [B, R] tensor is 0 where `mask` is.
struct Rollout {
  GenerationBatch generation;
  torch::Tensor sequence_ids, sequence_mask;  // [B, P + R] prompt and response laid together
  std::vector<std::vector<int64_t>> prompts, responses;
  torch::Tensor mask;              // [B, R] float, 1 on response tokens (EOS included)
  torch::Tensor logprobs;          // [B, R] actor at rollout time (temperature-scaled)
  torch::Tensor ref_logprobs;      // [B, R] reference, same scaling
  torch::Tensor entropy;           // [B, R] the actor's entropy at each response position
  torch::Tensor values;            // [B, R] critic at rollout time
  torch::Tensor scorer_scores;     // [B] what the scorer said
  torch::Tensor penalized_scores;  // [B] after the missing-EOS penalty
  torch::Tensor scores;            // [B] what PPO learns from: penalized, whitened and clipped
  int64_t eos_penalized = 0;       // episodes whose score the missing-EOS penalty replaced
  // Every episode's penalized score the same (more than one episode): whitened they are all 0,
  // unwhitened no response is better than another. The rollout carries no reward signal.
  bool scores_constant = false;
  torch::Tensor kl;  // [B, R] the estimator's per-token KL used in the rewards
  torch::Tensor rewards, advantages, returns;  // [B, R]
  double beta = 0;
  double seconds_generate = 0, seconds_score = 0;

  int64_t size() const { return mask.size(0); }
};

// Figures of a rollout: means over episodes (KL summed over each response's tokens).
struct RolloutStats {
  double score_mean = 0, score_std = 0;  // scorer scores (before penalty)
  double penalized_score_mean = 0;       // after the missing-EOS penalty
  double score_trained_mean = 0;         // what PPO learns from (penalized, whitened, clipped)
  double eos_penalized_fraction = 0;     // episodes whose score the penalty replaced
  double kl_k1 = 0, kl_k3 = 0;
  double entropy = 0;  // mean over response tokens
  double response_length = 0, eos_rate = 0;
};
RolloutStats rollout_stats(const Rollout& rollout);

struct LearnStats {
  double policy_loss = 0, value_loss = 0, clipfrac = 0, value_clipfrac = 0, approx_kl = 0;
  double explained_variance = 0;  // of the rollout's values against its returns
  double actor_grad_norm = 0, critic_grad_norm = 0;
  // The first minibatch of the first epoch, before any update: the largest |ratio - 1| over its
  // tokens and its approx KL. Both ~0 when rollout and training log-probs agree.
  double first_ratio_max_deviation = 0, first_approx_kl = 0;
  int64_t updates = 0, skipped_updates = 0;
  double seconds = 0;
};

class PpoTrainer {
 public:
  // The models must outlive the trainer. reference is only read (under inference mode); actor and
  // critic are trained by their optimizers, whose data-parallel group the trainer shares.
  PpoTrainer(PpoOptions options, TransformerImpl& actor, TransformerImpl& reference,
             TransformerImpl& critic, EpisodeScorer scorer, ParallelAdamW& actor_optimizer,
             ParallelAdamW& critic_optimizer, const dist::Group& group = dist::Group());

  // Generates one response per prompt (episode i sampled with episode_seeds[i]), scores it and
  // computes rewards (KL coefficient beta) and advantages. Under data parallel every rank passes
  // the whole batch, generates and scores its shard (shard_of), and gets the whole rollout back:
  // the scores' and advantages' whitening sees every episode, as on one process.
  Rollout rollout(const std::vector<std::vector<int64_t>>& prompts,
                  const std::vector<uint64_t>& episode_seeds, double beta);

  // options.epochs passes of shuffled minibatches (order seeded by shuffle_seed) over the rollout.
  // Under data parallel each rank takes its shard of every minibatch; the gradients are summed.
  // A guard, when given, may refuse a non-finite update (the optimizers then skip it).
  LearnStats learn(const Rollout& rollout, uint64_t shuffle_seed, NonFiniteGuard* guard = nullptr,
                   int64_t step_for_guard = 0);

  const PpoOptions& options() const { return options_; }
  // The critic's scale now; a resumed run restores the one it saved (a scale that is not
  // positive and finite is refused).
  const CriticScale& critic_scale() const { return critic_scale_; }
  void restore_critic_scale(const CriticScale& scale);
  // Whether rollout() and learn() run the actor's and the critic's passes side by side: asked
  // for, with two or more intra-op threads, on the CPU, without tensor parallelism (its layers
  // call collectives), and the two models' matrix multiplies per token within a factor of two of
  // each other (else the larger one alone, on half the threads, sets the pace). Decided once,
  // from the shapes, so a run is reproducible. Measured on 2 cores (`tiller bench ppo`,
  // docs/bench.md): the quickstart's training pass (critic 0.89x the actor) 2.3x faster; at
  // llama-15m shapes (critic 0.4x: no 32000-row LM head) an iteration 3% to 7% slower side by side.
  bool side_by_side() const { return side_by_side_; }

 private:
  // Actor log-probs and entropy [b, R] of rows `rows` of the rollout (autograd as the caller's
  // mode), and the critic's values [b, R].
  std::pair<torch::Tensor, torch::Tensor> actor_pass(TransformerImpl& model, const Rollout& r,
                                                     const torch::Tensor& rows, bool entropy);
  torch::Tensor critic_pass(const Rollout& r, const torch::Tensor& rows);
  // One minibatch of learn(): both models' passes, the update (when the guard accepts it) and
  // its figures added to `s`.
  void learn_minibatch(const Rollout& r, const std::vector<int64_t>& minibatch, bool first,
                       SideBySide& side_by_side, NonFiniteGuard* guard, int64_t step_for_guard,
                       LearnStats& s);
  // The rollout's per-episode figures for this rank's episodes, then everyone's (gather_rows).
  void compute_passes(Rollout& r);
  // PpoOptions::calibrate_value_scale at the first rollout with a signal: the offset and scale
  // take in its scores' mean and deviation, and its values are mapped onto them.
  void calibrate_value_scale(Rollout& r);

  PpoOptions options_;
  CriticScale critic_scale_;
  TransformerImpl& actor_;
  TransformerImpl& reference_;
  TransformerImpl& critic_;
  EpisodeScorer scorer_;
  bool side_by_side_ = false;
  ParallelAdamW& actor_optimizer_;
  ParallelAdamW& critic_optimizer_;
  dist::Group group_;
};

// The value head read at each response position, on `scale`: the critic's estimate for the
// state before each response token (the slots whose hidden states predict them). [B, R].
torch::Tensor response_values(TransformerImpl& critic, const torch::Tensor& sequence_ids,
                              const torch::Tensor& sequence_mask, int64_t prompt_len,
                              const CriticScale& scale = {});

// Every tensor of a rollout batch by name (prompt_ids, response_ids, masks, log-probs, values,
// scores, rewards, advantages, returns, ...), for a dump an independent implementation can check.
std::vector<std::pair<std::string, torch::Tensor>> rollout_tensors(const Rollout& rollout);

}  // namespace tiller
