// What the online-RL stages (rlhf's PPO, grpo) share besides the stage loop: the "train" section
// (optimizer, schedule, checkpoints, precision), seeds for episodes and evaluations, held-out
// prompts, and small text helpers for samples.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <initializer_list>
#include <set>
#include <string>
#include <vector>

#include "common/data/prompt_data.h"
#include "common/model/transformer.h"
#include "common/recipe/config_reader.h"
#include "common/rollout/generator.h"
#include "common/train/optimizer.h"
#include "common/train/parallel_adamw.h"
#include "common/train/schedule.h"
#include "common/train/stage_loop.h"

namespace tiller {

class Tokenizer;

// The "train" section of an online-RL stage, less its learning rates (PPO has two, GRPO one).
struct RlTrainOptions {
  int64_t iterations = 100;
  // Constant: an RL run's length is a guess and its targets move; a decay to 0 over
  // `iterations` halves the mean step and stops learning at the end (from the base stories260K
  // with whitened scores, 30 iterations: 'happy' 0.00 -> 0.47 linear, 0.80 constant).
  std::string schedule = "constant";
  double min_lr_ratio = 0.0;
  int64_t warmup_iterations = 0;
  double weight_decay = 0.0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double grad_clip = 1.0;  // <= 0: no clipping
  int64_t checkpoint_every = 0, keep_checkpoints = 2, log_every = 1;
  std::string precision = "fp32";
  int64_t max_nonfinite_steps = 5;
  ParallelOptions parallel;  // zero_stage, allreduce_bucket_mb

  OptimizerOptions optimizer(double lr) const { return {lr, weight_decay, beta1, beta2, eps}; }
  ScheduleOptions schedule_for(double lr) const {
    return {lr, min_lr_ratio, warmup_iterations, iterations, schedule};
  }
  LoopSchedule loop(int64_t eval_every) const {
    return {iterations,       log_every,        eval_every,
            checkpoint_every, keep_checkpoints, max_nonfinite_steps};
  }
};

// Reads every key of RlTrainOptions from `t` (the caller reads its learning rates).
void read_rl_train(ConfigReader& t, RlTrainOptions& o);
// The keys as they run, for the resolved recipe (the caller adds its learning rates).
nlohmann::json rl_train_values(const RlTrainOptions& o);

// The "data" section of an online-RL stage: the prompt file ("prompts") and how it is read, in
// one of `formats`.
void read_prompt_data(const nlohmann::json& json, const std::string& path, ConfigErrors& errors,
                      const std::set<std::string>& formats, PromptDataOptions& data);
nlohmann::json prompt_data_values(const PromptDataOptions& data);

// The sampling keys of a "rollout" section: max_new_tokens, temperature (> 0), and top_k / top_p,
// which must stay 0 / 1: the update's ratios and KL are those of the whole temperature-scaled
// distribution, and a sample from a truncated one would be off-policy. `algorithm` names the
// stage's update in the messages ("PPO").
void read_on_policy_sampling(ConfigReader& g, const std::string& algorithm, SamplingOptions& s);

// The "samples" section: samples.jsonl every `every` iterations (0: before and after only),
// `count` episodes each.
void read_samples(const nlohmann::json& json, const std::string& path, ConfigErrors& errors,
                  int64_t& every, int64_t& count);
nlohmann::json samples_values(int64_t every, int64_t count);

// Why `ranks` data-parallel ranks cannot share `count` evaluation prompts (the recipe's
// eval.prompts is `asked`), or "": each rank evaluates a share, and 0 prompts is no evaluation.
std::string eval_prompts_share_error(int64_t count, int64_t asked, int64_t ranks);

// A 64-bit mix of several values (splitmix64 steps): episode, evaluation and shuffle seeds.
uint64_t mix_seed(std::initializer_list<uint64_t> values);
// The streams mixed into the run's seed for each use.
constexpr uint64_t kEvalStream = 0xe7a1, kTrainStream = 0x7a1a, kShuffleStream = 0x5f1e,
                   kCriticLoraStream = 0xc1a0;

// Which of `count` records are held out for evaluation (the first `held_out` of a permutation
// seeded with `seed`) and which train, each in that permutation's order.
struct HeldOutSplit {
  std::vector<int64_t> train, eval;
  std::vector<uint64_t> eval_seeds;  // one per evaluation record: mix_seed(seed, kEvalStream, i)
};
HeldOutSplit hold_out(int64_t count, int64_t held_out, uint64_t seed);

// A double as text that reads back to the same value.
std::string exact_text(double value);
// The mean, NaN for none.
double mean_of(const std::vector<double>& values);
// A response's text without its EOS.
std::string response_text(const Tokenizer& tok, std::vector<int64_t> response);
// Text on one console line: line breaks and tabs as spaces, cut to `width` with "...".
std::string one_line(std::string text, size_t width);

}  // namespace tiller
