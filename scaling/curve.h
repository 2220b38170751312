// Learning-curve forecasting: fit a stage's early training loss and forecast its final loss.
//
// The schedule-aware law is Tissue et al. 2024, "Scaling Law with Learning Rate Annealing"
// (arXiv 2408.11029): L(s) = L0 + A * S1(s)^(-alpha) - C * S2(s), where S1 (the forward area) is
// the sum of the learning rates of the updates so far and S2 (the annealing area) the sum of
// momentum-accumulated learning-rate decreases, m_i = lambda * m_{i-1} + (eta_{i-1} - eta_i),
// S2 = sum_i m_i. The whole schedule is known from the recipe, so S1 and S2 at the last step are
// computed, not extrapolated. Beside it, a schedule-unaware baseline L(s) = L0 + A * s^(-alpha).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/recipe/stage_registry.h"
#include "common/train/schedule.h"
#include "common/train/stage_loop.h"
#include "common/train/train_config.h"
#include "common/util/error.h"
#include "scaling/bootstrap.h"

namespace tiller::scaling {

// One logged training loss: the metrics line of `step` (1-based), whose loss was measured on the
// model after step - 1 updates.
struct CurvePoint {
  int64_t step = 0;
  double loss = 0;
  double lr = 0;
};

// A logged validation loss, measured after `step` updates.
struct ValPoint {
  int64_t step = 0;
  double val_loss = 0;
};

// What a metrics.jsonl holds: the training-loss points, the validation losses, and the last
// step's val_loss when logged.
struct CurveLog {
  std::vector<CurvePoint> points;
  std::vector<ValPoint> val_points;
  int64_t last_step = 0;
  double final_val_loss = NAN;
};

// Reads metrics.jsonl; errors (one line naming the file) when it is missing, holds no loss, or a
// line with a loss has no lr.
CurveLog read_curve_log(const std::string& metrics_path);

// Adds one metrics record (a line of metrics.jsonl) to `log`, as read_curve_log reads each line:
// a later record of the same step replaces an earlier one.
void add_curve_record(CurveLog& log, const nlohmann::json& record, const std::string& where);

// The schedule of stage `stage` in a resolved recipe (RUN_DIR/recipe.json); missing fields take
// TrainConfig's defaults.
ScheduleOptions schedule_from_recipe(const std::string& recipe_path, const std::string& stage);

// S1 and S2 after u updates, u = 0..total_steps (index u). The annealing sum starts after the
// warmup (the warmup's increases are not annealing).
struct LrAreas {
  std::vector<double> s1, s2;
};
LrAreas lr_areas(const ScheduleOptions& schedule, double lambda);

// L0 + A x^(-alpha) - C s2; the power law has C = 0.
struct CurveLaw {
  double L0 = NAN, A = NAN, alpha = NAN, C = 0;
  double loss(double x, double s2) const;
};

// forecast_curve's error when fewer than CurveOptions::min_points lines are logged after the
// warmup up to the cut: the live forecaster waits for more, where any other error is reported.
class TooFewCurvePoints : public Error {
 public:
  using Error::Error;
};

struct CurveOptions {
  int64_t at_step = 0;         // fit the points up to this step (0: at_fraction of the run)
  double at_fraction = 0.3;    // of the run's steps
  double lambda = 0.999;       // the annealing momentum's decay factor (Tissue et al.)
  double huber_delta = 0.01;   // on the relative residual model / loss - 1
  bool skip_warmup = true;     // fit only points after the warmup
  double final_window = 0.05;  // the actual final loss: the mean over this fraction of the steps
  int min_points = 8;
  int bootstrap = 200;  // resamples of the fitted points (0: no interval)
  uint64_t seed = 0;
  PercentileRange range;
  int threads = 0;  // 0: hardware concurrency
};

struct CurveModelFit {
  CurveLaw law;
  double objective = NAN;
  Interval forecast;        // the mean loss over the final window, with its bootstrap interval
  double error = NAN;       // forecast / actual - 1 (NaN without an actual)
  bool c_at_bound = false;  // C S2(T) within 1% of L0: the points do not determine C
};

// A finished run of the same schedule kind whose curve forecasts another run's
// (`scaling curve --from-runs`, train.forecast_from_runs).
struct FinishedRun {
  std::string source;  // its metrics.jsonl
  CurveLog log;
  ScheduleOptions schedule;
};

// The finished runs under each path whose schedule is of `kind` (the forecast run's): a
// metrics.jsonl (its recipe.json two levels above), or a directory searched for
// STAGE/metrics.jsonl files beside a complete.json (a finished stage), such as a sweep's
// directory. `exclude` (the forecast run's own file) is left out. Errors (naming the path) on a
// path that is neither or holds no finished run of `stage`, and when none is of `kind`.
std::vector<FinishedRun> read_finished_runs(const std::vector<std::string>& paths,
                                            const std::string& stage, const std::string& kind,
                                            const std::string& exclude);

// One finished run mapped onto the forecast run: log L = a + b log L_run at the same position of
// the schedule after the warmup (the same learning-rate multiplier of a cosine or linear decay),
// fitted by least squares on the forecast run's points.
struct RunTransfer {
  std::string source;
  double a = NAN, b = NAN;
  double residual = NAN;      // RMS of the relative residual on the fitted points
  double forecast = NAN;      // the run's final window mapped: the forecast final loss
  double val_forecast = NAN;  // the run's final val_loss mapped (NaN if it logged none)
};

// The forecast from finished runs (Chandrashekaran & Lane 2017, "Speeding up Hyper-parameter
// Optimization by Extrapolation of Learning Curves Using Previous Builds": a finished curve
// transformed to fit the early part of a new one). The forecast is the best-fitting run's; the
// range spans the runs that fit within twice its residual.
struct FromRunsForecast {
  std::vector<RunTransfer> runs;  // best fit first
  Interval forecast;              // value: the best run's; low/high: the range above
  double val_forecast = NAN;
  double error = NAN;  // forecast / actual - 1 (NaN without an actual)
};

// Maps each finished run (read_finished_runs: of the run's schedule kind) onto the points of a
// run of `schedule` (FromRunsForecast); no runs, no forecast. Errors (naming `source`) when none
// of them maps onto the points.
FromRunsForecast forecast_from_runs(const std::vector<FinishedRun>& finished,
                                    const std::vector<CurvePoint>& fitted,
                                    const ScheduleOptions& schedule, double final_window,
                                    const std::string& source);

struct CurveForecast {
  std::string source;
  // The final validation loss: the LR-aware law at the last step plus the gap between the
  // latest validation loss after the warmup (up to the cut) and the law at its step; NaN
  // without such a validation loss.
  double val_forecast = NAN;
  int64_t val_step = 0;  // the validation loss the gap was taken from
  ScheduleOptions schedule;
  double lambda = 0;
  int64_t at_step = 0, fit_points = 0;
  int64_t window_first = 0, window_last = 0;  // the final window's steps
  double actual = NAN;                        // mean logged loss over the window, if logged
  double final_val_loss = NAN;
  CurveModelFit annealing, power;
  FromRunsForecast from_runs;  // empty runs: no finished runs given
  int bootstrap = 0;
  uint64_t seed = 0;
  PercentileRange range;
};

// Fits both laws on the points up to the cut and forecasts the final window, and maps each of
// `finished` onto the same points (FromRunsForecast). Errors (naming `source`) on too few points
// (TooFewCurvePoints) or a cut beyond the run.
CurveForecast forecast_curve(const CurveLog& log, const ScheduleOptions& schedule,
                             const CurveOptions& options, const std::string& source,
                             const std::vector<FinishedRun>& finished = {});

// The mean logged loss over the final window of a run that reached its last step (NaN when none
// is logged there).
double final_window_loss(const CurveLog& log, int64_t total_steps, double final_window);

nlohmann::json to_json(const CurveForecast& forecast);

// train.forecast's forecaster for the stage loop: fits the lines of metrics.jsonl before the
// record's step plus the record itself, exactly as `tiller scaling curve --at-step STEP` does on
// the finished file (same law, bootstrap and seed), with `bootstrap` resamples.
LossForecaster live_loss_forecaster(const ScheduleOptions& schedule, uint64_t seed,
                                    int bootstrap = 100, std::vector<FinishedRun> finished = {});

// The forecaster a stage's StageLoop takes: live_loss_forecaster over the stage's schedule when
// train.forecast is set (with the finished runs of train.forecast_from_runs, read now, so that a
// wrong path stops the stage before its first step), else none. `stage_dir` is the stage's
// own directory, left out of the finished runs.
LossForecaster train_forecaster(const TrainConfig& train, uint64_t seed, const std::string& stage,
                                const std::string& stage_dir);

// The report's chart of train.forecast's fields (drawn when a stage logged them).
MetricChart forecast_chart();
std::string format_report(const CurveForecast& forecast);

}  // namespace tiller::scaling
