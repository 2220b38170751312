// StageLoop: the one training loop every stage runs on. A stage is a thin driver: it builds its
// components, hands the loop the callbacks below, and writes its summary; the loop does the rest.
//
//   StageLoop loop(recipe, config.name, loop_schedule(config.train));  // seeds torch
//   ... build the model, the data, the optimizers (the stage's set-up) ...
//   loop.resume({{{"model", model.get()}}, {{"optimizer", &optimizer}}},
//               [&](const nlohmann::json& state) { ... the stage's own resume state ... });
//   StageSteps steps;  // steps.step = ..., steps.evaluate = ..., steps.state = ...
//   loop.run(steps);
//   loop.finish(summary, [&](const std::string& final_dir) { ... save the model ... });
//
// What the loop owns, so that no stage writes it again:
// - seeding (torch::manual_seed(run.seed) in the constructor, before the stage builds anything);
// - checkpoints: every checkpoint_every steps and at the end, the parts given to resume() plus the
//   state {"step", the guard's counters, what StageSteps::state adds}; keep_checkpoints of them;
//   exact resume from the latest one (resume()), the metrics lines of a killed attempt dropped;
// - RUN_DIR/<stage>/metrics.jsonl, its TensorBoard events and the progress line on stdout;
// - the NonFiniteGuard (non-finite steps and loss spikes; the stage asks it through apply_update
//   or its own trainer, the loop checkpoints and restores it);
// - SIGINT/SIGTERM: after each step, a checkpoint and Interrupted (stop_if_interrupted);
// - for resume tests, a crash at a named step: TILLER_CRASH_AFTER_STEP=STAGE:STEP (SIGKILL after
//   the step's metrics line, before its checkpoint);
// - the end: RUN_DIR/<stage>/final/ through the stage's save callback, complete.json with the
//   summary (plus "stage" and "type") and its fingerprint, then the barrier between ranks.
//
// PPO fits as it is: one "step" is one iteration (rollout, score, learn); the KL coefficient and
// the prompt position go into StageSteps::state and come back through resume()'s restore; the
// initial evaluation is evaluate(0), logged at step 0; files such as samples.jsonl are cut back
// to first_unlogged() after resume(), as metrics.jsonl is.
#pragma once
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "common/recipe/recipe.h"
#include "common/train/checkpoint.h"
#include "common/train/metrics.h"
#include "common/train/nonfinite_guard.h"
#include "common/train/parallel_adamw.h"
#include "common/train/schedule.h"
#include "common/train/train_config.h"

namespace tiller {

// When the loop logs, evaluates and checkpoints, and when its guard stops the stage.
struct LoopSchedule {
  int64_t steps = 100;           // steps to train (PPO: iterations)
  int64_t log_every = 1;         // metrics line and progress line (also at every evaluation)
  int64_t eval_every = 0;        // 0: at step 0 and at the end only
  int64_t checkpoint_every = 0;  // 0: at the end only
  int64_t keep_checkpoints = 2;
  int64_t max_nonfinite_steps = 5;  // skipped updates in a row that stop the stage
  double loss_spike_zscore = 0;     // > 0: skip updates whose loss spikes (NonFiniteGuard)
  int64_t loss_spike_window = 50;
  // train.forecast: the first step (0: no forecast) and the period (a multiple of log_every) of
  // the logged steps that forecast the final loss, which the last step always does
  int64_t forecast_from = 0, forecast_every = 0;
};

// A forecast of a stage's final loss (train.forecast), made at a logged step.
struct LossForecast {
  double loss = NAN, low = NAN, high = NAN;  // the final training loss, its 95% interval
  double power_law_loss = NAN;               // the schedule-unaware power law's, for comparison
  double val_loss = NAN;   // the final validation loss (NaN before a validation loss is logged)
  bool determined = true;  // false: the fitted points do not pin the annealing term
  // From finished runs (train.forecast_from_runs; NaN without): the best-fitting run's final
  // loss mapped onto this run, the range of those fitting about as well, its final val_loss
  double from_runs_loss = NAN, from_runs_low = NAN, from_runs_high = NAN;
  double from_runs_val_loss = NAN;
  std::string error;  // set when the fit failed: no forecast, and this says why
};

// Forecasts from the lines of `metrics_path` before the record's step plus `record` (the step
// being logged); nullopt while too few points are logged, a LossForecast with its `error` set
// when the fit fails. scaling/curve.h's live_loss_forecaster is the one Tiller uses.
using LossForecaster = std::function<std::optional<LossForecast>(const std::string& metrics_path,
                                                                 const nlohmann::json& record)>;

// The schedule a stage's "train" object states.
LoopSchedule loop_schedule(const TrainConfig& train);

// What a step or an evaluation reports.
struct StepReport {
  // metrics.jsonl fields; after a step the loop adds "step", "tokens_per_s", "skipped_steps" and
  // "spike_skipped_steps" (the guard's counts)
  nlohmann::json record = nlohmann::json::object();
  std::map<std::string, double> shown;  // figures for the progress line
  double tokens = 0;   // tokens the step processed, every rank's: tokens_per_s in the record
  double seconds = 0;  // the step's duration for tokens_per_s; 0: as the loop timed it
};

// What the loop tells a step.
struct StepContext {
  int64_t step;           // steps done before this one: this step's record is logged as step + 1
  bool evaluates_after;   // the loop evaluates once this step returns
  NonFiniteGuard& guard;  // the stage's guard: refused updates are skipped and counted
};

// The stage's callbacks. `step` is required; the others may be left empty.
struct StageSteps {
  // One optimizer step (PPO: one iteration), the step's metrics record and progress figures.
  std::function<StepReport(const StepContext&)> step;
  // An evaluation at `step` (0: before training). Its record is merged into the step's (at step
  // 0 it is logged alone) and its shown figures join the progress line. Empty: no evaluation.
  std::function<StepReport(int64_t step)> evaluate;
  // The stage's own checkpoint state (data position, KL coefficient, ...), merged into the
  // checkpoint's state.json; resume()'s `restore` gets it back.
  std::function<nlohmann::json()> state;
};

class StageLoop {
 public:
  // Seeds torch with the run's seed. `name` is the stage's name in `recipe`. `forecaster` is
  // asked at the steps schedule.forecast_from/forecast_every name.
  StageLoop(const Recipe& recipe, std::string name, LoopSchedule schedule,
            LossForecaster forecaster = {});

  // After set-up: `parts` are the modules and optimizers every checkpoint holds. Loads the latest
  // checkpoint into them when there is one, restores the guard and calls `restore` with the
  // checkpoint's state; opens metrics.jsonl (cut back to first_unlogged()).
  void resume(CheckpointParts parts,
              const std::function<void(const nlohmann::json& state)>& restore = {});

  // Evaluates at step 0 (a fresh start), then runs steps until schedule.steps, logging,
  // evaluating, checkpointing and stopping on an interrupt as the schedule says.
  void run(const StageSteps& steps);

  // Saves final/ through `save_final` (called on every rank: it may gather; it writes files on
  // dist::is_main() only), writes complete.json with `summary` and waits for every rank.
  // Returns the summary as written (with "stage" and "type").
  nlohmann::json finish(nlohmann::json summary,
                        const std::function<void(const std::string& final_dir)>& save_final);

  // The optimizer's state per rank: said on stdout and added to the summary.
  void report_optimizer_state(const ParallelAdamW& optimizer, nlohmann::json& summary) const;

  const std::string& name() const { return name_; }
  const std::string& stage_dir() const { return stage_dir_; }  // RUN_DIR/<name>
  std::string final_dir() const;                               // RUN_DIR/<name>/final
  torch::Device device() const { return torch::Device(recipe_.run.device); }
  uint64_t seed() const { return recipe_.run.seed; }
  int64_t step() const { return step_; }  // steps done
  // The first step not logged yet: lines from it on, in any per-step log, are a killed attempt's.
  int64_t first_unlogged() const { return first_unlogged_; }
  NonFiniteGuard& guard() { return guard_; }

 private:
  void save(const StageSteps& steps) const;
  void evaluate_at_start(const StageSteps& steps);
  void log(int64_t step, const StepReport& report);
  bool forecasts_at(int64_t step) const;
  std::string add_forecast(nlohmann::json& record);

  const Recipe& recipe_;
  std::string name_, stage_dir_, checkpoints_;
  LoopSchedule schedule_;
  NonFiniteGuard guard_;
  CheckpointParts parts_;
  int64_t step_ = 0, first_unlogged_ = 0;
  std::unique_ptr<MetricsLog> metrics_;
  std::unique_ptr<Progress> progress_;
  LossForecaster forecaster_;
};

// The usual end of a step: reduces the gradients over the data-parallel ranks and clips them at
// `grad_clip` (<= 0: no clipping), then applies the update when the guard accepts `loss` and the
// norm, or drops the gradients when it refuses them. `step` is the step's number (from 1).
// Returns the gradient norm.
double apply_update(ParallelAdamW& optimizer, NonFiniteGuard& guard, double loss, double grad_clip,
                    int64_t step);

// Sets the optimizer's learning rate for `step` (counted from 0) by the schedule; returns it.
double set_scheduled_learning_rate(ParallelAdamW& optimizer, const ScheduleOptions& schedule,
                                   int64_t step);

// Throws tiller::Error naming the stage when the recipe asks for tensor parallelism, which
// `kind` stages ("reward", "PPO") do not support yet.
void require_no_tensor_parallel(const Recipe& recipe, const std::string& stage,
                                const std::string& kind);

}  // namespace tiller
