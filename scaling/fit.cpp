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

namespace {

template <size_t K>
std::vector<std::vector<double>> as_vectors(const std::vector<std::array<double, K>>& points) {
  std::vector<std::vector<double>> vectors;
  for (const auto& p : points) vectors.emplace_back(p.begin(), p.end());
  return vectors;
}

template <size_t K>
std::array<double, K> as_array(const std::vector<double>& x) {
  std::array<double, K> a{};
  std::copy(x.begin(), x.end(), a.begin());
  return a;
}

// An objective over std::array parameters, as L-BFGS takes it.
template <size_t K, typename F>
Objective array_objective(const F& f) {
  return [f](const std::vector<double>& x, std::vector<double>& gradient) {
    std::array<double, K> g{};
    const double value = f(as_array<K>(x), &g);
    std::copy(g.begin(), g.end(), gradient.begin());
    return value;
  };
}

// Huber_δ(r); writes dHuber/dr to slope.
double huber(double residual, double delta, double* slope) {
  const double size = std::abs(residual);
  if (size <= delta) {
    *slope = residual;
    return 0.5 * residual * residual;
  }
  *slope = std::copysign(delta, residual);
  return delta * (size - 0.5 * delta);
}

// log(e^u1 + e^u2), stably; writes the softmax weights of the two terms.
double log_sum_exp(double u1, double u2, double* w1, double* w2) {
  const double top = std::max(u1, u2);
  const double e1 = std::exp(u1 - top), e2 = std::exp(u2 - top);
  *w1 = e1 / (e1 + e2);
  *w2 = e2 / (e1 + e2);
  return top + std::log(e1 + e2);
}

}  // namespace

MultistartFit minimize_from_starts(const Objective& objective,
                                   const std::vector<std::vector<double>>& starts, size_t run_count,
                                   const ChinchillaFitOptions& options, const std::string& what) {
  // A fit whose residuals are all around 1e-7 (in log L) is as exact as losses are measured;
  // on data a law fits exactly, this stops the slow crawl of E towards 0 or of one term's scale.
  LbfgsOptions lbfgs = options.lbfgs;
  lbfgs.value_target = std::max(lbfgs.value_target, 0.5 * 1e-14 * run_count);
  std::vector<LbfgsResult> ends(starts.size());
  parallel_for(starts.size(), options.threads,
               [&](size_t i) { ends[i] = minimize_lbfgs(objective, starts[i], lbfgs); });
  MultistartFit best;
  best.objective = HUGE_VAL;
  for (size_t i = 0; i < starts.size(); ++i) {
    if (!(ends[i].value < best.objective)) continue;
    best.objective = ends[i].value;
    best.x = ends[i].x;
    best.start = starts[i];
  }
  check(std::isfinite(best.objective), what + ": no starting point reached a finite objective");
  return best;
}

ChinchillaFit fit_chinchilla(const Observations& runs,
                             const std::vector<ChinchillaParameters>& starts,
                             const ChinchillaFitOptions& options) {
  const Objective objective =
      array_objective<5>([&](const ChinchillaParameters& p, ChinchillaParameters* g) {
        return chinchilla_objective(runs, p, options.huber_delta, g);
      });
  const MultistartFit best =
      minimize_from_starts(objective, as_vectors(starts), runs.size(), options, "scaling fit");
  ChinchillaFit fit;
  fit.objective = best.objective;
  fit.parameters = as_array<5>(best.x);
  fit.start = as_array<5>(best.start);
  fit.law = to_loss_law(fit.parameters);
  return fit;
}

// ---------------------------------------------------------------------------------------------
// L(X) = E + A / X^alpha

double SaturatingLaw::loss(double x) const {
  const double log_a = std::isnan(log_A) ? std::log(A) : log_A;
  return E + std::exp(log_a - alpha * std::log(x));
}

SaturatingLaw to_saturating_law(const SaturatingParameters& p) {
  SaturatingLaw law;
  law.A = std::exp(p[0]);
  law.log_A = p[0];
  law.E = std::exp(p[1]);
  law.alpha = p[2];
  return law;
}

double saturating_objective(const std::vector<double>& log_x, const std::vector<double>& log_loss,
                            const SaturatingParameters& p, double delta,
                            SaturatingParameters* gradient) {
  if (gradient) gradient->fill(0.0);
  double total = 0;
  for (size_t i = 0; i < log_x.size(); ++i) {
    double w1, w2, slope;
    const double predicted = log_sum_exp(p[0] - p[2] * log_x[i], p[1], &w1, &w2);
    total += huber(predicted - log_loss[i], delta, &slope);
    if (!gradient) continue;
    (*gradient)[0] += slope * w1;
    (*gradient)[1] += slope * w2;
    (*gradient)[2] -= slope * w1 * log_x[i];
  }
  return total;
}

std::vector<SaturatingParameters> saturating_grid() {
  std::vector<SaturatingParameters> grid;
  for (int a = 0; a <= 25; a += 5)
    for (int e = -2; e <= 2; ++e)
      for (int alpha = 0; alpha <= 4; ++alpha) grid.push_back({double(a), 0.5 * e, 0.5 * alpha});
  return grid;
}

SaturatingFit fit_saturating(const std::vector<double>& log_x, const std::vector<double>& log_loss,
                             const std::vector<SaturatingParameters>& starts,
                             const ChinchillaFitOptions& options) {
  const Objective objective =
      array_objective<3>([&](const SaturatingParameters& p, SaturatingParameters* g) {
        return saturating_objective(log_x, log_loss, p, options.huber_delta, g);
      });
  const MultistartFit best = minimize_from_starts(objective, as_vectors(starts), log_x.size(),
                                                  options, "scaling fit: L(X) = E + A/X^alpha");
  SaturatingFit fit;
  fit.objective = best.objective;
  fit.parameters = as_array<3>(best.x);
  fit.start = as_array<3>(best.start);
  fit.law = to_saturating_law(fit.parameters);
  return fit;
}

// ---------------------------------------------------------------------------------------------
// Kaplan's L(N, D) = [(N_c / N)^(alpha_N/alpha_D) + D_c / D]^alpha_D

double KaplanJointLaw::loss(double n, double d) const {
  double w1, w2;
  const double s =
      log_sum_exp(alpha_n / alpha_d * (log_n_c - std::log(n)), log_d_c - std::log(d), &w1, &w2);
  return std::exp(alpha_d * s);
}

KaplanJointLaw to_kaplan_joint_law(const KaplanJointParameters& p) {
  KaplanJointLaw law;
  law.log_n_c = p[0];
  law.log_d_c = p[1];
  law.alpha_d = p[3];
  law.alpha_n = p[2] * p[3];
  return law;
}

double kaplan_joint_objective(const Observations& runs, const KaplanJointParameters& p,
                              double delta, KaplanJointParameters* gradient) {
  const double n_c = p[0], d_c = p[1], ratio = p[2], alpha_d = p[3];
  if (gradient) gradient->fill(0.0);
  double total = 0;
  for (size_t i = 0; i < runs.size(); ++i) {
    double w1, w2, slope;
    const double n_term = n_c - runs.log_n[i];
    const double s = log_sum_exp(ratio * n_term, d_c - runs.log_d[i], &w1, &w2);
    total += huber(alpha_d * s - runs.log_loss[i], delta, &slope);
    if (!gradient) continue;
    (*gradient)[0] += slope * alpha_d * w1 * ratio;
    (*gradient)[1] += slope * alpha_d * w2;
    (*gradient)[2] += slope * alpha_d * w1 * n_term;
    (*gradient)[3] += slope * s;
  }
  return total;
}

std::vector<KaplanJointParameters> kaplan_joint_grid() {
  std::vector<KaplanJointParameters> grid;
  for (int n_c = 5; n_c <= 45; n_c += 5)
    for (int d_c = 5; d_c <= 45; d_c += 5)
      for (double ratio : {0.25, 0.5, 1.0, 2.0, 4.0})
        for (double alpha_d : {0.05, 0.1, 0.2, 0.4, 0.8})
          grid.push_back({double(n_c), double(d_c), ratio, alpha_d});
  return grid;
}

KaplanJointFit fit_kaplan_joint(const Observations& runs,
                                const std::vector<KaplanJointParameters>& starts,
                                const ChinchillaFitOptions& options) {
  const Objective objective =
      array_objective<4>([&](const KaplanJointParameters& p, KaplanJointParameters* g) {
        return kaplan_joint_objective(runs, p, options.huber_delta, g);
      });
  const MultistartFit best = minimize_from_starts(objective, as_vectors(starts), runs.size(),
                                                  options, "scaling fit: Kaplan's L(N, D)");
  KaplanJointFit fit;
  fit.objective = best.objective;
  fit.parameters = as_array<4>(best.x);
  fit.start = as_array<4>(best.start);
  fit.law = to_kaplan_joint_law(fit.parameters);
  return fit;
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
