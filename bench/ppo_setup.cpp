#include "bench/ppo_setup.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/data/preference_data.h"
#include "common/model/reward_model.h"
#include "common/recipe/pipeline.h"
#include "common/recipe/recipe.h"
#include "common/tokenizer/tokenizer.h"
#include "common/torch_compat.h"
#include "common/train/precision.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "sft/sft_stage.h"
#include "stages/stage_types.h"

namespace tiller::bench {

namespace {

// The model of a recipe: a stage that trains from scratch states its shape (and its tokenizer's
// size); otherwise the base is an HF directory whose config.json says it.
ModelConfig recipe_model(const Recipe& recipe, const std::vector<SftStageConfig>& sft_stages,
                         const std::string& path, const std::string& command) {
  const SftStageConfig* scratch = nullptr;
  for (const auto& s : sft_stages)
    if (!s.model_shape.empty()) scratch = &s;
  ModelConfig model;
  if (scratch != nullptr) {
    ModelConfig config = builtin_shape(scratch->model_shape);
    if (scratch->tokenizer_vocab_size > 0)
      config.vocab_size = scratch->tokenizer_vocab_size;
    else if (!scratch->tokenizer.empty())
      config.vocab_size = Tokenizer(scratch->tokenizer).vocab_size();
    nlohmann::json fields = model_config_to_hf_json(config);
    for (auto it = scratch->model_fields.begin(); it != scratch->model_fields.end(); ++it)
      fields[it.key()] = it.value();
    model = model_config_from_hf_json(fields, path + " stage " + scratch->name + " model");
  } else {
    check(!recipe.base.hf.empty() && path_exists(recipe.base.hf + "/config.json"),
          command + ": " + path +
              " states no model shape (a pretrain stage with \"model\") and no base HF "
              "directory with a config.json");
    model = load_model_config(recipe.base.hf);
  }
  model.num_labels = 0;
  return model;
}

Transformer random_model(ModelConfig config, int64_t num_labels, uint64_t seed) {
  config.num_labels = num_labels;
  Transformer model(config);
  model->init_weights(seed);
  return model;
}

PpoOptions bench_ppo_options(const RlhfStageConfig& c, const ModelConfig& config, bool sequential,
                             const torch::Device& device) {
  PpoOptions options = c.ppo;
  options.sampling.eos_id = config.eos_token_id;
  options.sampling.pad_id = 0;
  // Every episode runs to max_new_tokens (random weights rarely stop early), so each iteration
  // does the same work, here and in the reference.
  options.sampling.stop_at_eos = false;
  options.bf16 = use_bf16(c.train.precision, device);
  if (sequential) options.side_by_side = false;
  return options;
}

}  // namespace

// The benchmark reads no data and no checkpoint, so the files a recipe names need not exist yet
// (the quickstart writes its own data when it runs): those complaints are dropped, every other
// mistake is reported.
RecipeShapes read_recipe_shapes(const std::string& path, const std::string& command) {
  ConfigErrors errors;
  const Recipe recipe = load_recipe(path, {}, errors);
  std::vector<SftStageConfig> sft_stages;
  std::vector<RlhfStageConfig> rlhf_stages;
  for (const auto& stage : parse_stages(stage_registry(), recipe, errors)) {
    if (const auto* sft = std::any_cast<SftStageConfig>(&stage.config))
      sft_stages.push_back(*sft);
    else if (const auto* rlhf = std::any_cast<RlhfStageConfig>(&stage.config))
      rlhf_stages.push_back(*rlhf);
  }
  std::string message;
  for (const auto& e : errors.list()) {
    const std::string missing = " does not exist";
    if (e.size() >= missing.size() &&
        e.compare(e.size() - missing.size(), missing.size(), missing) == 0)
      continue;
    message += (message.empty() ? "" : "\n  ") + e;
  }
  check(message.empty(), path + ": " + message);
  check(rlhf_stages.size() == 1, command + ": " + path + " has " +
                                     std::to_string(rlhf_stages.size()) +
                                     " rlhf stages; it needs exactly one");
  return {recipe_model(recipe, sft_stages, path, command), rlhf_stages[0]};
}

void check_fits_context(const RecipeShapes& shapes, int64_t prompt_tokens,
                        const std::string& command) {
  check(prompt_tokens + shapes.rlhf.ppo.sampling.max_new_tokens <=
            shapes.model.max_position_embeddings,
        command + ": --prompt-tokens + rollout.max_new_tokens exceed the model's context of " +
            std::to_string(shapes.model.max_position_embeddings));
}

PpoRoles random_roles(const ModelConfig& config, const torch::Device& device) {
  torch::manual_seed(1234);
  PpoRoles roles{random_model(config, 0, 1), random_model(config, 0, 1), random_model(config, 1, 2),
                 random_model(config, 1, 3)};
  for (TransformerImpl* role :
       {roles.actor.get(), roles.reference.get(), roles.critic.get(), roles.reward.get()})
    role->to(device);
  for (TransformerImpl* frozen : {roles.reference.get(), roles.reward.get()}) {
    for (auto& p : frozen->parameters()) p.requires_grad_(false);
    frozen->eval();
  }
  roles.actor->train();
  roles.critic->train();
  return roles;
}

EpisodeScorer reward_model_scorer(TransformerImpl& reward, const ModelConfig& config,
                                  int64_t micro_batch_size, double& rm_seconds) {
  const int64_t eos = config.eos_token_id, max_positions = config.max_position_embeddings;
  return [&reward, eos, max_positions, micro_batch_size, &rm_seconds](
             const std::vector<std::vector<int64_t>>& prompts,
             const std::vector<std::vector<int64_t>>& responses) {
    Stopwatch watch;
    std::vector<std::vector<int64_t>> sequences;
    for (size_t i = 0; i < prompts.size(); ++i)
      sequences.push_back(reward_sequence(prompts[i], responses[i], eos, max_positions).tokens);
    std::vector<double> scores;
    {
      c10::InferenceMode inference;
      scores = score_sequences(reward, sequences, 0, micro_batch_size);
    }
    rm_seconds += watch.seconds();
    return torch::tensor(scores, torch::kDouble).to(torch::kFloat);
  };
}

std::vector<std::vector<int64_t>> random_prompts(const ModelConfig& config, int64_t count,
                                                 int64_t prompt_tokens) {
  auto generator = compat::make_cpu_generator(7);
  const auto tokens =
      torch::randint(3, config.vocab_size, {count, prompt_tokens}, generator, torch::kLong);
  std::vector<std::vector<int64_t>> prompts(static_cast<size_t>(count));
  for (int64_t b = 0; b < count; ++b) {
    prompts[b].push_back(config.bos_token_id);
    for (int64_t t = 1; t < prompt_tokens; ++t) prompts[b].push_back(tokens[b][t].item<int64_t>());
  }
  return prompts;
}

IterationSeconds mean_iteration(const std::function<IterationSeconds(int)>& iterate, int warmup,
                                int iterations) {
  IterationSeconds sum;
  for (int i = 0; i < warmup + iterations; ++i) {
    const IterationSeconds s = iterate(i);
    if (i < warmup) continue;
    sum.generate += s.generate;
    sum.score += s.score;
    sum.rm += s.rm;
    sum.train += s.train;
    sum.total += s.total;
  }
  const double n = std::max(1, iterations);
  return {sum.generate / n, sum.score / n, sum.rm / n, sum.train / n, sum.total / n};
}

PpoBenchRun::PpoBenchRun(const RecipeShapes& shapes, int64_t prompt_tokens, bool sequential,
                         const torch::Device& device)
    : batch_size_(shapes.rlhf.batch_size),
      beta_(shapes.rlhf.beta),
      device_(device),
      roles_(random_roles(shapes.model, device)),
      options_(bench_ppo_options(shapes.rlhf, shapes.model, sequential, device)),
      actor_optimizer_(*roles_.actor, shapes.rlhf.train.optimizer(shapes.rlhf.actor_lr),
                       dist::Group()),
      critic_optimizer_(*roles_.critic, shapes.rlhf.train.optimizer(shapes.rlhf.critic_lr),
                        dist::Group()),
      trainer_(
          options_, *roles_.actor, *roles_.reference, *roles_.critic,
          reward_model_scorer(*roles_.reward, shapes.model, options_.micro_batch_size, rm_seconds_),
          actor_optimizer_, critic_optimizer_),
      prompts_(random_prompts(shapes.model, batch_size_, prompt_tokens)) {}

IterationSeconds PpoBenchRun::iterate(int iteration) {
  std::vector<uint64_t> seeds;
  for (int64_t b = 0; b < batch_size_; ++b)
    seeds.push_back(static_cast<uint64_t>(iteration * batch_size_ + b));
  rm_seconds_ = 0;
  Stopwatch watch;
  const Rollout r = trainer_.rollout(prompts_, seeds, beta_);
  const LearnStats learned = trainer_.learn(r, static_cast<uint64_t>(iteration));
  synchronize(device_);  // the last optimizer step's kernels, on a GPU
  return {r.seconds_generate, r.seconds_score, rm_seconds_, learned.seconds, watch.seconds()};
}

}  // namespace tiller::bench
