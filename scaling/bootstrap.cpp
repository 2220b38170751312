#include "scaling/bootstrap.h"

#include <algorithm>
#include <cstdio>

namespace tiller::scaling {

double percentile(std::vector<double> samples, double q) {
  if (samples.empty()) return NAN;
  std::sort(samples.begin(), samples.end());
  const double position = q / 100 * (samples.size() - 1);
  const size_t below = static_cast<size_t>(std::floor(position));
  const size_t above = std::min(below + 1, samples.size() - 1);
  return samples[below] + (position - below) * (samples[above] - samples[below]);
}

size_t draw_index(std::mt19937_64& rng, size_t n) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t x;
  do x = rng();
  while (x >= limit);
  return x % n;
}

nlohmann::json number_or_null(double x) {
  return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr);
}

nlohmann::json interval_json(const Interval& i) {
  return {{"value", number_or_null(i.value)},
          {"low", number_or_null(i.low)},
          {"high", number_or_null(i.high)}};
}

nlohmann::json bounds_json(const Interval& i) {
  return nlohmann::json::array({number_or_null(i.low), number_or_null(i.high)});
}

nlohmann::json bootstrap_json(int resamples, uint64_t seed, const PercentileRange& range) {
  return {{"resamples", resamples}, {"seed", seed}, {"percentiles", {range.low, range.high}}};
}

std::string format_value(const char* pattern, double x) {
  if (!std::isfinite(x)) return "-";
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, pattern, x);
  return buffer;
}

std::string with_bounds(const char* pattern, const Interval& i) {
  std::string s = format_value(pattern, i.value);
  if (std::isfinite(i.low) && std::isfinite(i.high))
    s += "  [" + format_value(pattern, i.low) + ", " + format_value(pattern, i.high) + "]";
  return s;
}

std::string pad(std::string s, size_t width) {
  if (s.size() < width) s.insert(0, width - s.size(), ' ');
  return s;
}

std::string pad_right(std::string s, size_t width) {
  if (s.size() < width) s.append(width - s.size(), ' ');
  return s;
}

std::string interval_note(int resamples, uint64_t seed, const PercentileRange& range,
                          const std::string& what) {
  if (resamples <= 0) return "no bootstrap (--bootstrap 0): no intervals";
  return format_value("%g", range.high - range.low) + "% bootstrap intervals over " +
         std::to_string(resamples) + " resamples of " + what + " (seed " + std::to_string(seed) +
         ")";
}

}  // namespace tiller::scaling
