// SVG charts for the reports: several series (lines, or points with optional error bars) on
// shared axes (linear or logarithmic) with round-number ticks, a legend and a title, as one inline
// <svg> element that needs no script, font or stylesheet.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace tiller {

// How a series is drawn: a line (with a dot at each point when it has few), or a dot at each point
// and no line, filled or hollow (e.g. runs a fit left out).
enum class SeriesStyle { kLine, kMarkers, kHollowMarkers };

// One series of a chart. x and y have the same length; a non-finite y (NaN for a step that did not
// log the value) leaves a gap in the line, and so does a point a log scale cannot show (<= 0).
// y_low and y_high, when not empty (the same length as y), draw an error bar at each point.
struct ChartSeries {
  std::string name;
  std::vector<double> x, y;
  SeriesStyle style = SeriesStyle::kLine;
  std::vector<double> y_low = {}, y_high = {};  // error bars, empty for none
};

struct ChartOptions {
  std::string title;
  std::string x_label = "step";
  bool log_x = false;
  bool log_y = false;
  int width = 560;
  int height = 300;
  // Attributes added to the <svg> element, e.g. {"data-metric", "loss"}; values are escaped.
  std::vector<std::pair<std::string, std::string>> attributes;
};

// The chart as an <svg class="chart" ...> element. Each series is a
// <g class="series" data-series="NAME" data-points="N"> (N counts the points drawn) holding, for
// a line, one <polyline> per unbroken run of points, a point with no neighbour drawn as a dot;
// for markers, one <circle class="marker"> per point; and one <path class="error-bar"> per error
// bar. The plot area is a <rect class="plot" data-x="LOW HIGH" data-y="LOW HIGH"> giving the
// axes' ranges, so that a reader can map coordinates back to data.
std::string render_line_chart(const std::vector<ChartSeries>& series, const ChartOptions& options);

// Two charts side by side as one self-contained SVG document (XML declaration, <title>), each a
// nested <svg> placed by x/y attributes (added to each options' attributes), the left at 0 and
// the right at the left's width.
std::string render_two_panel_document(const std::vector<ChartSeries>& left,
                                      ChartOptions left_options,
                                      const std::vector<ChartSeries>& right,
                                      ChartOptions right_options, const std::string& title);

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
