#include "report/emergence_report.h"

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <vector>

#include "common/util/files.h"
#include "report/svg_chart.h"

namespace tiller {
namespace {

std::string number(const nlohmann::json& value, int decimals) {
  if (!value.is_number()) return "-";
  char text[32];
  std::snprintf(text, sizeof text, "%.*f", decimals, value.get<double>());
  return text;
}

// A figure's SVG document without its XML declaration, to sit inline in the page.
std::string inline_figure(const std::string& path) {
  if (!path_exists(path)) return "<p class=\"muted\">(" + xml_escape(path) + " is missing)</p>";
  std::string svg = read_file(path);
  const size_t start = svg.find("<svg");
  return start == std::string::npos ? "" : svg.substr(start);
}

}  // namespace

std::string render_emergence_section(const std::string& sweep_dir) {
  const std::string dir = sweep_dir + "/emergence";
  if (!path_exists(dir + "/emergence.json")) return "";
  const nlohmann::json j = read_json_file(dir + "/emergence.json");
  std::string out = "<section><h2>Emergence</h2><p class=\"muted\">`tiller eval emergence` on " +
                    xml_escape(j.value("suite", std::string("?"))) +
                    ": exact match (discontinuous) beside the answer's log-likelihood per token "
                    "(continuous), against N; the mirage reading by the rule of docs/eval.md.</p>";
  std::vector<std::string> figures;
  for (const auto& r : j.at("readings")) {
    const std::string figure = r.value("figure", std::string());
    if (std::find(figures.begin(), figures.end(), figure) == figures.end())
      figures.push_back(figure);
  }
  for (const auto& figure : figures) {
    out += "<h3>" + xml_escape(figure) + "</h3>" + inline_figure(dir + "/" + figure + ".svg");
    out +=
        "<table class=\"figures\"><tr><th>task</th><th>k</th><th>exact match</th>"
        "<th>log-likelihood</th><th>reading</th></tr>";
    for (const auto& r : j.at("readings")) {
      if (r.value("figure", std::string()) != figure) continue;
      const auto& d = r.at("discontinuous");
      const auto& c = r.at("continuous");
      out += "<tr><td>" + xml_escape(r.value("task", std::string())) + "</td><td>" +
             std::to_string(r.value("k", 0)) + "</td><td>" +
             xml_escape(d.value("reading", std::string())) + " (range " + number(d["range"], 2) +
             ")</td><td>" + xml_escape(c.value("reading", std::string())) + " (R² " +
             number(c["r2"], 2) + ")</td><td>" + xml_escape(r.value("verdict", std::string())) +
             "</td></tr>";
    }
    out += "</table>";
  }
  return out + "</section>";
}

}  // namespace tiller
