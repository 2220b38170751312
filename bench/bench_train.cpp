#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "bench/bench.h"
#include "common/io/hf_dir.h"
#include "common/torch_compat.h"
#include "common/train/lm_loss.h"
#include "common/train/optimizer.h"
#include "common/train/precision.h"
#include "common/util/error.h"

namespace tiller::bench {

namespace {

// The model of --model, or --shape's with fixed random weights, and its name in the output.
std::pair<Transformer, std::string> train_model(const TrainOptions& o) {
  if (!o.model_dir.empty()) return {load_hf_model(o.model_dir), o.model_dir};
  Transformer model(builtin_shape(o.shape));
  model->init_weights(1234);
  return {model, o.shape};
}

// One packed-row batch of random tokens: every row a single example, every position a target.
// On the device already, as the stages' prefetched batches are.
TokenBatch random_batch(const ModelConfig& config, const TrainOptions& o,
                        const torch::Device& device) {
  torch::manual_seed(1);
  TokenBatch batch;
  batch.input_ids = torch::randint(config.vocab_size, {o.batch, o.seq}, torch::kLong).to(device);
  batch.targets = torch::randint(config.vocab_size, {o.batch, o.seq}, torch::kLong).to(device);
  batch.segment_ids = torch::zeros({o.batch, o.seq}, torch::kLong).to(device);
  batch.target_count = o.batch * o.seq;
  return batch;
}

struct StepSplit {
  double forward = 0, backward = 0, optimizer = 0;
  double total() const { return forward + backward + optimizer; }
};

// The step of the SFT stage, each part timed: forward under autocast, backward, clip, AdamW.
StepSplit timed_step(TransformerImpl& model, torch::optim::Optimizer& optimizer,
                     const std::vector<torch::Tensor>& params, const TokenBatch& batch, bool bf16,
                     const torch::Device& device) {
  StepSplit s;
  optimizer.zero_grad();
  synchronize(device);
  Stopwatch forward;
  torch::Tensor loss;
  {
    compat::AutocastGuard cast(bf16, device);
    loss = lm_loss_sum(model, batch) / static_cast<double>(batch.target_count);
  }
  synchronize(device);
  s.forward = forward.seconds();
  Stopwatch backward;
  loss.backward();
  synchronize(device);
  s.backward = backward.seconds();
  Stopwatch update;
  torch::nn::utils::clip_grad_norm_(params, 1.0);
  optimizer.step();
  synchronize(device);
  s.optimizer = update.seconds();
  return s;
}

// What the step's rate is a fraction of: on a GPU the published dense peak of its model (MFU as
// usually stated), else (or where the model is not listed) the measured matmul rate.
struct TrainPeak {
  double gflops = 0, measured_gflops = 0;
  std::string source, device_name;
};

TrainPeak train_peak(double measured_gflops, int64_t size, bool bf16, const std::string& dtype,
                     const torch::Device& device) {
  TrainPeak peak;
  peak.measured_gflops = measured_gflops;
  peak.device_name = device_name(device);
  const GpuPeak published = device.is_cuda() ? published_peak(peak.device_name) : GpuPeak{};
  const double published_gflops = 1e3 * (bf16 ? published.bf16_tflops : published.fp32_tflops);
  peak.gflops = published_gflops > 0 ? published_gflops : measured_gflops;
  peak.source =
      published_gflops > 0
          ? "published: " + published.source + " (" + peak.device_name + ")"
          : "measured: torch::mm " + std::to_string(size) + " " + dtype + " on " + peak.device_name;
  return peak;
}

void print_train(const TrainOptions& o, const std::string& label, const ModelConfig& config,
                 const torch::Device& device, const StepSplit& best, const TrainPeak& peak) {
  const double tokens = static_cast<double>(o.batch * o.seq);
  // 6 FLOPs per matmul parameter and token (forward 2, backward 4), and attention's scores and
  // weighted values: 2 matmuls x 2 FLOPs x 3 (forward + backward) x layers x width x sequence.
  const double flops_per_token =
      6.0 * static_cast<double>(matmul_parameters(config)) +
      12.0 * static_cast<double>(config.num_hidden_layers * config.hidden_size * o.seq);
  const double tokens_per_s = tokens / best.total();
  const double gflops = flops_per_token * tokens_per_s / 1e9;
  if (o.json) {
    nlohmann::json doc = {{"bench", "train"},
                          {"shape", label},
                          {"parameters", config.parameter_count()},
                          {"dtype", o.dtype},
                          {"device", device.str()},
                          {"device_name", peak.device_name},
                          {"threads", torch::get_num_threads()},
                          {"batch", o.batch},
                          {"seq", o.seq},
                          {"steps", o.steps},
                          {"step_s", best.total()},
                          {"forward_s", best.forward},
                          {"backward_s", best.backward},
                          {"optimizer_s", best.optimizer},
                          {"tokens_per_s", tokens_per_s},
                          {"flops_per_token", flops_per_token},
                          {"gflops", gflops},
                          {"peak_gflops", peak.gflops},
                          {"peak_source", peak.source},
                          {"measured_matmul_gflops", peak.measured_gflops},
                          {"fraction_of_peak", gflops / peak.gflops}};
    std::printf("%s\n", doc.dump(2).c_str());
    return;
  }
  const std::string where = device.is_cuda()
                                ? device.str() + ", " + peak.device_name
                                : std::to_string(torch::get_num_threads()) + " threads";
  std::printf("model: %s (%.2fM parameters), %s, batch %lld x %lld tokens, %s\n", label.c_str(),
              config.parameter_count() / 1e6, o.dtype.c_str(), (long long)o.batch, (long long)o.seq,
              where.c_str());
  std::printf("step      %8.3f s  (forward %.3f, backward %.3f, optimizer %.3f; best of %d)\n",
              best.total(), best.forward, best.backward, best.optimizer, o.steps);
  std::printf("tokens/s  %8.0f\n", tokens_per_s);
  std::printf("GFLOP/s   %8.1f  (%.3g GFLOP per token x tokens/s)\n", gflops,
              flops_per_token / 1e9);
  std::printf("of peak   %7.1f%%  (%s peak %.1f GFLOP/s, %s)\n", 100.0 * gflops / peak.gflops,
              o.dtype.c_str(), peak.gflops, peak.source.c_str());
}

}  // namespace

void run_train(const TrainOptions& o) {
  check(o.batch >= 1, "bench train: --batch must be at least 1");
  check(o.seq >= 2, "bench train: --seq must be at least 2");
  check(o.steps >= 1, "bench train: --steps must be at least 1");
  check_dtype(o.dtype, "bench train");
  const torch::Device device = bench_device(o.device, "bench train");
  const bool bf16 = use_bf16(o.dtype, device);  // an Error where the CPU has no fast bf16
  apply_threads(o.threads);
  auto [model, label] = train_model(o);  // not captured below: clang refuses that
  const ModelConfig& config = model->config;
  check(o.seq <= config.max_position_embeddings,
        "bench train: --seq " + std::to_string(o.seq) + " exceeds the context of " + label + " (" +
            std::to_string(config.max_position_embeddings) + ")");
  model->train();
  model->to(device);  // before the optimizer: its moments are made beside the parameters
  auto optimizer = make_adamw(*model, {});
  const auto params = model->parameters();
  const TokenBatch batch = random_batch(config, o, device);
  TransformerImpl& trained = *model;
  const auto step = [&] { return timed_step(trained, *optimizer, params, batch, bf16, device); };

  step();  // warm-up: the allocator's pools, oneDNN's or cuBLAS's kernels, AdamW's state
  // The ceiling is measured between the steps and after them, in the same process and threads,
  // and its best counts as the steps' best does: on a shared machine whose speed drifts by a
  // fifth from minute to minute, a peak taken at one moment made the fraction swing by as much.
  // A GPU's matmul is measured at 8192, where cuBLAS reaches its rate (2048 is launch-bound).
  const int64_t peak_size = device.is_cuda() ? 8192 : 2048;
  double measured_gflops = 0;
  StepSplit best;
  for (int i = 0; i < o.steps; ++i) {
    const StepSplit s = step();
    if (i == 0 || s.total() < best.total()) best = s;
    measured_gflops = std::max(measured_gflops, measure_matmul_gflops(peak_size, bf16, 1, device));
  }
  measured_gflops = std::max(measured_gflops, measure_matmul_gflops(peak_size, bf16, 3, device));
  print_train(o, label, config, device, best,
              train_peak(measured_gflops, peak_size, bf16, o.dtype, device));
}

}  // namespace tiller::bench
