#include "eval/mirage.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common/util/error.h"

namespace tiller::eval {
namespace {

// Range, largest step (rises only, or either way) and the straight-line fit of a curve.
CurveShape measure(const std::vector<double>& x, const std::vector<double>& y, bool rises_only) {
  check(x.size() == y.size() && x.size() >= 2 && std::is_sorted(x.begin(), x.end()),
        "mirage reading: a curve needs at least two sizes in increasing order, got " +
            std::to_string(y.size()));
  CurveShape s;
  const auto [low, high] = std::minmax_element(y.begin(), y.end());
  s.range = *high - *low;
  for (size_t i = 0; i + 1 < y.size(); ++i) {
    const double step = y[i + 1] - y[i];
    s.largest_step = std::max(s.largest_step, rises_only ? step : std::fabs(step));
  }
  s.step_share = s.range > 0 ? s.largest_step / s.range : 0;
  const double n = static_cast<double>(x.size());
  double mx = 0, my = 0;
  for (size_t i = 0; i < x.size(); ++i) mx += x[i] / n, my += y[i] / n;
  double sxx = 0, sxy = 0, syy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sxx += (x[i] - mx) * (x[i] - mx);
    sxy += (x[i] - mx) * (y[i] - my);
    syy += (y[i] - my) * (y[i] - my);
  }
  s.slope = sxx > 0 ? sxy / sxx : 0;
  s.r2 = sxx > 0 && syy > 0 ? sxy * sxy / (sxx * syy) : 0;
  return s;
}

std::string format(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f", value);
  return text;
}

}  // namespace

CurveShape discontinuous_shape(const std::vector<double>& x, const std::vector<double>& y,
                               int64_t items, const MirageRule& rule) {
  check(items >= 1, "mirage reading: a proportion needs at least one item");
  CurveShape s = measure(x, y, /*rises_only=*/true);
  // z standard errors of the difference of two proportions over `items` items each.
  const auto noise = [&rule, items](double a, double b) {
    const double n = static_cast<double>(items);
    return rule.z * std::sqrt(std::max(0.0, a * (1 - a)) / n + std::max(0.0, b * (1 - b)) / n);
  };
  const double low = *std::min_element(y.begin(), y.end());
  const double high = *std::max_element(y.begin(), y.end());
  size_t jump = 0;
  for (size_t i = 0; i + 1 < y.size(); ++i)
    if (y[i + 1] - y[i] == s.largest_step) jump = i;
  s.step_noise = noise(y[jump], y[jump + 1]);
  const bool flat = s.range < rule.flat_range || high - low < noise(low, high);
  const bool sharp =
      s.step_share >= rule.sharp_share && s.largest_step > 0 && s.largest_step >= s.step_noise;
  s.reading = flat ? "flat" : sharp ? "sharp" : "gradual";
  return s;
}

CurveShape continuous_shape(const std::vector<double>& x, const std::vector<double>& y,
                            const MirageRule& rule) {
  CurveShape s = measure(x, y, /*rises_only=*/false);
  s.reading = s.range == 0                                                 ? "flat"
              : s.r2 >= rule.smooth_r2 && s.step_share < rule.smooth_share ? "smooth"
                                                                           : "irregular";
  return s;
}

namespace {

// "the answer log-likelihood rises smoothly (R^2 0.93)", "... is irregular (R^2 0.41)", "... is
// flat".
std::string continuous_phrase(const CurveShape& c) {
  if (c.reading == "flat") return "the answer log-likelihood is flat";
  if (c.reading == "smooth")
    return std::string("the answer log-likelihood ") + (c.slope > 0 ? "rises" : "falls") +
           " smoothly (R^2 " + format(c.r2) + ")";
  return "the answer log-likelihood is irregular (R^2 " + format(c.r2) + ", largest step " +
         format(c.step_share) + " of its range)";
}

}  // namespace

std::string mirage_verdict(const CurveShape& d, const CurveShape& c) {
  const bool smooth = c.reading == "smooth";
  const std::string continuous = continuous_phrase(c);
  if (d.reading == "sharp")
    return (smooth ? "mirage-like: exact match jumps (one step holds "
                   : "sharp in both: exact match jumps (one step holds ") +
           format(d.step_share) + " of its range of " + format(d.range) + ") while " + continuous +
           (smooth ? "" : "; the metric does not explain the jump");
  if (d.reading == "gradual")
    return (smooth ? "no emergence: exact match climbs gradually (range "
                   : "gradual exact match (range ") +
           format(d.range) + ") and " + continuous;
  return (smooth ? "below threshold: exact match is flat (range " : "flat exact match (range ") +
         format(d.range) + ") while " + continuous +
         (smooth ? ": progress that exact match cannot see" : "");
}

nlohmann::json shape_json(const CurveShape& s) {
  return {{"reading", s.reading},           {"range", s.range},
          {"largest_step", s.largest_step}, {"step_share", s.step_share},
          {"step_noise", s.step_noise},     {"r2", s.r2},
          {"slope_per_decade", s.slope}};
}

nlohmann::json rule_json(const MirageRule& r) {
  return {{"flat_range", r.flat_range},
          {"z", r.z},
          {"sharp_share", r.sharp_share},
          {"smooth_r2", r.smooth_r2},
          {"smooth_share", r.smooth_share},
          {"discontinuous",
           "flat if max - min < flat_range or max and min are within z binomial standard "
           "errors; else sharp if the largest rise between neighbouring sizes is >= sharp_share "
           "of max - min and beyond z standard errors; else gradual"},
          {"continuous",
           "smooth if R^2 of a least-squares line in log10 N >= smooth_r2 and no step between "
           "neighbouring sizes is >= smooth_share of max - min; else irregular"}};
}

}  // namespace tiller::eval
