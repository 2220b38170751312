#include "scaling/fit.h"

#include <algorithm>
#include <cmath>

#include "common/util/error.h"
#include "scaling/parallel.h"

namespace tiller::scaling {

double LossLaw::loss(double n, double d) const {
  auto term = [](double coefficient, double log_coefficient, double exponent, double x) {
    const double log_c = std::isnan(log_coefficient) ? std::log(coefficient) : log_coefficient;
    return std::exp(log_c - exponent * std::log(x));
  };
  return E + term(A, log_A, alpha, n) + term(B, log_B, beta, d);
}

double LossLaw::G() const {
  return std::pow(alpha * A / (beta * B), 1 / (alpha + beta));
}

ComputeOptimal LossLaw::compute_optimal(double compute) const {
  ComputeOptimal optimal;
  optimal.compute = compute;
  const double g = G();
  optimal.n = g * std::pow(compute / 6, n_exponent());
  optimal.d = std::pow(compute / 6, d_exponent()) / g;
  optimal.tokens_per_parameter = optimal.d / optimal.n;
  optimal.loss = loss(optimal.n, optimal.d);
  return optimal;
}

LossLaw to_loss_law(const ChinchillaParameters& p) {
  LossLaw law;
  law.A = std::exp(p[0]);
  law.B = std::exp(p[1]);
  law.E = std::exp(p[2]);
  law.alpha = p[3];
  law.beta = p[4];
  law.log_A = p[0];
  law.log_B = p[1];
  return law;
}

double chinchilla_objective(const Observations& runs, const ChinchillaParameters& p, double delta,
                            ChinchillaParameters* gradient) {
  const double a = p[0], b = p[1], e = p[2], alpha = p[3], beta = p[4];
  if (gradient) gradient->fill(0.0);
  double total = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    // log(A/N^α + B/D^β + E), stably.
    const double u1 = a - alpha * runs.log_n[i];
    const double u2 = b - beta * runs.log_d[i];
    // Weights exp(u − top) of the three terms; the largest is 1, which saves an exp.
    double top, w1 = 1, w2 = 1, w3 = 1;
    if (u1 >= u2 && u1 >= e) {
      top = u1;
      w2 = std::exp(u2 - top);
      w3 = std::exp(e - top);
    } else if (u2 >= e) {
      top = u2;
      w1 = std::exp(u1 - top);
      w3 = std::exp(e - top);
    } else {
      top = e;
      w1 = std::exp(u1 - top);
      w2 = std::exp(u2 - top);
    }
    const double sum = w1 + w2 + w3;
    const double residual = top + std::log(sum) - runs.log_loss[i];
    const double size = std::abs(residual);
    total += size <= delta ? 0.5 * residual * residual : delta * (size - 0.5 * delta);
    if (!gradient) continue;
    // d Huber / d residual, spread over the three terms by their softmax weights.
    const double slope = (size <= delta ? residual : std::copysign(delta, residual)) / sum;
    (*gradient)[0] += slope * w1;
    (*gradient)[1] += slope * w2;
    (*gradient)[2] += slope * w3;
    (*gradient)[3] -= slope * w1 * runs.log_n[i];
    (*gradient)[4] -= slope * w2 * runs.log_d[i];
  }
  return total;
}

std::vector<ChinchillaParameters> chinchilla_grid() {
  std::vector<ChinchillaParameters> grid;
  for (int a = 0; a <= 25; a += 5)
    for (int b = 0; b <= 25; b += 5)
      for (int e = -2; e <= 2; ++e)
        for (int alpha = 0; alpha <= 4; ++alpha)
          for (int beta = 0; beta <= 4; ++beta)
            grid.push_back({double(a), double(b), 0.5 * e, 0.5 * alpha, 0.5 * beta});
  return grid;
}

ChinchillaFit fit_chinchilla(const Observations& runs,
                             const std::vector<ChinchillaParameters>& starts,
                             const ChinchillaFitOptions& options) {
  const Objective objective = [&](const std::vector<double>& x, std::vector<double>& gradient) {
    ChinchillaParameters p, g;
    std::copy(x.begin(), x.end(), p.begin());
    const double value = chinchilla_objective(runs, p, options.huber_delta, &g);
    std::copy(g.begin(), g.end(), gradient.begin());
    return value;
  };
  // A fit whose residuals are all around 1e-7 (in log L) is as exact as losses are measured;
  // on data a law fits exactly, this stops the slow crawl of E towards 0 or of one term's scale.
  LbfgsOptions lbfgs = options.lbfgs;
  lbfgs.value_target = std::max(lbfgs.value_target, 0.5 * 1e-14 * runs.size());
  std::vector<LbfgsResult> ends(starts.size());
  parallel_for(starts.size(), options.threads, [&](size_t i) {
    ends[i] =
        minimize_lbfgs(objective, std::vector<double>(starts[i].begin(), starts[i].end()), lbfgs);
  });
  ChinchillaFit best;
  best.objective = HUGE_VAL;
  for (size_t i = 0; i < starts.size(); ++i) {
    if (!(ends[i].value < best.objective)) continue;
    best.objective = ends[i].value;
    std::copy(ends[i].x.begin(), ends[i].x.end(), best.parameters.begin());
    best.start = starts[i];
  }
  check(std::isfinite(best.objective), "scaling fit: no starting point reached a finite objective");
  best.law = to_loss_law(best.parameters);
  return best;
}

double PowerLaw::loss(double x) const {
  return std::pow(x_c / x, alpha);
}

std::optional<Line> fit_line(const std::vector<double>& x, const std::vector<double>& y) {
  const size_t n = x.size();
  if (n < 2) return std::nullopt;
  double mean_x = 0, mean_y = 0;
  for (size_t i = 0; i < n; ++i) {
    mean_x += x[i] / n;
    mean_y += y[i] / n;
  }
  double sxx = 0, sxy = 0;
  for (size_t i = 0; i < n; ++i) {
    sxx += (x[i] - mean_x) * (x[i] - mean_x);
    sxy += (x[i] - mean_x) * (y[i] - mean_y);
  }
  if (!(sxx > 1e-12 * std::max(1.0, mean_x * mean_x))) return std::nullopt;
  Line line;
  line.slope = sxy / sxx;
  line.intercept = mean_y - line.slope * mean_x;
  return line;
}

std::optional<PowerLaw> fit_power_law(const std::vector<double>& log_x,
                                      const std::vector<double>& log_loss) {
  const std::optional<Line> line = fit_line(log_x, log_loss);
  if (!line) return std::nullopt;
  // log L = intercept + slope log X, with slope = −α and intercept = α log X_c.
  PowerLaw law;
  law.alpha = -line->slope;
  law.x_c = std::exp(line->intercept / law.alpha);
  return law;
}

}  // namespace tiller::scaling
