#include "common/train/stage_loop.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "common/dist/interrupt.h"
#include "common/dist/process_group.h"
#include "common/recipe/stage_io.h"
#include "common/util/error.h"
#include "common/util/jsonl.h"

namespace tiller {

namespace {

// A crash at a known point, for resume tests: TILLER_CRASH_AFTER_STEP=STAGE:STEP ends the
// process with SIGKILL once STAGE's step STEP is done (its metrics line written) and before that
// step's checkpoint, as a crash there would; a test then kills at a step it names instead of
// racing a timer against the run.
void crash_if_asked(const std::string& stage, int64_t step) {
  const char* asked = std::getenv("TILLER_CRASH_AFTER_STEP");
  if (asked == nullptr || stage + ":" + std::to_string(step) != asked) return;
  std::printf("[%s] TILLER_CRASH_AFTER_STEP: killed after step %lld\n", stage.c_str(),
              (long long)step);
  std::fflush(nullptr);
  ::kill(::getpid(), SIGKILL);
}

// Runs one step or evaluation of a stage; running out of device memory there is one line that
// names the stage, the step and what to lower, instead of LibTorch's allocator report.
template <typename Run>
StepReport within_memory(const std::string& stage, const std::string& what, const Run& run) {
  try {
    return run();
  } catch (const c10::OutOfMemoryError& e) {
    const std::string cause = e.what_without_backtrace();
    throw Error("stage '" + stage + "', " + what + ": out of device memory (" +
                cause.substr(0, cause.find('\n')) +
                "); lower the stage's micro-batch (train.micro_batch_size, which keeps the batch "
                "through accumulation, or the PPO/GRPO stage's mini-batch), its sequence length "
                "(train.max_seq_len), or train.precision=bf16");
  }
}

}  // namespace

LoopSchedule loop_schedule(const TrainConfig& train) {
  LoopSchedule schedule;
  schedule.steps = train.steps;
  schedule.log_every = train.log_every;
  schedule.eval_every = train.eval_every;
  schedule.checkpoint_every = train.checkpoint_every;
  schedule.keep_checkpoints = train.keep_checkpoints;
  schedule.max_nonfinite_steps = train.max_nonfinite_steps;
  schedule.loss_spike_zscore = train.loss_spike_zscore;
  schedule.loss_spike_window = train.loss_spike_window;
  if (train.forecast > 0) {
    // About twenty forecasts a run, each at a logged step.
    const int64_t period = std::max<int64_t>(1, train.steps / 20);
    schedule.forecast_every = (period + train.log_every - 1) / train.log_every * train.log_every;
    schedule.forecast_from =
        std::max<int64_t>(1, (train.forecast_step() + train.log_every - 1) / train.log_every) *
        train.log_every;
  }
  return schedule;
}

StageLoop::StageLoop(const Recipe& recipe, std::string name, LoopSchedule schedule,
                     LossForecaster forecaster)
    : recipe_(recipe),
      name_(std::move(name)),
      stage_dir_(recipe.stage_dir(name_)),
      checkpoints_(stage_dir_ + "/checkpoints"),
      schedule_(schedule),
      guard_(name_, checkpoints_, schedule.max_nonfinite_steps),
      forecaster_(std::move(forecaster)) {
  guard_.set_spike_filter(schedule.loss_spike_zscore, schedule.loss_spike_window);
  torch::manual_seed(recipe.run.seed);
}

std::string StageLoop::final_dir() const {
  return stage_output_dir(recipe_, name_);
}

void StageLoop::resume(CheckpointParts parts,
                       const std::function<void(const nlohmann::json& state)>& restore) {
  parts_ = std::move(parts);
  const nlohmann::json state = load_latest_checkpoint(checkpoints_, parts_);
  if (!state.is_null()) {
    step_ = state.at("step").get<int64_t>();
    guard_.restore(state);
    if (restore) restore(state);
    std::printf("[%s] resumed from %s/step-%lld\n", name_.c_str(), checkpoints_.c_str(),
                (long long)step_);
  }
  // Step step_'s record was logged before its checkpoint: lines after it are a killed attempt's.
  first_unlogged_ = state.is_null() ? 0 : step_ + 1;
  metrics_ = std::make_unique<MetricsLog>(stage_dir_, first_unlogged_);
  progress_ = std::make_unique<Progress>(step_, schedule_.steps);
}

void StageLoop::save(const StageSteps& steps) const {
  nlohmann::json state = {{"step", step_}};
  if (steps.state) state.update(steps.state());
  state.update(guard_.to_json());
  save_checkpoint(checkpoints_, parts_, state, schedule_.keep_checkpoints);
}

void StageLoop::evaluate_at_start(const StageSteps& steps) {
  const StepReport report =
      within_memory(name_, "the evaluation before step 1", [&] { return steps.evaluate(0); });
  if (!report.record.empty()) {
    nlohmann::json record = report.record;
    record["step"] = 0;
    metrics_->log(record);
  }
  if (report.shown.empty()) return;
  std::string line = "step 0/" + std::to_string(schedule_.steps);
  for (const auto& [label, value] : report.shown) {
    char figure[64];
    std::snprintf(figure, sizeof figure, "  %s %.4f", label.c_str(), value);
    line += figure;
  }
  std::printf("[%s] %s\n", name_.c_str(), line.c_str());
}

namespace {

// The first forecast metrics.jsonl holds (the one made at train.forecast's fraction, however often
// the stage was resumed): {"at_step", "forecast_loss", ...}, or {"at_step", "forecast_error"}
// when that fit failed; null when none was made.
nlohmann::json first_forecast(const std::string& metrics_path) {
  nlohmann::json first;
  for_each_jsonl_object(metrics_path, [&](const nlohmann::json& record, int64_t) {
    if (!first.is_null() ||
        !(record.contains("forecast_loss") || record.contains("forecast_error")))
      return;
    first = {{"at_step", record.value("step", int64_t{0})}};
    // Every field add_forecast wrote.
    for (const auto& [key, value] : record.items())
      if (key.rfind("forecast_", 0) == 0) first[key] = value;
  });
  return first;
}

}  // namespace

bool StageLoop::forecasts_at(int64_t step) const {
  if (!forecaster_ || schedule_.forecast_from <= 0 || step < schedule_.forecast_from) return false;
  return step == schedule_.forecast_from || step == schedule_.steps ||
         (schedule_.forecast_every > 0 && step % schedule_.forecast_every == 0);
}

// Adds the forecast's fields to `record`; returns its part of the progress line.
std::string StageLoop::add_forecast(nlohmann::json& record) {
  const std::optional<LossForecast> f = forecaster_(stage_dir_ + "/metrics.jsonl", record);
  if (!f) return "";
  if (!f->error.empty() || !std::isfinite(f->loss)) {
    // Training goes on without the forecast, but says so each time one was due.
    const std::string why = f->error.empty() ? "the fit gave no finite loss" : f->error;
    record["forecast_error"] = why;
    return "  forecast failed: " + why;
  }
  record["forecast_loss"] = f->loss;
  if (std::isfinite(f->low) && std::isfinite(f->high)) {
    record["forecast_loss_low"] = f->low;
    record["forecast_loss_high"] = f->high;
  }
  if (std::isfinite(f->power_law_loss)) record["forecast_power_law_loss"] = f->power_law_loss;
  if (std::isfinite(f->val_loss)) record["forecast_val_loss"] = f->val_loss;
  record["forecast_determined"] = f->determined ? 1 : 0;
  char text[160];
  if (std::isfinite(f->low) && std::isfinite(f->high))
    std::snprintf(text, sizeof text, "  forecast %.4f [%.4f, %.4f]%s", f->loss, f->low, f->high,
                  f->determined ? "" : " (not determined)");
  else
    std::snprintf(text, sizeof text, "  forecast %.4f%s", f->loss,
                  f->determined ? "" : " (not determined)");
  std::string line = text;
  if (std::isfinite(f->from_runs_loss)) {
    record["forecast_from_runs_loss"] = f->from_runs_loss;
    record["forecast_from_runs_low"] = f->from_runs_low;
    record["forecast_from_runs_high"] = f->from_runs_high;
    if (std::isfinite(f->from_runs_val_loss))
      record["forecast_from_runs_val_loss"] = f->from_runs_val_loss;
    std::snprintf(text, sizeof text, ", from runs %.4f [%.4f, %.4f]", f->from_runs_loss,
                  f->from_runs_low, f->from_runs_high);
    line += text;
  }
  return line;
}

void StageLoop::log(int64_t step, const StepReport& report) {
  const double tokens_per_s = report.record.value("tokens_per_s", 0.0);
  nlohmann::json record = report.record;
  record["step"] = step;
  // The file is rank 0's: the other ranks neither read it nor forecast.
  const std::string forecast = dist::is_main() && forecasts_at(step) ? add_forecast(record) : "";
  metrics_->log(record);
  std::printf("[%s] %s%s\n", name_.c_str(),
              progress_->line(step, report.shown, tokens_per_s).c_str(), forecast.c_str());
  std::fflush(stdout);
}

void StageLoop::run(const StageSteps& steps) {
  check(metrics_ != nullptr, "StageLoop::run: resume() first");
  check(static_cast<bool>(steps.step), "StageLoop::run: a stage needs a step");
  if (step_ == 0 && steps.evaluate) evaluate_at_start(steps);
  while (step_ < schedule_.steps) {
    const int64_t next = step_ + 1;
    const bool evaluate =
        steps.evaluate &&
        ((schedule_.eval_every > 0 && next % schedule_.eval_every == 0) || next == schedule_.steps);
    const auto started = std::chrono::steady_clock::now();
    StepReport report = within_memory(name_, "step " + std::to_string(next), [&] {
      return steps.step(StepContext{step_, evaluate, guard_});
    });
    const double seconds =
        report.seconds > 0
            ? report.seconds
            : std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    report.record["tokens_per_s"] = report.tokens / std::max(seconds, 1e-9);
    report.record["skipped_steps"] = guard_.skipped();
    report.record["spike_skipped_steps"] = guard_.spikes_skipped();
    step_ = next;
    if (evaluate) {
      const StepReport evaluation =
          within_memory(name_, "the evaluation after step " + std::to_string(step_),
                        [&] { return steps.evaluate(step_); });
      report.record.update(evaluation.record);
      for (const auto& [label, value] : evaluation.shown) report.shown[label] = value;
    }
    if (step_ % schedule_.log_every == 0 || step_ == schedule_.steps || evaluate)
      log(step_, report);
    crash_if_asked(name_, step_);
    const bool save_now =
        (schedule_.checkpoint_every > 0 && step_ % schedule_.checkpoint_every == 0) ||
        step_ == schedule_.steps;
    if (save_now) save(steps);
    stop_if_interrupted(name_, step_, save_now, [&] { save(steps); });
  }
}

void StageLoop::report_optimizer_state(const ParallelAdamW& optimizer,
                                       nlohmann::json& summary) const {
  summary["optimizer_state_bytes_per_rank"] = optimizer.state_bytes_per_rank();
  std::printf("[%s] %s\n", name_.c_str(), optimizer.describe_state_per_rank().c_str());
}

nlohmann::json StageLoop::finish(
    nlohmann::json summary, const std::function<void(const std::string& final_dir)>& save_final) {
  summary["stage"] = name_;
  if (forecaster_ && dist::is_main()) {
    const nlohmann::json first = first_forecast(stage_dir_ + "/metrics.jsonl");
    if (!first.is_null()) summary["forecast"] = first;
  }
  for (const auto& entry : recipe_.stages)
    if (entry.name == name_ && !entry.type.empty()) summary["type"] = entry.type;
  const std::string final = final_dir();
  save_final(final);
  if (dist::is_main()) mark_stage_complete(recipe_, name_, summary);
  dist::world().barrier();  // the next stage, on every rank, reads what rank 0 wrote
  std::printf("[%s] done: %s\n", name_.c_str(), final.c_str());
  return summary;
}

double apply_update(ParallelAdamW& optimizer, NonFiniteGuard& guard, double loss, double grad_clip,
                    int64_t step) {
  const double grad_norm = optimizer.reduce_gradients_and_clip(grad_clip);
  if (guard.accept(loss, grad_norm, step))
    optimizer.step();
  else
    optimizer.zero_grad();
  return grad_norm;
}

double set_scheduled_learning_rate(ParallelAdamW& optimizer, const ScheduleOptions& schedule,
                                   int64_t step) {
  const double lr = learning_rate(schedule, step);
  optimizer.set_learning_rate(lr);
  return lr;
}

void require_no_tensor_parallel(const Recipe& recipe, const std::string& stage,
                                const std::string& kind) {
  check(recipe.run.tensor_parallel == 1, "stage " + stage + ": " + kind +
                                             " stages do not support run.tensor_parallel " +
                                             std::to_string(recipe.run.tensor_parallel) +
                                             " yet; run them with run.tensor_parallel=1");
}

}  // namespace tiller
