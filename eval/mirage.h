// The mirage reading (Schaeffer, Miranda and Koyejo 2023, "Are Emergent Abilities of Large
// Language Models a Mirage?"): whether a metric's curve across model sizes jumps or climbs, by a
// stated rule, so that a discontinuous metric (exact match) and a continuous one (the answer's
// log-likelihood) of the same outputs can be read side by side.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace tiller::eval {

// The thresholds of the rule (docs/eval.md, "The mirage reading").
struct MirageRule {
  double flat_range = 0.05;   // exact match: a range below this is "flat"
  double sharp_share = 0.5;   // one step between neighbouring sizes holding this share of the
                              // range is "sharp"
  double smooth_r2 = 0.7;     // continuous: R^2 of a straight line in log10 N at least this...
  double smooth_share = 0.5;  // ...and no step holding this share of the range is "smooth"
  double z = 2.0;  // exact match: a difference counts only beyond z binomial standard errors
};

// One curve's shape. x: log10 N, increasing; y: the metric, finite.
struct CurveShape {
  double range = 0;         // max y - min y
  double largest_step = 0;  // discontinuous: the largest rise y[i+1] - y[i] (0 if none);
                            // continuous: the largest |y[i+1] - y[i]|
  double step_share = 0;    // largest_step / range (0 when the range is 0)
  double step_noise = 0;    // discontinuous: z standard errors of the largest rise,
                            // z sqrt(p1 (1 - p1) / n + p2 (1 - p2) / n) over n items
  double r2 = 0;            // of the least-squares line y = a + b x (0 when y is constant)
  double slope = 0;         // b, per decade of N
  std::string reading;      // discontinuous: "flat", "sharp", "gradual"; continuous: "smooth",
                            // "irregular", "flat"
};

// y: a proportion (exact match) over `items` items at every size. Flat: a range below
// flat_range, or max and min within z standard errors of each other. Sharp: the largest rise
// between neighbouring sizes is at least sharp_share of the range and beyond z standard errors.
// Else gradual.
CurveShape discontinuous_shape(const std::vector<double>& x, const std::vector<double>& y,
                               int64_t items, const MirageRule& rule);
CurveShape continuous_shape(const std::vector<double>& x, const std::vector<double>& y,
                            const MirageRule& rule);

// The sentence for a pair of readings, e.g. "mirage-like: exact match jumps where the
// log-likelihood climbs smoothly".
std::string mirage_verdict(const CurveShape& discontinuous, const CurveShape& continuous);

nlohmann::json shape_json(const CurveShape& shape);
nlohmann::json rule_json(const MirageRule& rule);

}  // namespace tiller::eval
