#include "common/train/train_config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common/util/error.h"

namespace tiller {

ParallelOptions read_parallel_options(ConfigReader& r) {
  ParallelOptions options;
  const int64_t zero_stage = r.integer("zero_stage", options.zero_stage);
  const double bucket_mb = r.number("allreduce_bucket_mb", 25);
  r.require(zero_stage == 0 || zero_stage == 1, "zero_stage",
            "must be 0 (replicated optimizer state) or 1 (sharded over data-parallel ranks)");
  r.require(bucket_mb > 0 && bucket_mb <= 4096, "allreduce_bucket_mb", "must be in (0, 4096]");
  options.zero_stage = zero_stage == 1 ? 1 : 0;
  if (bucket_mb > 0 && bucket_mb <= 4096)
    options.bucket_bytes = static_cast<int64_t>(bucket_mb * (1 << 20));
  return options;
}

TrainConfig parse_train_config(const nlohmann::json& json, const std::string& path,
                               ConfigErrors& errors) {
  TrainConfig c;
  ConfigReader r(json, path, errors);
  c.steps = r.integer("steps", c.steps);
  c.batch_size = r.integer("batch_size", c.batch_size);
  c.micro_batch_size = r.integer("micro_batch_size", c.batch_size);
  c.lr = r.number("lr", c.lr);
  c.min_lr_ratio = r.number("min_lr_ratio", c.min_lr_ratio);
  c.warmup_steps = r.integer("warmup_steps", c.warmup_steps);
  c.schedule = r.string("schedule", c.schedule);
  c.max_seq_len = r.integer("max_seq_len", c.max_seq_len);
  c.weight_decay = r.number("weight_decay", c.weight_decay);
  c.beta1 = r.number("beta1", c.beta1);
  c.beta2 = r.number("beta2", c.beta2);
  c.eps = r.number("eps", c.eps);
  c.grad_clip = r.number("grad_clip", c.grad_clip);
  c.checkpoint_every = r.integer("checkpoint_every", c.checkpoint_every);
  c.keep_checkpoints = r.integer("keep_checkpoints", c.keep_checkpoints);
  c.eval_every = r.integer("eval_every", c.eval_every);
  c.eval_batches = r.integer("eval_batches", c.eval_batches);
  c.log_every = r.integer("log_every", c.log_every);
  c.precision = r.string("precision", c.precision);
  c.activation_checkpointing = r.boolean("activation_checkpointing", c.activation_checkpointing);
  c.max_nonfinite_steps = r.integer("max_nonfinite_steps", c.max_nonfinite_steps);
  c.loss_spike_zscore = r.number("loss_spike_zscore", c.loss_spike_zscore);
  c.loss_spike_window = r.integer("loss_spike_window", c.loss_spike_window);
  c.forecast = r.number("forecast", c.forecast);
  c.forecast_from_runs = r.string("forecast_from_runs", c.forecast_from_runs);
  c.parallel = read_parallel_options(r);

  r.require(c.steps >= 1, "steps", "must be at least 1");
  r.require(c.batch_size >= 1, "batch_size", "must be at least 1");
  r.require(c.micro_batch_size >= 1, "micro_batch_size", "must be at least 1");
  r.require(c.micro_batch_size < 1 || c.batch_size % c.micro_batch_size == 0, "batch_size",
            "batch_size " + std::to_string(c.batch_size) +
                " is not divisible by micro_batch_size " + std::to_string(c.micro_batch_size));
  r.require(c.lr > 0 && c.lr < 1, "lr", "must be in (0, 1)");
  r.require(c.min_lr_ratio >= 0 && c.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]");
  r.require(c.warmup_steps >= 0, "warmup_steps", "must be >= 0");
  r.one_of("schedule", c.schedule, {"cosine", "linear", "constant"});
  r.require(c.max_seq_len >= 2 && c.max_seq_len <= (1 << 20), "max_seq_len",
            "must be in [2, 1048576]");
  r.require(c.weight_decay >= 0, "weight_decay", "must be >= 0");
  r.require(c.beta1 >= 0 && c.beta1 < 1, "beta1", "must be in [0, 1)");
  r.require(c.beta2 >= 0 && c.beta2 < 1, "beta2", "must be in [0, 1)");
  r.require(c.eps > 0, "eps", "must be positive");
  r.require(c.checkpoint_every >= 0, "checkpoint_every", "must be >= 0");
  r.require(c.keep_checkpoints >= 1, "keep_checkpoints", "must be at least 1");
  r.require(c.eval_every >= 0, "eval_every", "must be >= 0");
  r.require(c.eval_batches >= 0, "eval_batches", "must be >= 0");
  r.require(c.log_every >= 1, "log_every", "must be at least 1");
  r.one_of("precision", c.precision, {"fp32", "bf16", "auto"});
  r.require(c.max_nonfinite_steps >= 1, "max_nonfinite_steps", "must be at least 1");
  r.require(c.loss_spike_zscore >= 0, "loss_spike_zscore", "must be >= 0 (0: off)");
  r.require(c.loss_spike_window >= 2 && c.loss_spike_window <= 100000, "loss_spike_window",
            "must be in [2, 100000]");
  r.require(c.forecast >= 0 && c.forecast < 1, "forecast",
            "must be in [0, 1): the fraction of the steps after which the final loss is forecast "
            "(0: off)");
  r.require(c.forecast_from_runs.empty() || c.forecast > 0, "forecast_from_runs",
            "needs train.forecast (the fraction of the steps after which to forecast)");
  if (c.forecast > 0 && c.forecast < 1 && c.log_every >= 1 && c.steps >= 1)
    r.require(c.forecast_points() >= kMinForecastPoints, "forecast",
              "the forecast at step " + std::to_string(c.forecast_step()) + " would fit only " +
                  std::to_string(c.forecast_points()) +
                  " training-loss lines logged after the warmup (needs " +
                  std::to_string(kMinForecastPoints) +
                  "): lower log_every or warmup_steps, or raise forecast");
  return c;
}

nlohmann::json train_config_values(const TrainConfig& c) {
  return {{"steps", c.steps},
          {"batch_size", c.batch_size},
          {"micro_batch_size", c.micro_batch_size},
          {"lr", c.lr},
          {"min_lr_ratio", c.min_lr_ratio},
          {"warmup_steps", c.warmup_steps},
          {"schedule", c.schedule},
          {"max_seq_len", c.max_seq_len},
          {"weight_decay", c.weight_decay},
          {"beta1", c.beta1},
          {"beta2", c.beta2},
          {"eps", c.eps},
          {"grad_clip", c.grad_clip},
          {"checkpoint_every", c.checkpoint_every},
          {"keep_checkpoints", c.keep_checkpoints},
          {"eval_every", c.eval_every},
          {"eval_batches", c.eval_batches},
          {"log_every", c.log_every},
          {"precision", c.precision},
          {"activation_checkpointing", c.activation_checkpointing},
          {"max_nonfinite_steps", c.max_nonfinite_steps},
          {"loss_spike_zscore", c.loss_spike_zscore},
          {"loss_spike_window", c.loss_spike_window},
          {"forecast", c.forecast},
          {"forecast_from_runs", c.forecast_from_runs},
          {"zero_stage", c.parallel.zero_stage},
          {"allreduce_bucket_mb", static_cast<double>(c.parallel.bucket_bytes) / (1 << 20)}};
}

int64_t TrainConfig::forecast_step() const {
  return static_cast<int64_t>(std::ceil(forecast * static_cast<double>(steps)));
}

int64_t TrainConfig::forecast_points() const {
  // Lines are logged at multiples of log_every; the loss of step s was measured after s - 1
  // updates, and the fit starts after the warmup's updates.
  const int64_t last = forecast_step() / log_every, first = (warmup_steps + 1) / log_every;
  return std::max<int64_t>(0, last - first);
}

std::string TrainConfig::batch_division_error(int ranks) const {
  if (batch_size % ranks == 0) return "";
  return "train.batch_size " + std::to_string(batch_size) + " does not divide among " +
         std::to_string(ranks) + " data-parallel ranks";
}

int64_t TrainConfig::per_rank_batch(const std::string& stage, const dist::Group& data_parallel,
                                    const char* unit) const {
  const std::string error = batch_division_error(data_parallel.size());
  check(error.empty(), "stage " + stage + ": " + error);
  const int64_t local = batch_size / data_parallel.size();
  if (!data_parallel.single())
    std::printf("[%s] data parallel: %d ranks x %lld %s = global batch %lld %s%s\n", stage.c_str(),
                data_parallel.size(), (long long)local, unit, (long long)batch_size, unit,
                parallel.zero_stage == 1 ? ", optimizer state sharded (ZeRO-1)" : "");
  return local;
}

}  // namespace tiller
