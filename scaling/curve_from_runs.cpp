// Forecasting a run from finished runs of the same schedule: scaling/curve.h's FromRunsForecast.
#include <algorithm>
#include <cmath>
#include <filesystem>

#include "common/util/error.h"
#include "scaling/curve.h"
#include "scaling/fit.h"

namespace tiller::scaling {

namespace {

namespace fs = std::filesystem;

FinishedRun read_finished_run(const fs::path& metrics, const std::string& stage) {
  FinishedRun run;
  run.source = metrics.string();
  run.log = read_curve_log(run.source);
  run.schedule =
      schedule_from_recipe((metrics.parent_path().parent_path() / "recipe.json").string(), stage);
  check(run.log.last_step == run.schedule.total_steps,
        run.source + ": the run logged up to step " + std::to_string(run.log.last_step) + " of " +
            std::to_string(run.schedule.total_steps) +
            " (a forecast needs finished runs: log the last step)");
  return run;
}

bool same_file(const fs::path& a, const std::string& b) {
  std::error_code ignored;
  return !b.empty() && fs::exists(b, ignored) && fs::equivalent(a, b, ignored);
}

// The updates after the warmup (at least 1).
double decay_updates(const ScheduleOptions& s) {
  return static_cast<double>(std::max<int64_t>(1, s.total_steps - s.warmup_steps));
}

// Position in the schedule after the warmup, 0 at its end and 1 at the last update: where a
// cosine or linear decay has the same learning-rate multiplier in runs of any length.
double schedule_position(const ScheduleOptions& s, double updates) {
  return (updates - static_cast<double>(s.warmup_steps)) / decay_updates(s);
}

// The run's logged loss at a schedule position, linear between its logged steps (NaN outside
// them). A loss of step s is measured after s - 1 updates.
double loss_at_position(const FinishedRun& run, double position) {
  const ScheduleOptions& s = run.schedule;
  const double step = static_cast<double>(s.warmup_steps) + position * decay_updates(s) + 1;
  const std::vector<CurvePoint>& points = run.log.points;
  const auto after = std::lower_bound(
      points.begin(), points.end(), step,
      [](const CurvePoint& p, double at) { return static_cast<double>(p.step) < at; });
  if (after == points.end()) return NAN;
  if (static_cast<double>(after->step) == step) return after->loss;
  if (after == points.begin()) return NAN;
  const CurvePoint& before = *(after - 1);
  const double t =
      (step - static_cast<double>(before.step)) / static_cast<double>(after->step - before.step);
  return before.loss + t * (after->loss - before.loss);
}

}  // namespace

std::vector<FinishedRun> read_finished_runs(const std::vector<std::string>& paths,
                                            const std::string& stage, const std::string& kind,
                                            const std::string& exclude) {
  std::vector<FinishedRun> runs;
  for (const std::string& path : paths) {
    std::error_code error;
    const size_t before = runs.size();
    if (fs::is_regular_file(path, error)) {
      if (!same_file(path, exclude)) runs.push_back(read_finished_run(path, stage));
    } else {
      check(fs::is_directory(path, error),
            path + ": no such metrics.jsonl or directory of finished runs");
      std::vector<fs::path> found;
      for (const fs::directory_entry& entry : fs::recursive_directory_iterator(path, error))
        if (entry.path().filename() == "metrics.jsonl" &&
            entry.path().parent_path().filename() == stage &&
            fs::exists(entry.path().parent_path() / "complete.json") &&
            !same_file(entry.path(), exclude))
          found.push_back(entry.path());
      std::sort(found.begin(), found.end());  // the directory's order is the file system's
      for (const fs::path& metrics : found) runs.push_back(read_finished_run(metrics, stage));
    }
    check(runs.size() > before, path + ": holds no finished run of stage '" + stage +
                                    "' (STAGE/metrics.jsonl beside a complete.json)");
  }
  // A cosine run's curve cannot stand for a linear or constant one's.
  const size_t read = runs.size();
  runs.erase(std::remove_if(runs.begin(), runs.end(),
                            [&](const FinishedRun& run) { return run.schedule.kind != kind; }),
             runs.end());
  check(!runs.empty(), "none of the " + std::to_string(read) + " finished runs under " +
                           paths.front() + (paths.size() > 1 ? " and the others" : "") +
                           " has a '" + kind + "' schedule");
  return runs;
}

FromRunsForecast forecast_from_runs(const std::vector<FinishedRun>& finished,
                                    const std::vector<CurvePoint>& fitted,
                                    const ScheduleOptions& schedule, double final_window,
                                    const std::string& source) {
  FromRunsForecast out;
  if (finished.empty()) return out;
  for (const FinishedRun& run : finished) {
    // Least squares of log L on log L_run over the fitted points.
    std::vector<double> x, y;
    for (const CurvePoint& p : fitted) {
      const double theirs =
          loss_at_position(run, schedule_position(schedule, static_cast<double>(p.step - 1)));
      if (!(theirs > 0)) continue;
      x.push_back(std::log(theirs));
      y.push_back(std::log(p.loss));
    }
    // None when the finished run is flat over these points: it says nothing of their shape.
    const std::optional<Line> line = fit_line(x, y);
    if (!line) continue;
    RunTransfer t;
    t.source = run.source;
    t.a = line->intercept;
    t.b = line->slope;
    const double n = static_cast<double>(x.size());
    double squares = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double relative = std::exp(t.a + t.b * x[i] - y[i]) - 1;
      squares += relative * relative / n;
    }
    t.residual = std::sqrt(squares);
    auto mapped = [&](double loss) { return std::exp(t.a + t.b * std::log(loss)); };
    t.forecast = mapped(final_window_loss(run.log, run.schedule.total_steps, final_window));
    if (std::isfinite(run.log.final_val_loss)) t.val_forecast = mapped(run.log.final_val_loss);
    if (std::isfinite(t.forecast)) out.runs.push_back(t);
  }
  check(!out.runs.empty(), source + ": none of the " + std::to_string(finished.size()) +
                               " finished runs maps onto this run's fitted points");
  std::stable_sort(
      out.runs.begin(), out.runs.end(),
      [](const RunTransfer& a, const RunTransfer& b) { return a.residual < b.residual; });
  const RunTransfer& best = out.runs.front();
  out.forecast.value = out.forecast.low = out.forecast.high = best.forecast;
  for (const RunTransfer& t : out.runs)
    if (t.residual <= 2 * best.residual) {
      out.forecast.low = std::min(out.forecast.low, t.forecast);
      out.forecast.high = std::max(out.forecast.high, t.forecast);
    }
  out.val_forecast = best.val_forecast;
  return out;
}

}  // namespace tiller::scaling
