// TrainConfig: the "train" object of a stage (steps, batch, optimizer, schedule, precision,
// checkpoints, evaluation), shared by every stage's loop.
#pragma once
#include <nlohmann/json.hpp>

#include <string>

#include "common/recipe/config_reader.h"
#include "common/train/optimizer.h"
#include "common/train/parallel_adamw.h"
#include "common/train/schedule.h"

namespace tiller {

// A train object's data-parallel keys, read and checked: zero_stage (0: replicated AdamW state;
// 1: sharded over the data-parallel ranks) and allreduce_bucket_mb (the gradients' all-reduce
// bucket, MiB). Every stage's train object has them, the rlhf stage's included.
ParallelOptions read_parallel_options(ConfigReader& r);

// The fewest training-loss lines a forecast fits (scaling curve's --min-points default).
constexpr int kMinForecastPoints = 8;

struct TrainConfig {
  int64_t steps = 100;
  int64_t batch_size = 8;        // sequences (rows) per optimizer step
  int64_t micro_batch_size = 8;  // sequences per forward/backward; batch_size must be a multiple
  double lr = 3e-4;
  double min_lr_ratio = 0.1;
  int64_t warmup_steps = 0;
  std::string schedule = "cosine";
  int64_t max_seq_len = 512;
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double grad_clip = 1.0;        // <= 0: no clipping
  int64_t checkpoint_every = 0;  // 0: only at the end
  int64_t keep_checkpoints = 2;
  int64_t eval_every = 0;    // 0: only at the start and the end
  int64_t eval_batches = 0;  // 0: the whole validation set
  int64_t log_every = 1;
  std::string precision = "fp32";  // fp32, bf16, auto
  bool activation_checkpointing = false;
  int64_t max_nonfinite_steps = 5;  // consecutive non-finite steps that stop the run
  double loss_spike_zscore = 0;     // > 0: skip a step whose loss is this many stds above ...
  int64_t loss_spike_window = 50;   // ... the mean of the last this many accepted losses
  // > 0: from this fraction of the steps on, forecast the final loss from the logged training
  // losses (scaling/curve.h's LR-aware law) in the progress line, metrics.jsonl and the summary
  double forecast = 0;
  // With forecast: a directory of finished runs (a sweep's) or one run's metrics.jsonl whose
  // curves, mapped onto this run's, forecast its final loss beside the law (scaling/curve.h)
  std::string forecast_from_runs;
  ParallelOptions parallel;  // zero_stage and allreduce_bucket_mb (read_parallel_options)

  OptimizerOptions optimizer() const { return {lr, weight_decay, beta1, beta2, eps}; }
  ParallelOptions parallel_options() const { return parallel; }
  // The training-loss lines logged after the warmup up to the first forecast (every log_every-th
  // step): what train.forecast's first fit has to go on.
  int64_t forecast_points() const;
  int64_t forecast_step() const;  // the first step at which the final loss is forecast
  ScheduleOptions schedule_options() const {
    return {lr, min_lr_ratio, warmup_steps, steps, schedule};
  }
  // Data parallel: each rank of `data_parallel` takes an equal slice of every global batch of
  // batch_size `unit`s ("rows", "pairs"); returns the slice's size, and says the layout on a
  // group of several ranks. Throws tiller::Error naming the stage when batch_size does not divide.
  int64_t per_rank_batch(const std::string& stage, const dist::Group& data_parallel,
                         const char* unit) const;
  // Why `ranks` data-parallel ranks cannot share batch_size, or "" when they can.
  std::string batch_division_error(int ranks) const;
};

// Reads and checks a "train" object; every mistake goes to `errors` with its path.
TrainConfig parse_train_config(const nlohmann::json& json, const std::string& path,
                               ConfigErrors& errors);

// Every key of a "train" object with the value `config` runs with, defaults included: the
// resolved recipe's train section, which parse_train_config reads back to the same config.
nlohmann::json train_config_values(const TrainConfig& config);

}  // namespace tiller
