// Scaling-law fits: Chinchilla's L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. 2022, approach 3,
// fitted as Epoch AI's replication does), its one-variable form L(X) = E + A/X^α for sweeps where
// only N (or only D) varies, Kaplan et al.'s one-variable power laws L(X) = (X_c / X)^α_X and
// their two-variable L(N, D). Torch-free.
#pragma once
#include <array>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "scaling/lbfgs.h"

namespace tiller::scaling {

// The compute-optimal allocation of a compute budget C (FLOPs, C = 6ND).
struct ComputeOptimal {
  double compute = 0;
  double n = 0, d = 0;  // N_opt(C), D_opt(C)
  double tokens_per_parameter = 0;
  double loss = 0;  // L(N_opt, D_opt)
};

// L(N, D) = E + A / N^alpha + B / D^beta.
struct LossLaw {
  double E = 0, A = 0, B = 0, alpha = 0, beta = 0;
  // log A and log B as fitted (NaN: take the logarithms of A and B). A fit may land where e^b
  // overflows a double (b > 709, with a large β) while B / D^β itself is small: the loss is
  // computed from the logarithms, as the fit's objective is.
  double log_A = NAN, log_B = NAN;

  double loss(double n, double d) const;
  // N_opt(C) = G (C/6)^a and D_opt(C) = G^-1 (C/6)^b, with a = β/(α+β), b = α/(α+β) and
  // G = (αA / βB)^(1/(α+β)): the minimiser of L along C = 6ND.
  double n_exponent() const { return beta / (alpha + beta); }
  double d_exponent() const { return alpha / (alpha + beta); }
  double G() const;
  ComputeOptimal compute_optimal(double compute) const;
};

// The runs as the fit sees them: logarithms of N, D and the loss.
struct Observations {
  std::vector<double> log_n, log_d, log_loss;
  size_t size() const { return log_loss.size(); }
};

// The fitted variables: (a, b, e, α, β) with a = log A, b = log B, e = log E.
using ChinchillaParameters = std::array<double, 5>;

LossLaw to_loss_law(const ChinchillaParameters& p);

// Epoch AI's objective: the sum over runs of Huber_δ(LSE(a − α log N, b − β log D, e) − log L).
// Writes the gradient when `gradient` is non-null.
double chinchilla_objective(const Observations& runs, const ChinchillaParameters& p, double delta,
                            ChinchillaParameters* gradient = nullptr);

// The replication's starting points: a, b ∈ {0, 5, …, 25}, e ∈ {−1, −0.5, …, 1},
// α, β ∈ {0, 0.5, …, 2} (4500 points).
std::vector<ChinchillaParameters> chinchilla_grid();

// How every Huber fit in log space runs (Chinchilla's, the one-variable saturating law's and
// Kaplan's two-variable law's).
struct ChinchillaFitOptions {
  double huber_delta = 1e-3;
  LbfgsOptions lbfgs;
  int threads = 0;  // starts run in parallel on this many threads; 0: one per hardware thread
};

// The lowest end of L-BFGS runs from each start.
struct MultistartFit {
  std::vector<double> x, start;  // the optimum and the start it was reached from
  double objective = 0;
};

// Runs L-BFGS from every start and keeps the lowest objective (the earliest start on a tie, so
// the result does not depend on the thread count). Stops a run early once its objective is that
// of residuals about 1e-7 in log L on each of `run_count` runs. Throws tiller::Error naming `what`
// when no start reaches a finite objective.
MultistartFit minimize_from_starts(const Objective& objective,
                                   const std::vector<std::vector<double>>& starts, size_t run_count,
                                   const ChinchillaFitOptions& options, const std::string& what);

struct ChinchillaFit {
  LossLaw law;
  ChinchillaParameters parameters{};  // the optimum
  ChinchillaParameters start{};       // the starting point it was reached from
  double objective = 0;
};

// Runs L-BFGS from every start and keeps the lowest objective (the earliest start on a tie, so
// the result does not depend on the thread count). Throws tiller::Error when no start reaches a
// finite objective.
ChinchillaFit fit_chinchilla(const Observations& runs,
                             const std::vector<ChinchillaParameters>& starts,
                             const ChinchillaFitOptions& options = {});

// y = intercept + slope x, fitted by ordinary least squares. Nothing when the x values are all
// equal (the slope is undetermined) or fewer than two.
struct Line {
  double intercept = 0, slope = 0;
  double at(double x) const { return intercept + slope * x; }
};
std::optional<Line> fit_line(const std::vector<double>& x, const std::vector<double>& y);

// L(X) = (X_c / X)^alpha, fitted by least squares on log L = α log X_c − α log X.
struct PowerLaw {
  double x_c = 0, alpha = 0;
  double loss(double x) const;
};

// Nothing when the x values are all equal (the slope is undetermined) or fewer than two.
std::optional<PowerLaw> fit_power_law(const std::vector<double>& log_x,
                                      const std::vector<double>& log_loss);

// L(X) = E + A / X^alpha: Chinchilla's law along the one variable a sweep varies (the other's
// term is then a constant, absorbed into E). Fitted like Chinchilla's, on (a, e, α) with
// a = log A, e = log E: Huber_δ(LSE(a − α log X, e) − log L), from a grid of starts.
struct SaturatingLaw {
  double E = 0, A = 0, alpha = 0;
  double log_A = NAN;  // as fitted; the loss is computed from it (A may overflow a double)
  double loss(double x) const;
};

using SaturatingParameters = std::array<double, 3>;  // (a, e, α)

SaturatingLaw to_saturating_law(const SaturatingParameters& p);

double saturating_objective(const std::vector<double>& log_x, const std::vector<double>& log_loss,
                            const SaturatingParameters& p, double delta,
                            SaturatingParameters* gradient = nullptr);

// Chinchilla's grid for these three: a ∈ {0, 5, …, 25}, e ∈ {−1, −0.5, …, 1}, α ∈ {0, 0.5, …, 2}
// (150 points).
std::vector<SaturatingParameters> saturating_grid();

struct SaturatingFit {
  SaturatingLaw law;
  SaturatingParameters parameters{}, start{};
  double objective = 0;
};

SaturatingFit fit_saturating(const std::vector<double>& log_x, const std::vector<double>& log_loss,
                             const std::vector<SaturatingParameters>& starts,
                             const ChinchillaFitOptions& options = {});

// Kaplan et al. 2020, eq. 1.5: L(N, D) = [(N_c / N)^(α_N/α_D) + D_c / D]^α_D. Fitted on
// (n_c, d_c, p, α_D) with n_c = log N_c, d_c = log D_c and p = α_N / α_D:
// log L = α_D LSE(p (n_c − log N), d_c − log D), Huber_δ in log L as the other fits.
struct KaplanJointLaw {
  double log_n_c = 0, log_d_c = 0, alpha_n = 0, alpha_d = 0;
  double n_c() const { return std::exp(log_n_c); }
  double d_c() const { return std::exp(log_d_c); }
  double loss(double n, double d) const;
};

using KaplanJointParameters = std::array<double, 4>;  // (n_c, d_c, p, α_D)

KaplanJointLaw to_kaplan_joint_law(const KaplanJointParameters& p);

double kaplan_joint_objective(const Observations& runs, const KaplanJointParameters& p,
                              double delta, KaplanJointParameters* gradient = nullptr);

// n_c, d_c ∈ {5, 10, …, 45}, p ∈ {0.25, 0.5, 1, 2, 4}, α_D ∈ {0.05, 0.1, 0.2, 0.4, 0.8}
// (2025 points; Kaplan's own fit: n_c ≈ 31.8, d_c ≈ 30.5, p ≈ 0.8, α_D ≈ 0.095).
std::vector<KaplanJointParameters> kaplan_joint_grid();

struct KaplanJointFit {
  KaplanJointLaw law;
  KaplanJointParameters parameters{}, start{};
  double objective = 0;
};

KaplanJointFit fit_kaplan_joint(const Observations& runs,
                                const std::vector<KaplanJointParameters>& starts,
                                const ChinchillaFitOptions& options = {});

}  // namespace tiller::scaling
