// SVG line charts for the run report: several series on shared axes with round-number ticks, a
// legend and a title, as one inline <svg> element that needs no script, font or stylesheet.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace tiller {

// One line of a chart. x and y have the same length; a non-finite y (NaN for a step that did not
// log the value) leaves a gap in the line, and so does a point a log scale cannot show (y <= 0).
struct ChartSeries {
  std::string name;
  std::vector<double> x, y;
};

struct ChartOptions {
  std::string title;
  std::string x_label = "step";
  bool log_y = false;
  int width = 560;
  int height = 300;
  // Attributes added to the <svg> element, e.g. {"data-metric", "loss"}; values are escaped.
  std::vector<std::pair<std::string, std::string>> attributes;
};

// The chart as an <svg class="chart" ...> element. Each series is a
// <g class="series" data-series="NAME" data-points="N"> holding one <polyline> per unbroken run
// of points (N counts the points drawn); a point with no neighbour is drawn as a dot.
std::string render_line_chart(const std::vector<ChartSeries>& series, const ChartOptions& options);

// Round-number ticks (steps of 1, 2 or 5 times a power of ten) covering [low, high] with about
// `target` intervals: the first tick is <= low and the last >= high.
std::vector<double> nice_ticks(double low, double high, int target);
// A tick label: as many decimals as the tick spacing needs, exponent form for very large or
// small magnitudes, never "-0".
std::string format_tick(double value, double spacing);
// Escapes & < > " ' for XML and HTML text and attribute values; control characters that XML
// forbids become U+FFFD.
std::string xml_escape(const std::string& text);

}  // namespace tiller
