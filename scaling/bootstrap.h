// What every bootstrap of the scaling fits shares: a fitted quantity with its percentile interval,
// seeded draws that are the same on every platform, the interval of a quantity over refits, and
// how an interval is printed and written as JSON. Torch-free.
#pragma once
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

namespace tiller::scaling {

// A fitted quantity and its bootstrap percentile interval (NaN bounds without a bootstrap).
struct Interval {
  double value = NAN, low = NAN, high = NAN;
};

// Which percentiles bound an interval (2.5 and 97.5: a 95% interval).
struct PercentileRange {
  double low = 2.5, high = 97.5;
};

// The q-th percentile (0-100) of the samples, interpolating linearly between order statistics
// (NumPy's default). NaN for no samples.
double percentile(std::vector<double> samples, double q);

// Uniform on [0, n), the same on every platform (std::uniform_int_distribution is not).
size_t draw_index(std::mt19937_64& rng, size_t n);

// `value` with the percentiles of quantity(sample) over the refits as bounds; refits whose
// quantity is not finite (e.g. G when a resample's beta came out <= 0) do not count.
template <typename Sample, typename Quantity>
Interval interval_of(double value, const std::vector<Sample>& samples, const Quantity& quantity,
                     const PercentileRange& range) {
  Interval interval;
  interval.value = value;
  if (samples.empty()) return interval;
  std::vector<double> values;
  for (const Sample& s : samples) {
    const double v = quantity(s);
    if (std::isfinite(v)) values.push_back(v);
  }
  interval.low = percentile(values, range.low);
  interval.high = percentile(values, range.high);
  return interval;
}

// x, or null when it is not finite (JSON has no NaN).
nlohmann::json number_or_null(double x);
// {"value", "low", "high"}.
nlohmann::json interval_json(const Interval& interval);
// [low, high].
nlohmann::json bounds_json(const Interval& interval);
// {"resamples", "seed", "percentiles": [low, high]}: how a result's intervals were drawn.
nlohmann::json bootstrap_json(int resamples, uint64_t seed, const PercentileRange& range);

// x printed with a printf pattern, "-" when it is not finite.
std::string format_value(const char* pattern, double x);
// "value  [low, high]", the bounds omitted when there was no bootstrap.
std::string with_bounds(const char* pattern, const Interval& interval);
// s right-aligned (pad) or left-aligned (pad_right) in a field of `width` characters.
std::string pad(std::string s, size_t width);
std::string pad_right(std::string s, size_t width);
// "95% bootstrap intervals over R resamples of WHAT (seed S)", or that there are none.
std::string interval_note(int resamples, uint64_t seed, const PercentileRange& range,
                          const std::string& what);

}  // namespace tiller::scaling
