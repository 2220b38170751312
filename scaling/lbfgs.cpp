#include "scaling/lbfgs.h"

#include <algorithm>
#include <cmath>
#include <deque>

namespace tiller::scaling {
namespace {

using Vector = std::vector<double>;

double dot(const Vector& a, const Vector& b) {
  double sum = 0;
  for (size_t i = 0; i < a.size(); ++i) sum += a[i] * b[i];
  return sum;
}

double max_abs(const Vector& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// A point on the search line x + step * direction.
struct LinePoint {
  double step = 0, value = 0, slope = 0;  // slope: the directional derivative there
  Vector x, gradient;
};

// The minimiser of the cubic through two line points (values and slopes), kept inside the middle
// 80% of the interval between them; the midpoint when the cubic has no usable minimiser.
double interpolate_step(const LinePoint& p, const LinePoint& q) {
  const double d1 = p.slope + q.slope - 3 * (p.value - q.value) / (p.step - q.step);
  const double radicand = d1 * d1 - p.slope * q.slope;
  const double low = std::min(p.step, q.step), high = std::max(p.step, q.step);
  const double margin = 0.1 * (high - low);
  double step = 0.5 * (low + high);
  if (radicand >= 0) {
    const double d2 = (q.step > p.step ? 1 : -1) * std::sqrt(radicand);
    const double candidate =
        q.step - (q.step - p.step) * (q.slope + d2 - d1) / (q.slope - p.slope + 2 * d2);
    if (std::isfinite(candidate)) step = candidate;
  }
  return std::clamp(step, low + margin, high - margin);
}

class LineSearch {
 public:
  LineSearch(const Objective& objective, const Vector& x, const Vector& direction,
             const LinePoint& start, int max_steps, int& evaluations)
      : objective_(objective),
        x_(x),
        direction_(direction),
        start_(start),
        max_steps_(max_steps),
        evaluations_(evaluations) {}

  // Nocedal & Wright, algorithm 3.5: grows the step until it brackets a point that satisfies the
  // strong Wolfe conditions, then zooms in. Returns false when no step lowered f.
  bool run(double first_step, LinePoint& result) {
    LinePoint previous = start_;
    double step = first_step;
    for (int i = 0; i < max_steps_; ++i) {
      LinePoint point = evaluate(step);
      if (!std::isfinite(point.value)) {  // overshot into overflow: shorten and retry
        step = 0.5 * (previous.step + step);
        continue;
      }
      if (!sufficient_decrease(point) || (i > 0 && point.value >= previous.value))
        return zoom(previous, point, result);
      if (curvature_satisfied(point)) {
        result = point;
        return true;
      }
      if (point.slope >= 0) return zoom(point, previous, result);
      previous = point;
      step *= 4;
    }
    return keep_best(result);
  }

 private:
  static constexpr double kDecrease = 1e-4, kCurvature = 0.9;

  LinePoint evaluate(double step) {
    LinePoint p;
    p.step = step;
    p.x = x_;
    for (size_t i = 0; i < x_.size(); ++i) p.x[i] += step * direction_[i];
    p.gradient.assign(x_.size(), 0.0);
    p.value = objective_(p.x, p.gradient);
    p.slope = dot(p.gradient, direction_);
    ++evaluations_;
    if (std::isfinite(p.value) && p.value < best_.value) best_ = p;
    return p;
  }

  bool sufficient_decrease(const LinePoint& p) const {
    return p.value <= start_.value + kDecrease * p.step * start_.slope;
  }
  bool curvature_satisfied(const LinePoint& p) const {
    return std::abs(p.slope) <= -kCurvature * start_.slope;
  }

  // Algorithm 3.6: `low` satisfies sufficient decrease and has the lower value; the minimiser
  // sought lies between low and high.
  bool zoom(LinePoint low, LinePoint high, LinePoint& result) {
    for (int i = 0; i < max_steps_; ++i) {
      if (std::abs(high.step - low.step) <= 1e-16 * std::max(1.0, std::abs(low.step))) break;
      LinePoint point = evaluate(std::isfinite(high.value) ? interpolate_step(low, high)
                                                           : 0.5 * (low.step + high.step));
      if (!std::isfinite(point.value) || !sufficient_decrease(point) || point.value >= low.value) {
        high = point;
        continue;
      }
      if (curvature_satisfied(point)) {
        result = point;
        return true;
      }
      if (point.slope * (high.step - low.step) >= 0) high = low;
      low = point;
    }
    return keep_best(result);
  }

  // The search ran out of steps: accept the lowest point seen if it lowered f at all.
  bool keep_best(LinePoint& result) const {
    if (!(best_.value < start_.value)) return false;
    result = best_;
    return true;
  }

  const Objective& objective_;
  const Vector& x_;
  const Vector& direction_;
  const LinePoint& start_;
  const int max_steps_;
  int& evaluations_;
  LinePoint best_{0, HUGE_VAL, 0, {}, {}};
};

}  // namespace

LbfgsResult minimize_lbfgs(const Objective& objective, Vector x, const LbfgsOptions& options) {
  LbfgsResult result;
  LinePoint current;
  current.x = std::move(x);
  current.gradient.assign(current.x.size(), 0.0);
  current.value = objective(current.x, current.gradient);
  result.evaluations = 1;

  struct Correction {
    Vector s, y;  // step taken and gradient change
    double rho;   // 1 / (y·s)
  };
  std::deque<Correction> memory;
  Vector direction(current.x.size());
  while (result.iterations < options.max_iterations && std::isfinite(current.value)) {
    if (max_abs(current.gradient) <= options.gradient_tolerance ||
        current.value <= options.value_target) {
      result.converged = true;
      break;
    }
    // Two-loop recursion: direction = -H * gradient.
    direction = current.gradient;
    std::vector<double> alpha(memory.size());
    for (size_t k = memory.size(); k-- > 0;) {
      alpha[k] = memory[k].rho * dot(memory[k].s, direction);
      for (size_t i = 0; i < direction.size(); ++i) direction[i] -= alpha[k] * memory[k].y[i];
    }
    if (!memory.empty()) {
      const Correction& last = memory.back();
      const double gamma = dot(last.s, last.y) / dot(last.y, last.y);
      for (double& d : direction) d *= gamma;
    }
    for (size_t k = 0; k < memory.size(); ++k) {
      const double beta = memory[k].rho * dot(memory[k].y, direction);
      for (size_t i = 0; i < direction.size(); ++i)
        direction[i] += (alpha[k] - beta) * memory[k].s[i];
    }
    for (double& d : direction) d = -d;
    current.slope = dot(current.gradient, direction);
    if (!(current.slope < 0)) {  // not a descent direction: forget the curvature seen so far
      memory.clear();
      for (size_t i = 0; i < direction.size(); ++i) direction[i] = -current.gradient[i];
      current.slope = dot(current.gradient, direction);
    }
    // Without curvature information the first step moves x by a unit length.
    const double first_step = memory.empty() ? 1 / std::sqrt(-current.slope) : 1.0;

    LinePoint next;
    LineSearch search(objective, current.x, direction, current, options.max_line_search_steps,
                      result.evaluations);
    if (!search.run(first_step, next)) break;
    ++result.iterations;

    Correction c{Vector(next.x.size()), Vector(next.x.size()), 0};
    for (size_t i = 0; i < c.s.size(); ++i) {
      c.s[i] = next.x[i] - current.x[i];
      c.y[i] = next.gradient[i] - current.gradient[i];
    }
    const double curvature = dot(c.s, c.y);
    if (curvature > 1e-16 * dot(c.y, c.y)) {
      c.rho = 1 / curvature;
      memory.push_back(std::move(c));
      if (static_cast<int>(memory.size()) > options.memory) memory.pop_front();
    }
    const double decrease = current.value - next.value;
    const double scale =
        std::max({std::abs(current.value), std::abs(next.value), options.value_scale});
    current = std::move(next);
    current.step = 0;  // the next search starts here
    if (decrease <= options.value_tolerance * scale) {
      result.converged = true;
      break;
    }
  }
  result.x = std::move(current.x);
  result.value = current.value;
  return result;
}

}  // namespace tiller::scaling
