#include "scaling/curve.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "common/train/train_config.h"
#include "common/util/error.h"
#include "common/util/jsonl.h"
#include "scaling/lbfgs.h"
#include "scaling/parallel.h"

namespace tiller::scaling {

void add_curve_record(CurveLog& log, const nlohmann::json& record, const std::string& where) {
  if (!record.is_object() || !record.contains("step") || !record["step"].is_number()) return;
  const int64_t step = record["step"].get<int64_t>();
  log.last_step = std::max(log.last_step, step);
  if (record.contains("val_loss") && record["val_loss"].is_number()) {
    const ValPoint point{step, record["val_loss"].get<double>()};
    if (!log.val_points.empty() && log.val_points.back().step == step)
      log.val_points.back() = point;
    else if (log.val_points.empty() || log.val_points.back().step < step)
      log.val_points.push_back(point);
  }
  if (!record.contains("loss") || !record["loss"].is_number()) return;
  check(record.contains("lr") && record["lr"].is_number(),
        where + " has a loss but no lr (the forecast needs the learning-rate column)");
  CurvePoint point;
  point.step = step;
  point.loss = record["loss"].get<double>();
  point.lr = record["lr"].get<double>();
  if (step < 1 || !std::isfinite(point.loss) || point.loss <= 0) return;
  // A resumed stage may repeat steps of a killed attempt: the last line of a step counts.
  const auto later = std::lower_bound(log.points.begin(), log.points.end(), step,
                                      [](const CurvePoint& p, int64_t s) { return p.step < s; });
  if (later != log.points.end() && later->step == step)
    *later = point;
  else
    log.points.insert(later, point);
}

namespace {

void finish_curve_log(CurveLog& log) {
  const bool final_logged = !log.val_points.empty() && log.val_points.back().step == log.last_step;
  log.final_val_loss = final_logged ? log.val_points.back().val_loss : NAN;
}

}  // namespace

CurveLog read_curve_log(const std::string& path) {
  check(std::ifstream(path).good(), path + ": cannot read (no such file?)");
  CurveLog log;
  for_each_jsonl_object(path, [&](const nlohmann::json& record, int64_t line) {
    add_curve_record(log, record, path + ": line " + std::to_string(line));
  });
  check(!log.points.empty(), path + ": no training-loss lines (\"step\", \"loss\", \"lr\")");
  finish_curve_log(log);
  return log;
}

ScheduleOptions schedule_from_recipe(const std::string& recipe_path, const std::string& stage) {
  std::ifstream in(recipe_path);
  check(in.good(), recipe_path + ": cannot read the recipe (give --recipe RUN_DIR/recipe.json)");
  nlohmann::json recipe;
  try {
    recipe = nlohmann::json::parse(in, nullptr, true, /*ignore_comments=*/true);
  } catch (const std::exception& e) {
    throw Error(recipe_path + ": not JSON: " + e.what());
  }
  check(recipe.contains("stages") && recipe["stages"].is_array(),
        recipe_path + ": no \"stages\" array");
  for (const nlohmann::json& entry : recipe["stages"]) {
    if (!entry.is_object() || entry.value("name", std::string()) != stage) continue;
    const TrainConfig defaults;
    const nlohmann::json train = entry.value("train", nlohmann::json::object());
    ScheduleOptions s;
    s.lr = train.value("lr", defaults.lr);
    s.min_lr_ratio = train.value("min_lr_ratio", defaults.min_lr_ratio);
    s.warmup_steps = train.value("warmup_steps", defaults.warmup_steps);
    s.total_steps = train.value("steps", defaults.steps);
    s.kind = train.value("schedule", defaults.schedule);
    check(s.total_steps >= 1, recipe_path + ": stage " + stage + " has no steps");
    return s;
  }
  throw Error(recipe_path + ": no stage named '" + stage + "' (give --stage NAME)");
}

LrAreas lr_areas(const ScheduleOptions& schedule, double lambda) {
  const int64_t total = schedule.total_steps;
  LrAreas areas;
  areas.s1.assign(total + 1, 0.0);
  areas.s2.assign(total + 1, 0.0);
  double momentum = 0;
  double previous = 0;
  for (int64_t i = 0; i < total; ++i) {
    const double eta = learning_rate(schedule, i);
    // After i + 1 updates, the rates of updates 0..i have been applied.
    areas.s1[i + 1] = areas.s1[i] + eta;
    // m_i = lambda m_{i-1} + (eta_{i-1} - eta_i), counted from the end of the warmup (Tissue et
    // al. 2024, arXiv 2408.11029, the annealing area S2 = sum_i m_i).
    const double decrease = i > 0 && i >= schedule.warmup_steps ? previous - eta : 0.0;
    momentum = lambda * momentum + decrease;
    areas.s2[i + 1] = areas.s2[i] + momentum;
    previous = eta;
  }
  return areas;
}

double CurveLaw::loss(double x, double s2) const {
  return L0 + A * std::pow(x, -alpha) - C * s2;
}

namespace {

// The points a law is fitted on: x (S1, or the update count for the power law), s2, loss.
struct FitData {
  std::vector<double> x, s2, loss;
  double final_s2 = 0;  // S2 at the run's last step
};

double sigmoid(double q) {
  return 1 / (1 + std::exp(-q));
}

// C = L0 / S2(T) * sigmoid(q): the annealing drop by the last step, C S2(T), is below L0. The law
// is a loss, never negative, and L0 is its floor at constant rate; without the bound an early
// fit, where S2 is still small and C barely constrained, can forecast a negative loss.
double annealing_c(double L0, double q, double final_s2) {
  return final_s2 > 0 ? L0 / final_s2 * sigmoid(q) : 0.0;
}

// Huber on the relative residual model / loss - 1 (like a residual in log L for small
// residuals, and defined when a trial law goes negative). Parameters: log L0, log A, log alpha
// and, with annealing, q of annealing_c (so L0, A, alpha > 0 and 0 < C S2(T) < L0).
double curve_objective(const FitData& d, const std::vector<double>& p, double delta,
                       std::vector<double>& gradient) {
  const bool annealing = p.size() == 4;
  const double L0 = std::exp(p[0]), A = std::exp(p[1]), alpha = std::exp(p[2]);
  const double C = annealing ? annealing_c(L0, p[3], d.final_s2) : 0.0;
  std::fill(gradient.begin(), gradient.end(), 0.0);
  double total = 0;
  for (size_t i = 0; i < d.x.size(); ++i) {
    const double log_x = std::log(d.x[i]);
    const double power = A * std::exp(-alpha * log_x);
    const double model = L0 + power - C * d.s2[i];
    const double residual = model / d.loss[i] - 1;
    const double size = std::abs(residual);
    total += size <= delta ? 0.5 * residual * residual : delta * (size - 0.5 * delta);
    const double slope = (size <= delta ? residual : std::copysign(delta, residual)) / d.loss[i];
    gradient[0] += slope * (L0 - C * d.s2[i]);  // C scales with L0
    gradient[1] += slope * power;
    gradient[2] += slope * power * (-log_x) * alpha;
    if (annealing) gradient[3] += slope * (-C * d.s2[i]) * (1 - sigmoid(p[3]));
  }
  return total;
}

CurveLaw to_law(const std::vector<double>& p, double final_s2) {
  CurveLaw law;
  law.L0 = std::exp(p[0]);
  law.A = std::exp(p[1]);
  law.alpha = std::exp(p[2]);
  law.C = p.size() == 4 ? annealing_c(law.L0, p[3], final_s2) : 0.0;
  return law;
}

LbfgsResult best_of(const FitData& d, const std::vector<std::vector<double>>& starts, double delta,
                    int threads) {
  const Objective objective = [&](const std::vector<double>& x, std::vector<double>& gradient) {
    return curve_objective(d, x, delta, gradient);
  };
  LbfgsOptions lbfgs;
  lbfgs.max_iterations = 500;
  std::vector<LbfgsResult> ends(starts.size());
  parallel_for(starts.size(), threads,
               [&](size_t i) { ends[i] = minimize_lbfgs(objective, starts[i], lbfgs); });
  LbfgsResult best;
  best.value = HUGE_VAL;
  for (const LbfgsResult& end : ends)
    if (end.value < best.value && std::isfinite(end.value)) best = end;
  return best;
}

// Starting points: L0 below the lowest loss, alpha from shallow to steep, A so that the power
// term spans the losses seen at the median x, C so that the annealing drop at the end of the run
// is a small-to-large share of the loss.
std::vector<std::vector<double>> starts_for(const FitData& d, bool annealing) {
  const double lowest = *std::min_element(d.loss.begin(), d.loss.end());
  double mean = 0;
  for (double l : d.loss) mean += l / d.loss.size();
  std::vector<double> xs = d.x;
  std::nth_element(xs.begin(), xs.begin() + xs.size() / 2, xs.end());
  const double median_x = xs[xs.size() / 2];
  std::vector<std::vector<double>> starts;
  for (double l0 : {0.1, 0.4, 0.7, 0.9})
    for (double alpha : {0.1, 0.3, 0.6, 1.0})
      for (double share : {0.5, 1.0, 2.0}) {
        const double L0 = l0 * lowest;
        const double A = std::max(1e-6, share * (mean - L0)) * std::pow(median_x, alpha);
        std::vector<double> p = {std::log(L0), std::log(A), std::log(alpha)};
        if (!annealing) {
          starts.push_back(p);
          continue;
        }
        for (double share_of_floor : {0.01, 0.1, 0.5}) {
          std::vector<double> q = p;
          q.push_back(std::log(share_of_floor / (1 - share_of_floor)));
          starts.push_back(q);
        }
      }
  return starts;
}

// The law's mean over the final window's points.
double window_mean(const CurveLaw& law, const FitData& window) {
  double sum = 0;
  for (size_t i = 0; i < window.x.size(); ++i) sum += law.loss(window.x[i], window.s2[i]);
  return sum / window.x.size();
}

CurveModelFit fit_model(const FitData& d, const FitData& window, bool annealing, double actual,
                        const CurveOptions& options) {
  const LbfgsResult best =
      best_of(d, starts_for(d, annealing), options.huber_delta, options.threads);
  check(std::isfinite(best.value), "scaling curve: no starting point reached a finite objective");
  CurveModelFit fit;
  fit.law = to_law(best.x, d.final_s2);
  fit.objective = best.value;
  fit.c_at_bound = annealing && sigmoid(best.x[3]) > 0.99;
  const double forecast = window_mean(fit.law, window);
  // Bootstrap: refit on resamples of the fitted points (with replacement), from the best fit.
  std::vector<double> draws(std::max(0, options.bootstrap), NAN);
  parallel_for(draws.size(), options.threads, [&](size_t r) {
    std::mt19937_64 rng(options.seed * 1000003 + r);
    FitData sample;
    sample.final_s2 = d.final_s2;
    for (size_t i = 0; i < d.x.size(); ++i) {
      const size_t k = draw_index(rng, d.x.size());
      sample.x.push_back(d.x[k]);
      sample.s2.push_back(d.s2[k]);
      sample.loss.push_back(d.loss[k]);
    }
    const LbfgsResult refit = best_of(sample, {best.x}, options.huber_delta, 1);
    if (std::isfinite(refit.value)) draws[r] = window_mean(to_law(refit.x, d.final_s2), window);
  });
  fit.forecast = interval_of(
      forecast, draws, [](double v) { return v; }, options.range);
  fit.error = std::isfinite(actual) ? forecast / actual - 1 : NAN;
  return fit;
}

}  // namespace

double final_window_loss(const CurveLog& log, int64_t total_steps, double final_window) {
  const int64_t window = std::max<int64_t>(
      1, static_cast<int64_t>(std::llround(final_window * static_cast<double>(total_steps))));
  double sum = 0;
  int count = 0;
  for (const CurvePoint& p : log.points)
    if (p.step > total_steps - window && p.step <= total_steps) {
      sum += p.loss;
      ++count;
    }
  return count > 0 && log.last_step == total_steps ? sum / count : NAN;
}

CurveForecast forecast_curve(const CurveLog& log, const ScheduleOptions& schedule,
                             const CurveOptions& options, const std::string& source,
                             const std::vector<FinishedRun>& finished) {
  const int64_t total = schedule.total_steps;
  CurveForecast out;
  out.source = source;
  out.schedule = schedule;
  out.lambda = options.lambda;
  out.bootstrap = options.bootstrap;
  out.seed = options.seed;
  out.range = options.range;
  out.at_step =
      options.at_step > 0
          ? options.at_step
          : static_cast<int64_t>(std::llround(options.at_fraction * static_cast<double>(total)));
  check(out.at_step <= total, source + ": step " + std::to_string(out.at_step) +
                                  " is beyond the run's last step " + std::to_string(total));
  check(log.last_step <= total, source + ": logs step " + std::to_string(log.last_step) +
                                    " but the recipe's stage has " + std::to_string(total) +
                                    " steps (wrong --recipe or --stage?)");
  // The logged rates must be the recipe's schedule (a wrong recipe would forecast nonsense).
  for (const CurvePoint& p : log.points) {
    const double want = learning_rate(schedule, p.step - 1);
    check(std::abs(p.lr - want) <= 1e-6 * std::max(want, 1e-12) + 1e-12,
          source + ": step " + std::to_string(p.step) + " logs lr " + std::to_string(p.lr) +
              " but the recipe's schedule gives " + std::to_string(want) +
              " (wrong --recipe or --stage?)");
  }
  const LrAreas areas = lr_areas(schedule, options.lambda);
  FitData annealed, counted;  // x = S1, or x = updates
  std::vector<CurvePoint> fitted;
  const int64_t first_update = options.skip_warmup ? schedule.warmup_steps + 1 : 1;
  for (const CurvePoint& p : log.points) {
    const int64_t updates = p.step - 1;
    if (p.step > out.at_step || updates < std::max<int64_t>(1, first_update)) continue;
    fitted.push_back(p);
    annealed.x.push_back(areas.s1[updates]);
    annealed.s2.push_back(areas.s2[updates]);
    annealed.loss.push_back(p.loss);
    counted.x.push_back(static_cast<double>(updates));
    counted.s2.push_back(0.0);
    counted.loss.push_back(p.loss);
  }
  out.fit_points = static_cast<int64_t>(annealed.x.size());
  if (out.fit_points < options.min_points)
    throw TooFewCurvePoints(source + ": too few points to fit: " + std::to_string(out.fit_points) +
                            " training-loss lines after the warmup up to step " +
                            std::to_string(out.at_step) + " (need " +
                            std::to_string(options.min_points) +
                            "; log more often or fit at a later step)");
  // The final window: the last steps of the run, logged or not.
  const int64_t window = std::max<int64_t>(
      1, static_cast<int64_t>(std::llround(options.final_window * static_cast<double>(total))));
  out.window_first = total - window + 1;
  out.window_last = total;
  FitData annealed_window, counted_window;
  for (int64_t step = out.window_first; step <= total; ++step) {
    const int64_t updates = std::max<int64_t>(1, step - 1);
    annealed_window.x.push_back(areas.s1[updates]);
    annealed_window.s2.push_back(areas.s2[updates]);
    counted_window.x.push_back(static_cast<double>(updates));
    counted_window.s2.push_back(0.0);
  }
  out.actual = final_window_loss(log, total, options.final_window);
  if (log.last_step == total) out.final_val_loss = log.final_val_loss;
  out.from_runs = forecast_from_runs(finished, fitted, schedule, options.final_window, source);
  if (!out.from_runs.runs.empty() && std::isfinite(out.actual))
    out.from_runs.error = out.from_runs.forecast.value / out.actual - 1;
  annealed.final_s2 = areas.s2[total - 1];
  // Without annealing (a constant schedule) the law is the power law in S1.
  out.annealing = fit_model(annealed, annealed_window, annealed.final_s2 > 0, out.actual, options);
  out.power = fit_model(counted, counted_window, false, out.actual, options);
  // The validation loss: the law at the last step, shifted by the latest measured gap between
  // validation and training loss. A validation loss of step s is measured after s updates, the
  // training loss logged with it after s - 1: the law carries it over the one update.
  const CurveLaw& law = out.annealing.law;
  for (const ValPoint& v : log.val_points) {
    if (v.step <= schedule.warmup_steps + 1 || v.step > out.at_step || v.step > total) continue;
    const auto train = std::find_if(log.points.begin(), log.points.end(),
                                    [&](const CurvePoint& p) { return p.step == v.step; });
    const double one_update = law.loss(areas.s1[v.step], areas.s2[v.step]) -
                              law.loss(areas.s1[v.step - 1], areas.s2[v.step - 1]);
    const double train_loss = train != log.points.end()
                                  ? train->loss + one_update
                                  : law.loss(areas.s1[v.step], areas.s2[v.step]);
    out.val_forecast = law.loss(areas.s1[total], areas.s2[total]) + v.val_loss - train_loss;
    out.val_step = v.step;
  }
  return out;
}

LossForecaster live_loss_forecaster(const ScheduleOptions& schedule, uint64_t seed, int bootstrap,
                                    std::vector<FinishedRun> finished) {
  return [schedule, seed, bootstrap, finished = std::move(finished)](
             const std::string& metrics_path,
             const nlohmann::json& record) -> std::optional<LossForecast> {
    CurveOptions options;
    options.at_step = record.at("step").get<int64_t>();
    options.bootstrap = bootstrap;
    options.seed = seed;
    CurveForecast f;
    LossForecast out;
    try {
      CurveLog log;
      for_each_jsonl_object(metrics_path, [&](const nlohmann::json& earlier, int64_t line) {
        add_curve_record(log, earlier, metrics_path + ": line " + std::to_string(line));
      });
      add_curve_record(log, record, metrics_path + " (the step being logged)");
      finish_curve_log(log);
      f = forecast_curve(log, schedule, options, metrics_path, finished);
    } catch (const TooFewCurvePoints&) {
      return std::nullopt;  // not yet
    } catch (const Error& e) {
      out.error = e.what();  // the run goes on; the record and the progress line say why
      return out;
    }
    out.loss = f.annealing.forecast.value;
    out.low = f.annealing.forecast.low;
    out.high = f.annealing.forecast.high;
    out.power_law_loss = f.power.forecast.value;
    out.val_loss = f.val_forecast;
    out.determined = !f.annealing.c_at_bound;
    if (!f.from_runs.runs.empty()) {
      out.from_runs_loss = f.from_runs.forecast.value;
      out.from_runs_low = f.from_runs.forecast.low;
      out.from_runs_high = f.from_runs.forecast.high;
      out.from_runs_val_loss = f.from_runs.val_forecast;
    }
    return out;
  };
}

LossForecaster train_forecaster(const TrainConfig& train, uint64_t seed, const std::string& stage,
                                const std::string& stage_dir) {
  if (train.forecast <= 0) return {};
  std::vector<FinishedRun> finished;
  if (!train.forecast_from_runs.empty()) {
    try {
      finished = read_finished_runs({train.forecast_from_runs}, stage, train.schedule,
                                    stage_dir + "/metrics.jsonl");
    } catch (const Error& e) {
      throw Error(stage + ": train.forecast_from_runs: " + e.what());
    }
  }
  return live_loss_forecaster(train.schedule_options(), seed, 100, std::move(finished));
}

MetricChart forecast_chart() {
  return {"forecast",
          "Forecast of the final loss (train.forecast: the LR-aware law, its 95% interval, the "
          "power law), and of the final validation loss",
          {"forecast_loss", "forecast_loss_low", "forecast_loss_high", "forecast_power_law_loss",
           "forecast_val_loss", "forecast_from_runs_loss", "forecast_from_runs_val_loss"}};
}

namespace {

nlohmann::json model_json(const CurveModelFit& fit, bool annealing) {
  nlohmann::json law = {{"L0", number_or_null(fit.law.L0)},
                        {"A", number_or_null(fit.law.A)},
                        {"alpha", number_or_null(fit.law.alpha)}};
  if (annealing) law["C"] = number_or_null(fit.law.C);
  return {{"law", law},
          {"objective", number_or_null(fit.objective)},
          {"forecast", interval_json(fit.forecast)},
          {"error", number_or_null(fit.error)},
          {"c_at_bound", fit.c_at_bound}};
}

nlohmann::json from_runs_json(const FromRunsForecast& f) {
  nlohmann::json runs = nlohmann::json::array();
  for (const RunTransfer& t : f.runs)
    runs.push_back({{"source", t.source},
                    {"a", t.a},
                    {"b", t.b},
                    {"residual", t.residual},
                    {"forecast", number_or_null(t.forecast)},
                    {"val_forecast", number_or_null(t.val_forecast)}});
  return {{"forecast", interval_json(f.forecast)},
          {"val_forecast", number_or_null(f.val_forecast)},
          {"error", number_or_null(f.error)},
          {"runs", runs}};
}

}  // namespace

nlohmann::json to_json(const CurveForecast& f) {
  return {{"source", f.source},
          {"schedule",
           {{"steps", f.schedule.total_steps},
            {"lr", f.schedule.lr},
            {"warmup_steps", f.schedule.warmup_steps},
            {"schedule", f.schedule.kind},
            {"min_lr_ratio", f.schedule.min_lr_ratio}}},
          {"lambda", f.lambda},
          {"at_step", f.at_step},
          {"fit_points", f.fit_points},
          {"final_window", {f.window_first, f.window_last}},
          {"actual", number_or_null(f.actual)},
          {"final_val_loss", number_or_null(f.final_val_loss)},
          {"val_forecast", number_or_null(f.val_forecast)},
          {"val_forecast_from_step", f.val_step},
          {"annealing", model_json(f.annealing, true)},
          {"power_law", model_json(f.power, false)},
          {"from_runs",
           f.from_runs.runs.empty() ? nlohmann::json(nullptr) : from_runs_json(f.from_runs)},
          {"bootstrap", bootstrap_json(f.bootstrap, f.seed, f.range)}};
}

std::string format_report(const CurveForecast& f) {
  char line[512];
  std::string out;
  std::snprintf(line, sizeof line,
                "%s: fitted %lld training-loss points up to step %lld of %lld (%.0f%%); %s "
                "schedule, lr %g, warmup %lld\n",
                f.source.c_str(), (long long)f.fit_points, (long long)f.at_step,
                (long long)f.schedule.total_steps,
                100.0 * double(f.at_step) / double(f.schedule.total_steps), f.schedule.kind.c_str(),
                f.schedule.lr, (long long)f.schedule.warmup_steps);
  out += line;
  std::snprintf(line, sizeof line, "final loss: mean training loss over steps %lld-%lld\n\n",
                (long long)f.window_first, (long long)f.window_last);
  out += line;
  out +=
      pad_right("model", 36) + pad_right("forecast  [95% interval]", 30) + pad("error", 9) + "\n";
  auto row = [&](const std::string& name, const Interval& forecast, double error) {
    out += pad_right(name, 36) + pad_right(with_bounds("%.4f", forecast), 30) +
           pad(std::isfinite(error) ? format_value("%+.2f%%", 100 * error) : "-", 9) + "\n";
  };
  row("L0 + A S1^-alpha - C S2 (LR-aware)", f.annealing.forecast, f.annealing.error);
  row("L0 + A s^-alpha (power law)", f.power.forecast, f.power.error);
  if (!f.from_runs.runs.empty())
    row("from finished runs (best fit)", f.from_runs.forecast, f.from_runs.error);
  out += pad_right("actual", 36) + pad_right(format_value("%.4f", f.actual), 30) + "\n";
  if (std::isfinite(f.val_forecast)) {
    std::snprintf(line, sizeof line,
                  "val_loss forecast: %.4f (the LR-aware law at the last step, plus the gap to "
                  "the val_loss of step %lld)\n",
                  f.val_forecast, (long long)f.val_step);
    out += line;
  }
  if (!f.from_runs.runs.empty() && std::isfinite(f.from_runs.val_forecast)) {
    std::snprintf(line, sizeof line,
                  "val_loss forecast from finished runs: %.4f (the best run's final val_loss, "
                  "mapped)\n",
                  f.from_runs.val_forecast);
    out += line;
  }
  if (std::isfinite(f.final_val_loss)) {
    std::snprintf(line, sizeof line, "final val_loss: %.4f\n", f.final_val_loss);
    out += line;
  }
  std::snprintf(line, sizeof line,
                "\nLR-aware law: L0 %.4g  A %.4g  alpha %.4g  C %.4g  (lambda %g; Tissue et al. "
                "2024)\npower law:    L0 %.4g  A %.4g  alpha %.4g\n",
                f.annealing.law.L0, f.annealing.law.A, f.annealing.law.alpha, f.annealing.law.C,
                f.lambda, f.power.law.L0, f.power.law.A, f.power.law.alpha);
  out += line;
  if (f.annealing.c_at_bound)
    out +=
        "C is at its bound (an annealing drop of L0 by the last step): the fitted points do "
        "not determine the annealing term, so the LR-aware forecast is not to be trusted\n";
  out += interval_note(f.bootstrap, f.seed, f.range, "the fitted points") + "\n";
  if (!f.from_runs.runs.empty()) {
    out +=
        "\nfinished runs, mapped as log L = a + b log L_run at the same schedule position (best "
        "fit first; the range spans those within twice its residual):\n";
    for (const RunTransfer& t : f.from_runs.runs) {
      std::snprintf(line, sizeof line, "  %-60s residual %.4f  forecast %.4f  (a %.3f, b %.3f)\n",
                    t.source.c_str(), t.residual, t.forecast, t.a, t.b);
      out += line;
    }
  }
  return out;
}

}  // namespace tiller::scaling
