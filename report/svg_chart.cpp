#include "report/svg_chart.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <tuple>

namespace tiller {

namespace {

// Distinguishable on white and for the common colour-vision deficiencies (Tableau 10 order).
const char* const kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"};
constexpr int kPaletteSize = sizeof(kPalette) / sizeof(kPalette[0]);

constexpr double kMarginLeft = 64, kMarginRight = 18, kMarginBottom = 42;
constexpr double kTitleHeight = 26, kLegendRowHeight = 16;
constexpr double kLegendCharWidth = 6.6;  // 11px sans-serif, a generous average
constexpr int kMarkerLimit = 40;          // sparse series (evaluations) get a dot at each point

std::string fixed(double value, int decimals) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.*f", decimals, value);
  return buffer;
}

std::string coordinate(double value) {
  return fixed(value, 1);
}

// The smallest of 1, 2, 5 times a power of ten that is >= raw (raw > 0).
double nice_spacing(double raw) {
  const double power = std::pow(10.0, std::floor(std::log10(raw)));
  for (double factor : {1.0, 2.0, 5.0, 10.0})
    if (factor * power >= raw * (1 - 1e-9)) return factor * power;
  return 10 * power;
}

// Widens an empty range (one point, or a constant series) so that it has a visible extent.
std::pair<double, double> widened(double low, double high) {
  if (high > low) return {low, high};
  const double pad = low == 0 ? 1.0 : std::abs(low) * 0.1;
  return {low - pad, high + pad};
}

// A value axis: the range it spans and its ticks, linear or logarithmic.
struct Axis {
  double low = 0, high = 1;
  bool log = false;
  std::vector<double> ticks;
  std::vector<std::string> labels;

  // 0 at low, 1 at high.
  double fraction(double value) const {
    if (log) return (std::log10(value) - std::log10(low)) / (std::log10(high) - std::log10(low));
    return (value - low) / (high - low);
  }
};

Axis linear_axis(double low, double high, int target) {
  std::tie(low, high) = widened(low, high);
  Axis axis;
  axis.ticks = nice_ticks(low, high, target);
  axis.low = axis.ticks.front();
  axis.high = axis.ticks.back();
  const double spacing = axis.ticks.size() > 1 ? axis.ticks[1] - axis.ticks[0] : 1.0;
  for (double tick : axis.ticks) axis.labels.push_back(format_tick(tick, spacing));
  return axis;
}

// Decades from the one at or below `low` to the one at or above `high` (both > 0); within a
// single decade, 2x and 5x ticks are added so that the axis has more than its two ends.
Axis log_axis(double low, double high) {
  int first = static_cast<int>(std::floor(std::log10(low) + 1e-9));
  int last = static_cast<int>(std::ceil(std::log10(high) - 1e-9));
  if (last <= first) last = first + 1;
  Axis axis;
  axis.log = true;
  axis.low = std::pow(10.0, first);
  axis.high = std::pow(10.0, last);
  const int stride = (last - first + 5) / 6;  // at most about six labelled decades
  for (int e = first; e <= last; e += stride) axis.ticks.push_back(std::pow(10.0, e));
  if (last - first == 1)
    for (double factor : {2.0, 5.0}) axis.ticks.push_back(factor * axis.low);
  std::sort(axis.ticks.begin(), axis.ticks.end());
  for (double tick : axis.ticks) axis.labels.push_back(format_tick(tick, tick));
  return axis;
}

bool plottable(double x, double y, const ChartOptions& options) {
  return std::isfinite(x) && std::isfinite(y) && (!options.log_x || x > 0) &&
         (!options.log_y || y > 0);
}

bool has_error_bar(const ChartSeries& s, size_t i) {
  return i < s.y_low.size() && i < s.y_high.size();
}

std::string precise(double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.17g", value);
  return buffer;
}

// A vertical bar from low to high at x, with caps.
std::string error_bar(double x, double low, double high, const std::string& color) {
  return "<path class=\"error-bar\" d=\"M" + coordinate(x) + " " + coordinate(low) + "V" +
         coordinate(high) + "M" + coordinate(x - 4) + " " + coordinate(low) + "H" +
         coordinate(x + 4) + "M" + coordinate(x - 4) + " " + coordinate(high) + "H" +
         coordinate(x + 4) + "\" stroke=\"" + color + "\" stroke-width=\"1.4\" fill=\"none\"/>";
}

struct LegendItem {
  double x, y;
  std::string name, color;
  SeriesStyle style;
};

// A dot at (x, y): filled, or hollow (white inside) for SeriesStyle::kHollowMarkers.
std::string marker(double x, double y, const std::string& color, SeriesStyle style,
                   const char* radius) {
  std::string dot = "<circle class=\"marker\" cx=\"" + coordinate(x) + "\" cy=\"" + coordinate(y) +
                    "\" r=\"" + radius + "\"";
  if (style == SeriesStyle::kHollowMarkers)
    return dot + " fill=\"#ffffff\" stroke=\"" + color + "\" stroke-width=\"1.4\"/>";
  return dot + " fill=\"" + color + "\"/>";
}

// Lays the legend out in rows under the title, left to right, wrapping at the chart's width.
std::vector<LegendItem> layout_legend(const std::vector<ChartSeries>& series, double width) {
  std::vector<LegendItem> items;
  double x = kMarginLeft, row = 0;
  for (size_t i = 0; i < series.size(); ++i) {
    const double item_width = 22 + kLegendCharWidth * series[i].name.size() + 14;
    if (x + item_width > width - kMarginRight && x > kMarginLeft) {
      x = kMarginLeft;
      ++row;
    }
    items.push_back({x, kTitleHeight + row * kLegendRowHeight + 8, series[i].name,
                     kPalette[i % kPaletteSize], series[i].style});
    x += item_width;
  }
  return items;
}

// Where the plot sits: below the title and legend, inside the margins.
struct PlotArea {
  double left, right, top, bottom;
};

PlotArea plot_area(const std::vector<LegendItem>& legend, double width, double height) {
  const double legend_bottom = legend.empty() ? kTitleHeight : legend.back().y + 10;
  return {kMarginLeft, width - kMarginRight, legend_bottom + 6, height - kMarginBottom};
}

// The opening <svg> tag, the accessible title, the white background and the visible title.
std::string chart_header(const ChartOptions& options, double width, double height,
                         const PlotArea& area) {
  std::string svg = "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\"";
  for (const auto& [name, value] : options.attributes)
    svg += " " + name + "=\"" + xml_escape(value) + "\"";
  svg += " width=\"" + fixed(width, 0) + "\" height=\"" + fixed(height, 0) + "\" viewBox=\"0 0 " +
         fixed(width, 0) + " " + fixed(height, 0) + "\" role=\"img\" font-family=\"sans-serif\">";
  svg += "<title>" + xml_escape(options.title) + "</title>";
  svg += "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>";
  svg += "<text x=\"" + coordinate(area.left) +
         "\" y=\"18\" font-size=\"14\" font-weight=\"bold\" fill=\"#222\">" +
         xml_escape(options.title) + "</text>";
  return svg;
}

std::string legend_svg(const std::vector<LegendItem>& legend) {
  std::string svg;
  for (const LegendItem& item : legend) {
    if (item.style == SeriesStyle::kLine)
      svg += "<line x1=\"" + coordinate(item.x) + "\" y1=\"" + coordinate(item.y - 4) + "\" x2=\"" +
             coordinate(item.x + 16) + "\" y2=\"" + coordinate(item.y - 4) + "\" stroke=\"" +
             item.color + "\" stroke-width=\"2.5\"/>";
    else  // not a "marker": the legend's dots are not data
      svg += "<circle cx=\"" + coordinate(item.x + 8) + "\" cy=\"" + coordinate(item.y - 4) +
             "\" r=\"3.5\"" +
             (item.style == SeriesStyle::kHollowMarkers
                  ? " fill=\"#ffffff\" stroke=\"" + item.color + "\" stroke-width=\"1.4\"/>"
                  : " fill=\"" + item.color + "\"/>");
    svg += "<text x=\"" + coordinate(item.x + 21) + "\" y=\"" + coordinate(item.y) +
           "\" font-size=\"11\" fill=\"#333\">" + xml_escape(item.name) + "</text>";
  }
  return svg;
}

// The smallest and largest plottable x and y; empty (low > high) when nothing is plottable.
struct DataExtent {
  double x_low = std::numeric_limits<double>::infinity(), x_high = -x_low;
  double y_low = x_low, y_high = -x_low;

  bool empty() const { return !(x_low <= x_high); }
};

// The data's extent (error bars included) decides both axes; points a log scale cannot show do
// not count.
DataExtent data_extent(const std::vector<ChartSeries>& series, const ChartOptions& options) {
  DataExtent e;
  for (const ChartSeries& s : series) {
    for (size_t i = 0; i < std::min(s.x.size(), s.y.size()); ++i) {
      if (!plottable(s.x[i], s.y[i], options)) continue;
      e.x_low = std::min(e.x_low, s.x[i]);
      e.x_high = std::max(e.x_high, s.x[i]);
      e.y_low = std::min(e.y_low, s.y[i]);
      e.y_high = std::max(e.y_high, s.y[i]);
      if (!has_error_bar(s, i)) continue;
      for (double bound : {s.y_low[i], s.y_high[i]})
        if (plottable(s.x[i], bound, options)) {
          e.y_low = std::min(e.y_low, bound);
          e.y_high = std::max(e.y_high, bound);
        }
    }
  }
  return e;
}

// The plot's frame, left open so that attributes can follow.
std::string open_plot_rect(const PlotArea& area) {
  return "<rect class=\"plot\" x=\"" + coordinate(area.left) + "\" y=\"" + coordinate(area.top) +
         "\" width=\"" + coordinate(area.right - area.left) + "\" height=\"" +
         coordinate(area.bottom - area.top) + "\" fill=\"none\" stroke=\"#bbb\"";
}

// An empty frame saying "no data", and an empty group for each series.
std::string no_data_svg(const std::vector<ChartSeries>& series, const PlotArea& area) {
  std::string svg = open_plot_rect(area) + "/>";
  svg += "<text x=\"" + coordinate((area.left + area.right) / 2) + "\" y=\"" +
         coordinate((area.top + area.bottom) / 2) +
         "\" font-size=\"12\" fill=\"#888\" text-anchor=\"middle\">no data</text>";
  for (size_t i = 0; i < series.size(); ++i)
    svg += "<g class=\"series\" data-series=\"" + xml_escape(series[i].name) +
           "\" data-points=\"0\"></g>";
  return svg;
}

// Maps data values to SVG coordinates.
struct PlotScale {
  PlotArea area;
  Axis x_axis, y_axis;

  double to_x(double x) const { return area.left + x_axis.fraction(x) * (area.right - area.left); }
  double to_y(double y) const {
    return area.bottom - y_axis.fraction(y) * (area.bottom - area.top);
  }
};

// The frame with the axes' ranges as data attributes, the grid lines, tick labels, x label and
// the two axis lines.
std::string axes_svg(const PlotScale& scale, const ChartOptions& options, double height) {
  const PlotArea& area = scale.area;
  const Axis &x_axis = scale.x_axis, &y_axis = scale.y_axis;
  std::string svg = open_plot_rect(area) + " data-x=\"" + precise(x_axis.low) + " " +
                    precise(x_axis.high) + "\" data-y=\"" + precise(y_axis.low) + " " +
                    precise(y_axis.high) + "\"/>";
  svg += "<g class=\"axis\" font-size=\"11\" fill=\"#555\">";
  for (size_t i = 0; i < y_axis.ticks.size(); ++i) {
    const std::string y = coordinate(scale.to_y(y_axis.ticks[i]));
    svg += "<line x1=\"" + coordinate(area.left) + "\" y1=\"" + y + "\" x2=\"" +
           coordinate(area.right) + "\" y2=\"" + y + "\" stroke=\"#e6e6e6\"/>";
    svg += "<text x=\"" + coordinate(area.left - 6) + "\" y=\"" + y +
           "\" text-anchor=\"end\" dominant-baseline=\"middle\">" + y_axis.labels[i] + "</text>";
  }
  for (size_t i = 0; i < x_axis.ticks.size(); ++i) {
    const std::string x = coordinate(scale.to_x(x_axis.ticks[i]));
    svg += "<line x1=\"" + x + "\" y1=\"" + coordinate(area.top) + "\" x2=\"" + x + "\" y2=\"" +
           coordinate(area.bottom) + "\" stroke=\"#e6e6e6\"/>";
    svg += "<text x=\"" + x + "\" y=\"" + coordinate(area.bottom + 15) +
           "\" text-anchor=\"middle\">" + x_axis.labels[i] + "</text>";
  }
  svg += "<text x=\"" + coordinate((area.left + area.right) / 2) + "\" y=\"" +
         coordinate(height - 6) + "\" text-anchor=\"middle\" fill=\"#333\">" +
         xml_escape(options.x_label) + "</text>";
  svg += "<line x1=\"" + coordinate(area.left) + "\" y1=\"" + coordinate(area.bottom) + "\" x2=\"" +
         coordinate(area.right) + "\" y2=\"" + coordinate(area.bottom) + "\" stroke=\"#666\"/>";
  svg += "<line x1=\"" + coordinate(area.left) + "\" y1=\"" + coordinate(area.top) + "\" x2=\"" +
         coordinate(area.left) + "\" y2=\"" + coordinate(area.bottom) + "\" stroke=\"#666\"/>";
  return svg + "</g>";
}

// The indices of a series' points in x order (NaN x last, ties in input order).
std::vector<size_t> points_in_x_order(const ChartSeries& line) {
  std::vector<size_t> order(std::min(line.x.size(), line.y.size()));
  std::iota(order.begin(), order.end(), 0);
  auto sort_key = [&](size_t i) {
    return std::isnan(line.x[i]) ? std::numeric_limits<double>::infinity() : line.x[i];
  };
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return sort_key(a) < sort_key(b); });
  return order;
}

// A series' points in SVG coordinates, split into runs where an unplottable point ends one.
struct PointRuns {
  using Points = std::vector<std::pair<double, double>>;
  std::vector<Points> runs = std::vector<Points>(1);  // the last run is the one being extended
  size_t drawn = 0;
};

PointRuns plottable_runs(const ChartSeries& line, const std::vector<size_t>& order,
                         const PlotScale& scale, const ChartOptions& options) {
  PointRuns points;
  for (size_t i : order) {
    if (!plottable(line.x[i], line.y[i], options)) {
      if (!points.runs.back().empty()) points.runs.emplace_back();
      continue;
    }
    points.runs.back().emplace_back(scale.to_x(line.x[i]), scale.to_y(line.y[i]));
    ++points.drawn;
  }
  return points;
}

std::string error_bars_svg(const ChartSeries& line, const std::vector<size_t>& order,
                           const PlotScale& scale, const ChartOptions& options,
                           const std::string& color) {
  std::string svg;
  for (size_t i : order)
    if (has_error_bar(line, i) && plottable(line.x[i], line.y[i], options) &&
        plottable(line.x[i], line.y_low[i], options) &&
        plottable(line.x[i], line.y_high[i], options))
      svg += error_bar(scale.to_x(line.x[i]), scale.to_y(line.y_low[i]), scale.to_y(line.y_high[i]),
                       color);
  return svg;
}

// A polyline for each run of two or more points; dots on a lone point, and on every point of a
// sparse series.
std::string line_runs_svg(const PointRuns& points, const std::string& color) {
  std::string svg;
  const bool markers = points.drawn <= kMarkerLimit;
  for (const auto& run : points.runs) {
    if (run.size() >= 2) {
      svg += "<polyline fill=\"none\" stroke=\"" + color +
             "\" stroke-width=\"1.6\" stroke-linejoin=\"round\" points=\"";
      for (size_t i = 0; i < run.size(); ++i)
        svg += (i ? " " : "") + coordinate(run[i].first) + "," + coordinate(run[i].second);
      svg += "\"/>";
    }
    if (run.size() == 1 || markers)
      for (const auto& [x, y] : run)
        svg += marker(x, y, color, SeriesStyle::kLine, run.size() == 1 ? "3" : "2.2");
  }
  return svg;
}

// One series' <g>: its error bars, then its line or its markers.
std::string series_svg(const ChartSeries& line, const std::string& color, const PlotScale& scale,
                       const ChartOptions& options) {
  const std::vector<size_t> order = points_in_x_order(line);
  const PointRuns points = plottable_runs(line, order, scale, options);
  std::string svg = "<g class=\"series\" data-series=\"" + xml_escape(line.name) +
                    "\" data-points=\"" + std::to_string(points.drawn) + "\">";
  svg += error_bars_svg(line, order, scale, options, color);
  if (line.style != SeriesStyle::kLine) {
    for (const auto& run : points.runs)
      for (const auto& [x, y] : run) svg += marker(x, y, color, line.style, "3.5");
  } else {
    svg += line_runs_svg(points, color);
  }
  return svg + "</g>";
}

}  // namespace

std::vector<double> nice_ticks(double low, double high, int target) {
  std::tie(low, high) = widened(low, high);
  const double spacing = nice_spacing((high - low) / std::max(target, 1));
  const double first = std::floor(low / spacing + 1e-9);
  const double last = std::ceil(high / spacing - 1e-9);
  std::vector<double> ticks;
  for (double k = first; k <= last; ++k) {
    const double tick = k * spacing;
    ticks.push_back(std::abs(tick) < spacing * 1e-9 ? 0.0 : tick);
  }
  return ticks;
}

std::string format_tick(double value, double spacing) {
  if (value == 0 || !(spacing > 0) || std::abs(value) < spacing * 1e-6) return "0";
  const double magnitude = std::abs(value);
  if (magnitude >= 1e6 || spacing < 1e-4) {
    // Exponent form with the significant digits the spacing needs: "2.5e-5", "1.2e+7" -> "1.2e7".
    int digits = static_cast<int>(std::floor(std::log10(magnitude)) -
                                  std::floor(std::log10(spacing) + 1e-9)) +
                 1;
    digits = std::clamp(digits, 1, 6);
    char buffer[64];
    std::snprintf(buffer, sizeof(buffer), "%.*e", digits - 1, value);
    std::string text = buffer;
    const size_t e = text.find('e');
    std::string mantissa = text.substr(0, e);
    std::string exponent = text.substr(e + 1);
    const bool negative = exponent[0] == '-';
    exponent = exponent.substr(1);
    exponent.erase(0, std::min(exponent.find_first_not_of('0'), exponent.size() - 1));
    return mantissa + "e" + (negative ? "-" : "") + exponent;
  }
  const int decimals = std::max(0, -static_cast<int>(std::floor(std::log10(spacing) + 1e-9)));
  return fixed(value, decimals);
}

std::string xml_escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n' && c != '\r')
          out += "\xEF\xBF\xBD";  // U+FFFD
        else
          out += c;
    }
  }
  return out;
}

std::string render_line_chart(const std::vector<ChartSeries>& series, const ChartOptions& options) {
  const double width = options.width, height = options.height;
  const std::vector<LegendItem> legend = layout_legend(series, width);
  const PlotArea area = plot_area(legend, width, height);
  std::string svg = chart_header(options, width, height, area) + legend_svg(legend);

  const DataExtent extent = data_extent(series, options);
  if (extent.empty()) return svg + no_data_svg(series, area) + "</svg>";
  const Axis x_axis = options.log_x ? log_axis(extent.x_low, extent.x_high)
                                    : linear_axis(extent.x_low, extent.x_high, 6);
  const Axis y_axis = options.log_y ? log_axis(extent.y_low, extent.y_high)
                                    : linear_axis(extent.y_low, extent.y_high, 5);
  const PlotScale scale{area, x_axis, y_axis};
  svg += axes_svg(scale, options, height);
  for (size_t s = 0; s < series.size(); ++s)
    svg += series_svg(series[s], kPalette[s % kPaletteSize], scale, options);
  return svg + "</svg>";
}

std::string render_two_panel_document(const std::vector<ChartSeries>& left,
                                      ChartOptions left_options,
                                      const std::vector<ChartSeries>& right,
                                      ChartOptions right_options, const std::string& title) {
  left_options.attributes.insert(left_options.attributes.begin(), {{"x", "0"}, {"y", "0"}});
  right_options.attributes.insert(right_options.attributes.begin(),
                                  {{"x", std::to_string(left_options.width)}, {"y", "0"}});
  const std::string width = std::to_string(left_options.width + right_options.width);
  const std::string height = std::to_string(std::max(left_options.height, right_options.height));
  return "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" "
         "width=\"" +
         width + "\" height=\"" + height + "\" viewBox=\"0 0 " + width + " " + height +
         "\"><title>" + xml_escape(title) + "</title>" + render_line_chart(left, left_options) +
         render_line_chart(right, right_options) + "</svg>\n";
}

}  // namespace tiller
