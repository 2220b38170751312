#include <cstdio>
#include <nlohmann/json.hpp>

#include "bench/bench.h"
#include "bench/ppo_setup.h"
#include "common/util/error.h"

namespace tiller::bench {

namespace {

void check_options(const PpoBenchOptions& o) {
  check(!o.recipe.empty(), "bench ppo: --recipe is required");
  check(o.iterations >= 1, "bench ppo: --iterations must be at least 1");
  check(o.warmup >= 0, "bench ppo: --warmup must be >= 0");
  check(o.prompt_tokens >= 1, "bench ppo: --prompt-tokens must be at least 1");
}

// What the report states besides the timings.
struct PpoBenchSetup {
  const PpoBenchOptions& o;
  const ModelConfig& config;
  const RlhfStageConfig& c;
  const PpoOptions& options;
  bool side_by_side;
  const torch::Device& device;
};

void print_json(const PpoBenchSetup& setup, const IterationSeconds& s) {
  const PpoBenchOptions& o = setup.o;
  const RlhfStageConfig& c = setup.c;
  const PpoOptions& options = setup.options;
  const double episodes_per_s = static_cast<double>(c.batch_size) / s.total;
  nlohmann::json doc = {{"bench", "ppo"},
                        {"recipe", o.recipe},
                        {"shape", o.shape.empty() ? "recipe" : o.shape},
                        {"model", model_config_to_hf_json(setup.config)},
                        {"parameters", setup.config.parameter_count()},
                        {"dtype", options.bf16 ? "bf16" : "fp32"},
                        {"device", setup.device.str()},
                        {"device_name", device_name(setup.device)},
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
      "%lld epochs of minibatch %lld, %s%s\n",
      o.recipe.c_str(), setup.config.parameter_count() / 1e6, options.bf16 ? "bf16" : "fp32",
      (long long)setup.c.batch_size, (long long)o.prompt_tokens,
      (long long)options.sampling.max_new_tokens, (long long)options.epochs,
      (long long)options.mini_batch_size,
      setup.device.is_cuda() ? (setup.device.str() + ", " + device_name(setup.device)).c_str()
                             : (std::to_string(torch::get_num_threads()) + " threads").c_str(),
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
  const torch::Device device = bench_device(o.device, "bench ppo");
  apply_threads(o.threads);
  RecipeShapes shapes = read_recipe_shapes(o.recipe, "bench ppo");
  if (!o.shape.empty()) shapes.model = builtin_shape(o.shape);  // an LM, its own vocabulary
  check_fits_context(shapes, o.prompt_tokens, "bench ppo");

  PpoBenchRun run(shapes, o.prompt_tokens, o.sequential, device);
  const IterationSeconds seconds =
      mean_iteration([&run](int i) { return run.iterate(i); }, o.warmup, o.iterations);
  const PpoBenchSetup setup{o,     shapes.model, shapes.rlhf, run.options(), run.side_by_side(),
                            device};
  if (o.json)
    print_json(setup, seconds);
  else
    print_table(setup, seconds);
}

}  // namespace tiller::bench
