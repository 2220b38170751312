#include <cstdio>
#include <nlohmann/json.hpp>

#include "bench/bench.h"
#include "bench/ppo_setup.h"
#include "common/util/error.h"
#include "rlhf/grpo_trainer.h"

namespace tiller::bench {

namespace {

// DeepSeekMath's KL weight (GrpoOptions' default); above 0, so the reference pass is timed.
constexpr double kGrpoBeta = 0.04;

void check_options(const GrpoBenchOptions& o) {
  check(!o.recipe.empty(), "bench grpo: --recipe is required");
  check(o.group >= 2,
        "bench grpo: --group must be at least 2 (a group of one has no relative "
        "advantage)");
  check(o.grpo_epochs >= 1, "bench grpo: --grpo-epochs must be at least 1");
  check(o.iterations >= 1, "bench grpo: --iterations must be at least 1");
  check(o.warmup >= 0, "bench grpo: --warmup must be >= 0");
  check(o.prompt_tokens >= 1, "bench grpo: --prompt-tokens must be at least 1");
}

// GRPO on PPO's shapes: its sampling (temperature, max_new_tokens, every row to the end), its
// micro-batch, actor learning rate, gradient clip and precision; the whole batch per update.
GrpoOptions grpo_options(const GrpoBenchOptions& o, int64_t batch_size, const PpoOptions& ppo,
                         bool share_prompts) {
  GrpoOptions options;
  options.algorithm = "grpo";
  options.sampling = ppo.sampling;
  options.group_size = o.group;
  options.beta = kGrpoBeta;
  options.epochs = o.grpo_epochs;
  options.mini_batch_size = batch_size;
  options.micro_batch_size = ppo.micro_batch_size;
  options.loss_aggregation = default_loss_aggregation(options.algorithm);
  options.grad_clip = ppo.actor_grad_clip;
  options.bf16 = ppo.bf16;
  options.share_prompts = share_prompts;
  return options;
}

// A GRPO iteration on the recipe's shapes: batch / group random prompts, each sampled `group`
// times by GrpoTrainer::sample, scored by the reward model as PPO's episodes are, then prepare
// (the reference's log-probs, the policy's too when epochs > 1, group advantages) and learn.
class GrpoBenchRun {
 public:
  GrpoBenchRun(const RecipeShapes& shapes, const GrpoBenchOptions& o, const PpoOptions& ppo,
               bool share_prompts)
      : batch_size_(shapes.rlhf.batch_size),
        roles_(random_roles(shapes.model)),
        options_(grpo_options(o, batch_size_, ppo, share_prompts)),
        scorer_(reward_model_scorer(*roles_.reward, shapes.model, options_.micro_batch_size,
                                    rm_seconds_)),
        optimizer_(*roles_.actor, shapes.rlhf.train.optimizer(shapes.rlhf.actor_lr), dist::Group()),
        trainer_(options_, *roles_.actor, roles_.reference.get(), optimizer_),
        prompts_(random_prompts(shapes.model, batch_size_ / o.group, o.prompt_tokens)) {}
  GrpoBenchRun(const GrpoBenchRun&) = delete;  // the scorer holds &rm_seconds_
  GrpoBenchRun& operator=(const GrpoBenchRun&) = delete;

  IterationSeconds iterate(int iteration) {
    std::vector<uint64_t> seeds;
    for (int64_t row = 0; row < batch_size_; ++row)
      seeds.push_back(static_cast<uint64_t>(iteration * batch_size_ + row));
    rm_seconds_ = 0;
    Stopwatch whole;
    GenerationBatch generation = trainer_.sample(prompts_, seeds);
    const double generate = whole.seconds();

    Stopwatch scoring;
    std::vector<std::vector<int64_t>> row_prompts, responses;
    for (int64_t row = 0; row < generation.batch(); ++row) {
      row_prompts.push_back(prompts_[static_cast<size_t>(row / options_.group_size)]);
      responses.push_back(generation.response(row));
    }
    const torch::Tensor scores = scorer_(row_prompts, responses);
    const GroupBatch batch = trainer_.prepare(std::move(generation), scores);
    const double score = scoring.seconds();

    const GrpoLearnStats learned = trainer_.learn(batch, static_cast<uint64_t>(iteration));
    return {generate, score, rm_seconds_, learned.seconds, whole.seconds()};
  }

  const GrpoOptions& options() const { return options_; }
  int64_t prompts() const { return static_cast<int64_t>(prompts_.size()); }

 private:
  int64_t batch_size_;
  PpoRoles roles_;  // the same weights as PPO's; the critic is not used
  GrpoOptions options_;
  double rm_seconds_ = 0;
  EpisodeScorer scorer_;
  ParallelAdamW optimizer_;
  GrpoTrainer trainer_;
  std::vector<std::vector<int64_t>> prompts_;
};

// One side's settings and seconds; PPO's and GRPO's objects have the same keys.
nlohmann::json side_json(const std::string& algorithm, int64_t prompts, int64_t group,
                         const IterationSeconds& s, int64_t batch_size) {
  return {{"algorithm", algorithm},
          {"prompts", prompts},
          {"group", group},
          {"generate_s", s.generate},
          {"score_s", s.score},
          {"rm_s", s.rm},
          {"train_s", s.train},
          {"iteration_s", s.total},
          {"episodes_per_s", static_cast<double>(batch_size) / s.total}};
}

// What the report states besides the timings.
struct GrpoBenchSetup {
  const GrpoBenchOptions& o;
  const RecipeShapes& shapes;
  const PpoBenchRun& ppo;
  const GrpoBenchRun& grpo;
  const GrpoBenchRun& grpo_one_row;  // the same GRPO with one row per sample
};

// The seconds of each side.
struct GrpoBenchSeconds {
  IterationSeconds ppo, grpo, grpo_one_row;
};

nlohmann::json ppo_json(const GrpoBenchSetup& setup, const IterationSeconds& s) {
  const PpoOptions& options = setup.ppo.options();
  const RlhfStageConfig& c = setup.shapes.rlhf;
  nlohmann::json doc = side_json("ppo", c.batch_size, 1, s, c.batch_size);
  doc.update({{"epochs", options.epochs},
              {"mini_batch_size", options.mini_batch_size},
              {"micro_batch_size", options.micro_batch_size},
              {"clip", options.clip},
              {"critic", true},
              {"kl_beta", c.beta},
              {"kl_estimator", options.kl_estimator},
              {"kl_in", "rewards"},
              {"actor_lr", c.actor_lr},
              {"side_by_side", setup.ppo.side_by_side()},
              {"share_prompts", false}});
  return doc;
}

nlohmann::json grpo_json(const GrpoBenchRun& run, const GrpoBenchSetup& setup,
                         const IterationSeconds& s) {
  const GrpoOptions& options = run.options();
  const RlhfStageConfig& c = setup.shapes.rlhf;
  nlohmann::json doc = side_json("grpo", run.prompts(), options.group_size, s, c.batch_size);
  doc.update({{"epochs", options.epochs},
              {"mini_batch_size", options.mini_batch_size},
              {"micro_batch_size", options.micro_batch_size},
              {"clip", options.clip_high},
              {"critic", false},
              {"kl_beta", options.beta},
              {"kl_estimator", "k3"},
              {"kl_in", "loss"},
              {"actor_lr", c.actor_lr},
              {"side_by_side", false},
              {"share_prompts", options.share_prompts}});
  return doc;
}

void print_json(const GrpoBenchSetup& setup, const GrpoBenchSeconds& seconds) {
  const IterationSeconds &ppo = seconds.ppo, &grpo = seconds.grpo, &one_row = seconds.grpo_one_row;
  const ModelConfig& config = setup.shapes.model;
  const SamplingOptions& sampling = setup.ppo.options().sampling;
  const nlohmann::json doc = {
      {"bench", "grpo"},
      {"recipe", setup.o.recipe},
      {"model", model_config_to_hf_json(config)},
      {"parameters", config.parameter_count()},
      {"dtype", setup.ppo.options().bf16 ? "bf16" : "fp32"},
      {"threads", torch::get_num_threads()},
      {"batch_size", setup.shapes.rlhf.batch_size},
      {"prompt_tokens", setup.o.prompt_tokens},
      {"new_tokens", sampling.max_new_tokens},
      {"temperature", sampling.temperature},
      {"iterations", setup.o.iterations},
      {"warmup", setup.o.warmup},
      {"ppo", ppo_json(setup, ppo)},
      {"grpo", grpo_json(setup.grpo, setup, grpo)},
      {"grpo_one_row_per_sample", grpo_json(setup.grpo_one_row, setup, one_row)},
      {"shared_prompt_speedup",
       {{"score", one_row.score / grpo.score},
        {"train", one_row.train / grpo.train},
        {"iteration", one_row.total / grpo.total}}},
      {"ppo_over_grpo",
       {{"generate", ppo.generate / grpo.generate},
        {"score", ppo.score / grpo.score},
        {"train", ppo.train / grpo.train},
        {"iteration", ppo.total / grpo.total}}}};
  std::printf("%s\n", doc.dump(2).c_str());
}

void print_table(const GrpoBenchSetup& setup, const GrpoBenchSeconds& seconds) {
  const IterationSeconds &ppo = seconds.ppo, &grpo = seconds.grpo, &one_row = seconds.grpo_one_row;
  const GrpoBenchOptions& o = setup.o;
  const RlhfStageConfig& c = setup.shapes.rlhf;
  const PpoOptions& p = setup.ppo.options();
  const GrpoOptions& g = setup.grpo.options();
  std::printf(
      "recipe: %s (%.3fM-parameter models, %s), %lld episodes x (%lld prompt + %lld new tokens), "
      "%d threads\n",
      o.recipe.c_str(), setup.shapes.model.parameter_count() / 1e6, p.bf16 ? "bf16" : "fp32",
      (long long)c.batch_size, (long long)o.prompt_tokens, (long long)p.sampling.max_new_tokens,
      torch::get_num_threads());
  std::printf(
      "PPO:  %lld prompts, epochs %lld of minibatch %lld (micro %lld), critic, KL %s beta %g in "
      "the rewards%s\n",
      (long long)c.batch_size, (long long)p.epochs, (long long)p.mini_batch_size,
      (long long)p.micro_batch_size, p.kl_estimator.c_str(), c.beta,
      setup.ppo.side_by_side() ? ", actor and critic side by side" : "");
  std::printf(
      "GRPO: %lld prompts x group %lld, epochs %lld of minibatch %lld (micro %lld), no critic, KL "
      "k3 beta %g in the loss\n",
      (long long)setup.grpo.prompts(), (long long)g.group_size, (long long)g.epochs,
      (long long)g.mini_batch_size, (long long)g.micro_batch_size, g.beta);
  std::printf(
      "seconds per iteration (mean of %d, after %d warm-up; PPO, GRPO, then GRPO with one row per "
      "sample instead of its prompt shared):\n",
      o.iterations, o.warmup);
  std::printf("  %-14s %9s %9s %9s %9s %9s\n", "", "PPO", "GRPO", "PPO/GRPO", "one row", "shared");
  const auto row = [](const char* name, double a, double b, double c) {
    std::printf("  %-14s %9.3f %9.3f %8.2fx %9.3f %8.2fx\n", name, a, b, a / b, c, c / b);
  };
  row("generate", ppo.generate, grpo.generate, one_row.generate);
  row("scoring", ppo.score, grpo.score, one_row.score);
  std::printf("  %-14s %9.3f %9.3f %9s %9.3f\n", "  reward model", ppo.rm, grpo.rm, "", one_row.rm);
  row("training", ppo.train, grpo.train, one_row.train);
  row("total", ppo.total, grpo.total, one_row.total);
}

}  // namespace

void run_grpo(const GrpoBenchOptions& o) {
  check_options(o);
  apply_threads(o.threads);
  const RecipeShapes shapes = read_recipe_shapes(o.recipe, "bench grpo");
  check_fits_context(shapes, o.prompt_tokens, "bench grpo");
  const int64_t batch = shapes.rlhf.batch_size;
  check(batch % o.group == 0, "bench grpo: the recipe's rollout.batch_size " +
                                  std::to_string(batch) + " is not a multiple of --group " +
                                  std::to_string(o.group) +
                                  " (GRPO's episodes are whole groups of one prompt)");

  PpoBenchRun ppo(shapes, o.prompt_tokens, /*sequential=*/false);
  GrpoBenchRun grpo(shapes, o, ppo.options(), /*share_prompts=*/true);
  GrpoBenchRun grpo_one_row(shapes, o, ppo.options(), /*share_prompts=*/false);
  // Each side runs its warm-up and timed iterations together, as its own stage would. Taken in
  // turn iteration by iteration, GRPO's generation paid for the thread pool that PPO's side by
  // side passes rebuild (0.062 against 0.030 s on the quickstart's shapes).
  const auto timed = [&o](auto& run) {
    return mean_iteration([&run](int i) { return run.iterate(i); }, o.warmup, o.iterations);
  };
  GrpoBenchSeconds seconds;
  seconds.ppo = timed(ppo);
  seconds.grpo = timed(grpo);
  seconds.grpo_one_row = timed(grpo_one_row);
  const GrpoBenchSetup setup{o, shapes, ppo, grpo, grpo_one_row};
  if (o.json)
    print_json(setup, seconds);
  else
    print_table(setup, seconds);
}

}  // namespace tiller::bench
