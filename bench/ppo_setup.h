// What `bench ppo` and `bench grpo` share: a recipe's rlhf-stage shapes, its four roles with
// random weights, the reward-model scorer, random prompts, and a PPO iteration timed as
// `bench ppo` times it.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "common/model/model_config.h"
#include "common/model/transformer.h"
#include "common/train/parallel_adamw.h"
#include "rlhf/ppo_trainer.h"
#include "rlhf/rlhf_stage.h"

namespace tiller::bench {

struct RecipeShapes {
  ModelConfig model;  // an LM (num_labels 0)
  RlhfStageConfig rlhf;
};

// The shapes and settings of the recipe's one rlhf stage; `command` ("bench ppo") names the
// caller in the errors. The files the recipe names need not exist (no data is read).
RecipeShapes read_recipe_shapes(const std::string& path, const std::string& command);

// Refuses prompts that, with the stage's max_new_tokens, do not fit the model's context.
void check_fits_context(const RecipeShapes& shapes, int64_t prompt_tokens,
                        const std::string& command);

// The rlhf stage's four roles, with random weights, on `device`: actor and reference start equal
// (as when both are the SFT policy), the critic and the reward model are scalar-head models. The
// same seeds every call, so two benchmarks built from one config start from the same weights.
struct PpoRoles {
  Transformer actor, reference, critic, reward;
};
PpoRoles random_roles(const ModelConfig& config, const torch::Device& device = torch::kCPU);

// Scores episodes with the reward model, adding the time it takes to rm_seconds (which must
// outlive the scorer).
EpisodeScorer reward_model_scorer(TransformerImpl& reward, const ModelConfig& config,
                                  int64_t micro_batch_size, double& rm_seconds);

// `count` prompts: BOS and random tokens, all `prompt_tokens` long.
std::vector<std::vector<int64_t>> random_prompts(const ModelConfig& config, int64_t count,
                                                 int64_t prompt_tokens);

// Seconds of one iteration, or their means over several.
struct IterationSeconds {
  double generate = 0;
  double score = 0;  // everything between generation and training, the reward model included
  double rm = 0;     // the reward model's part of `score`
  double train = 0;
  double total = 0;
};

// The mean seconds of `iterations` calls of iterate(i), after `warmup` untimed ones (i counts
// from 0 through both).
IterationSeconds mean_iteration(const std::function<IterationSeconds(int)>& iterate, int warmup,
                                int iterations);

// The recipe's PPO stage as `bench ppo` runs it: PpoTrainer over random_roles on `device`, the
// reward-model scorer and batch_size random prompts; every episode runs to max_new_tokens.
class PpoBenchRun {
 public:
  PpoBenchRun(const RecipeShapes& shapes, int64_t prompt_tokens, bool sequential,
              const torch::Device& device = torch::kCPU);
  PpoBenchRun(const PpoBenchRun&) = delete;  // the scorer holds &rm_seconds_
  PpoBenchRun& operator=(const PpoBenchRun&) = delete;

  // Rollout and learning of iteration `iteration` (its sampling seeds and shuffle follow from it).
  IterationSeconds iterate(int iteration);

  const PpoOptions& options() const { return options_; }
  bool side_by_side() const { return trainer_.side_by_side(); }

 private:
  int64_t batch_size_;
  double beta_;  // the KL coefficient
  torch::Device device_;
  PpoRoles roles_;
  PpoOptions options_;
  double rm_seconds_ = 0;
  ParallelAdamW actor_optimizer_, critic_optimizer_;
  PpoTrainer trainer_;
  std::vector<std::vector<int64_t>> prompts_;
};

}  // namespace tiller::bench
