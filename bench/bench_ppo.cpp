#include <cstdio>
#include <nlohmann/json.hpp>

#include "bench/bench.h"
#include "common/data/preference_data.h"
#include "common/model/reward_model.h"
#include "common/recipe/pipeline.h"
#include "common/recipe/recipe.h"
#include "common/tokenizer/tokenizer.h"
#include "common/torch_compat.h"
#include "common/train/optimizer.h"
#include "common/train/precision.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "rlhf/ppo_trainer.h"
#include "rlhf/rlhf_stage.h"
#include "sft/sft_stage.h"
#include "stages/stage_types.h"

namespace tiller::bench {

namespace {

struct RecipeShapes {
  ModelConfig model;
  RlhfStageConfig rlhf;
};

// The shapes and settings of a recipe's rlhf stage. The benchmark reads no data and no
// checkpoint, so the files a recipe names need not exist yet (the quickstart writes its own
// data when it runs): those complaints are dropped, every other mistake is reported.
RecipeShapes read_recipe_shapes(const std::string& path) {
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
  check(rlhf_stages.size() == 1, "bench ppo: " + path + " has " +
                                     std::to_string(rlhf_stages.size()) +
                                     " rlhf stages; it needs exactly one");

  // The model: a stage that trains from scratch states its shape (and its tokenizer's size);
  // otherwise the base is an HF directory whose config.json says it.
  RecipeShapes out{ModelConfig{}, rlhf_stages[0]};
  const SftStageConfig* scratch = nullptr;
  for (const auto& s : sft_stages)
    if (!s.model_shape.empty()) scratch = &s;
  if (scratch != nullptr) {
    ModelConfig config = builtin_shape(scratch->model_shape);
    if (scratch->tokenizer_vocab_size > 0)
      config.vocab_size = scratch->tokenizer_vocab_size;
    else if (!scratch->tokenizer.empty())
      config.vocab_size = Tokenizer(scratch->tokenizer).vocab_size();
    nlohmann::json fields = model_config_to_hf_json(config);
    for (auto it = scratch->model_fields.begin(); it != scratch->model_fields.end(); ++it)
      fields[it.key()] = it.value();
    out.model = model_config_from_hf_json(fields, path + " stage " + scratch->name + " model");
  } else {
    check(!recipe.base.hf.empty() && path_exists(recipe.base.hf + "/config.json"),
          "bench ppo: " + path +
              " states no model shape (a pretrain stage with \"model\") and no base HF "
              "directory with a config.json");
    out.model = load_model_config(recipe.base.hf);
  }
  out.model.num_labels = 0;
  return out;
}

Transformer random_model(ModelConfig config, int64_t num_labels, uint64_t seed) {
  config.num_labels = num_labels;
  Transformer model(config);
  model->init_weights(seed);
  return model;
}

void check_options(const PpoBenchOptions& o) {
  check(!o.recipe.empty(), "bench ppo: --recipe is required");
  check(o.iterations >= 1, "bench ppo: --iterations must be at least 1");
  check(o.warmup >= 0, "bench ppo: --warmup must be >= 0");
  check(o.prompt_tokens >= 1, "bench ppo: --prompt-tokens must be at least 1");
}

// The stage's four roles, with random weights: actor and reference start equal (as when both
// are the SFT policy), the critic and the reward model are scalar-head models.
struct PpoRoles {
  Transformer actor, reference, critic, reward;
};

PpoRoles random_roles(const ModelConfig& config) {
  torch::manual_seed(1234);
  PpoRoles roles{random_model(config, 0, 1), random_model(config, 0, 1), random_model(config, 1, 2),
                 random_model(config, 1, 3)};
  for (TransformerImpl* frozen : {roles.reference.get(), roles.reward.get()}) {
    for (auto& p : frozen->parameters()) p.requires_grad_(false);
    frozen->eval();
  }
  roles.actor->train();
  roles.critic->train();
  return roles;
}

PpoOptions bench_ppo_options(const RlhfStageConfig& c, const ModelConfig& config,
                             const PpoBenchOptions& o, const torch::Device& device) {
  PpoOptions options = c.ppo;
  options.sampling.eos_id = config.eos_token_id;
  options.sampling.pad_id = 0;
  // Every episode runs to max_new_tokens (random weights rarely stop early), so each iteration
  // does the same work, here and in the reference.
  options.sampling.stop_at_eos = false;
  options.bf16 = use_bf16(c.train.precision, device);
  if (o.sequential) options.side_by_side = false;
  return options;
}

// Scores episodes with the reward model, adding the time it takes to rm_seconds.
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

// Prompts: BOS and random tokens, all of one length.
std::vector<std::vector<int64_t>> random_prompts(const ModelConfig& config, int64_t batch_size,
                                                 int64_t prompt_tokens) {
  auto generator = compat::make_cpu_generator(7);
  const auto tokens =
      torch::randint(3, config.vocab_size, {batch_size, prompt_tokens}, generator, torch::kLong);
  std::vector<std::vector<int64_t>> prompts(static_cast<size_t>(batch_size));
  for (int64_t b = 0; b < batch_size; ++b) {
    prompts[b].push_back(config.bos_token_id);
    for (int64_t t = 1; t < prompt_tokens; ++t) prompts[b].push_back(tokens[b][t].item<int64_t>());
  }
  return prompts;
}

// Seconds per iteration, means over the timed iterations.
struct IterationSeconds {
  double generate = 0, score = 0, rm = 0, train = 0, total = 0;
};

IterationSeconds time_iterations(PpoTrainer& trainer,
                                 const std::vector<std::vector<int64_t>>& prompts,
                                 const RlhfStageConfig& c, const PpoBenchOptions& o,
                                 double& rm_seconds) {
  IterationSeconds s;
  for (int i = 0; i < o.warmup + o.iterations; ++i) {
    std::vector<uint64_t> seeds;
    for (int64_t b = 0; b < c.batch_size; ++b)
      seeds.push_back(static_cast<uint64_t>(i * c.batch_size + b));
    rm_seconds = 0;
    Stopwatch watch;
    const Rollout r = trainer.rollout(prompts, seeds, c.beta);
    const LearnStats learned = trainer.learn(r, static_cast<uint64_t>(i));
    const double seconds = watch.seconds();
    if (i < o.warmup) continue;
    s.generate += r.seconds_generate;
    s.score += r.seconds_score;
    s.rm += rm_seconds;
    s.train += learned.seconds;
    s.total += seconds;
  }
  const double n = o.iterations;
  s.generate /= n, s.score /= n, s.rm /= n, s.train /= n, s.total /= n;
  return s;
}

// What the report states besides the timings.
struct PpoBenchSetup {
  const PpoBenchOptions& o;
  const ModelConfig& config;
  const RlhfStageConfig& c;
  const PpoOptions& options;
  bool side_by_side;
};

void print_json(const PpoBenchSetup& setup, const IterationSeconds& s) {
  const PpoBenchOptions& o = setup.o;
  const RlhfStageConfig& c = setup.c;
  const PpoOptions& options = setup.options;
  const double episodes_per_s = static_cast<double>(c.batch_size) / s.total;
  nlohmann::json doc = {{"bench", "ppo"},
                        {"recipe", o.recipe},
                        {"model", model_config_to_hf_json(setup.config)},
                        {"parameters", setup.config.parameter_count()},
                        {"dtype", options.bf16 ? "bf16" : "fp32"},
                        {"threads", torch::get_num_threads()},
                        {"side_by_side", setup.side_by_side},
                        {"batch_size", c.batch_size},
                        {"prompt_tokens", o.prompt_tokens},
                        {"new_tokens", options.sampling.max_new_tokens},
                        {"temperature", options.sampling.temperature},
                        {"epochs", options.epochs},
                        {"mini_batch_size", options.mini_batch_size},
                        {"micro_batch_size", options.micro_batch_size},
                        {"actor_lr", c.actor_lr},
                        {"critic_lr", c.critic_lr},
                        {"iterations", o.iterations},
                        {"generate_s", s.generate},
                        {"score_s", s.score},
                        {"rm_s", s.rm},
                        {"train_s", s.train},
                        {"iteration_s", s.total},
                        {"episodes_per_s", episodes_per_s}};
  std::printf("%s\n", doc.dump(2).c_str());
}

void print_table(const PpoBenchSetup& setup, const IterationSeconds& s) {
  const PpoBenchOptions& o = setup.o;
  const PpoOptions& options = setup.options;
  const double episodes_per_s = static_cast<double>(setup.c.batch_size) / s.total;
  std::printf(
      "recipe: %s (%.3fM-parameter models, %s), %lld episodes x (%lld prompt + %lld new tokens), "
      "%lld epochs of minibatch %lld, %d threads%s\n",
      o.recipe.c_str(), setup.config.parameter_count() / 1e6, options.bf16 ? "bf16" : "fp32",
      (long long)setup.c.batch_size, (long long)o.prompt_tokens,
      (long long)options.sampling.max_new_tokens, (long long)options.epochs,
      (long long)options.mini_batch_size, torch::get_num_threads(),
      setup.side_by_side ? ", actor and critic side by side" : "");
  std::printf("seconds per iteration (mean of %d, after %d warm-up):\n", o.iterations, o.warmup);
  std::printf("  generate  %8.3f\n", s.generate);
  std::printf("  scoring   %8.3f  (actor log-probs, reference, critic, reward model %.3f)\n",
              s.score, s.rm);
  std::printf("  training  %8.3f\n", s.train);
  std::printf("  total     %8.3f  (%.1f episodes/s)\n", s.total, episodes_per_s);
}

}  // namespace

void run_ppo(const PpoBenchOptions& o) {
  check_options(o);
  apply_threads(o.threads);
  const RecipeShapes shapes = read_recipe_shapes(o.recipe);
  const ModelConfig& config = shapes.model;
  const RlhfStageConfig& c = shapes.rlhf;
  check(o.prompt_tokens + c.ppo.sampling.max_new_tokens <= config.max_position_embeddings,
        "bench ppo: --prompt-tokens + rollout.max_new_tokens exceed the model's context of " +
            std::to_string(config.max_position_embeddings));
  const torch::Device device(torch::kCPU);

  PpoRoles roles = random_roles(config);
  const PpoOptions options = bench_ppo_options(c, config, o, device);
  double rm_seconds = 0;
  EpisodeScorer scorer =
      reward_model_scorer(*roles.reward, config, options.micro_batch_size, rm_seconds);
  ParallelAdamW actor_optimizer(*roles.actor, c.train.optimizer(c.actor_lr), dist::Group());
  ParallelAdamW critic_optimizer(*roles.critic, c.train.optimizer(c.critic_lr), dist::Group());
  PpoTrainer trainer(options, *roles.actor, *roles.reference, *roles.critic, scorer,
                     actor_optimizer, critic_optimizer);
  const std::vector<std::vector<int64_t>> prompts =
      random_prompts(config, c.batch_size, o.prompt_tokens);

  const IterationSeconds seconds = time_iterations(trainer, prompts, c, o, rm_seconds);
  const PpoBenchSetup setup{o, config, c, options, trainer.side_by_side()};
  if (o.json)
    print_json(setup, seconds);
  else
    print_table(setup, seconds);
}

}  // namespace tiller::bench
