// The run report: SVG charts (ticks, gaps, single points, log scale), the page built from a
// realistic run directory (charts per metric with every point, escaping, malformed lines skipped
// and reported, errors for what is not a run directory), `tiller report`, and the page as
// headless Chromium renders it.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <vector>

#include "common/util/files.h"
#include "report/run_report.h"
#include "report/svg_chart.h"
#include "tests/test_util.h"

using namespace tiller;
using nlohmann::json;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// The <svg> element of the chart with these data attributes ("" when there is none).
std::string find_chart(const std::string& page, const std::string& stage,
                       const std::string& metric) {
  const std::string marker =
      "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" data-stage=\"" + stage +
      "\" data-metric=\"" + metric + "\"";
  const size_t begin = page.find(marker);
  if (begin == std::string::npos) return "";
  return page.substr(begin, page.find("</svg>", begin) + 6 - begin);
}

// Whether SVG text holds a number printf could not print ("nan", "-inf"), not just the letters.
bool has_non_finite(const std::string& svg) {
  static const std::regex non_finite("(^|[^a-z])-?(nan|inf)([^a-z]|$)", std::regex::icase);
  return std::regex_search(svg, non_finite);
}

// The <g class="series"> group of one series in a chart ("" when there is none).
std::string find_series(const std::string& chart, const std::string& name) {
  const size_t begin = chart.find("<g class=\"series\" data-series=\"" + name + "\"");
  if (begin == std::string::npos) return "";
  return chart.substr(begin, chart.find("</g>", begin) + 4 - begin);
}

// The data-points attribute of a series group, -1 when absent.
int declared_points(const std::string& series) {
  std::smatch m;
  if (!std::regex_search(series, m, std::regex("data-points=\"(\\d+)\""))) return -1;
  return std::stoi(m[1]);
}

// Coordinate pairs over all polylines of a series group, and the polylines.
size_t polyline_points(const std::string& series) {
  size_t n = 0;
  const std::regex points("points=\"([^\"]*)\"");
  for (auto it = std::sregex_iterator(series.begin(), series.end(), points);
       it != std::sregex_iterator(); ++it)
    n += count((*it)[1].str(), ",");
  return n;
}

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// ---------------------------------------------------------------------------------------------
// svg_chart

TEST(SvgChart, NiceTicksAreRoundAndCoverTheRange) {
  EXPECT_EQ(nice_ticks(0, 1, 5), (std::vector<double>{0, 0.2, 0.4, 0.6000000000000001, 0.8, 1}));
  const auto ticks = nice_ticks(3.7, 296, 6);
  EXPECT_EQ(ticks.front(), 0);
  EXPECT_EQ(ticks.back(), 300);
  EXPECT_EQ(ticks[1], 50);
  const auto small = nice_ticks(-0.013, 0.042, 5);
  EXPECT_LE(small.front(), -0.013);
  EXPECT_GE(small.back(), 0.042);
  EXPECT_NEAR(small[1] - small[0], 0.02, 1e-12);  // 0.011 rounded up to a nice spacing
  // An empty range (a constant series) still gets an extent.
  const auto constant = nice_ticks(2.5, 2.5, 5);
  EXPECT_LT(constant.front(), 2.5);
  EXPECT_GT(constant.back(), 2.5);
  EXPECT_GE(nice_ticks(0, 0, 5).size(), 3u);
}

TEST(SvgChart, TickLabelsAreShortAndExact) {
  EXPECT_EQ(format_tick(0.30000000000000004, 0.1), "0.3");
  EXPECT_EQ(format_tick(-1e-17, 0.1), "0");
  EXPECT_EQ(format_tick(250, 50), "250");
  EXPECT_EQ(format_tick(2.5, 0.5), "2.5");
  EXPECT_EQ(format_tick(0.02, 0.01), "0.02");
  EXPECT_EQ(format_tick(4e-5, 2e-5), "4e-5");
  EXPECT_EQ(format_tick(1.5e7, 5e6), "1.5e7");
  EXPECT_EQ(format_tick(0.001, 0.001), "0.001");
}

TEST(SvgChart, EscapesTextForXml) {
  EXPECT_EQ(xml_escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
  EXPECT_EQ(xml_escape(std::string("x\x01y\n", 4)), "x\xEF\xBF\xBDy\n");
  ChartOptions options;
  options.title = "loss <raw> & \"quoted\"";
  options.attributes = {{"data-metric", "a\"b"}};
  const std::string svg = render_line_chart({{"s<1>", {1, 2}, {3, 4}}}, options);
  EXPECT_NE(svg.find("loss &lt;raw&gt; &amp; &quot;quoted&quot;"), std::string::npos);
  EXPECT_NE(svg.find("data-metric=\"a&quot;b\""), std::string::npos);
  EXPECT_NE(svg.find("data-series=\"s&lt;1&gt;\""), std::string::npos);
  EXPECT_EQ(svg.find("<raw>"), std::string::npos);
}

TEST(SvgChart, DrawsEveryPointOfEverySeriesWithALegend) {
  ChartSeries loss{"loss", {}, {}}, val{"val_loss", {0, 50, 100}, {3.1, 2.2, 1.9}};
  for (int step = 1; step <= 100; ++step) {
    loss.x.push_back(step);
    loss.y.push_back(3.0 / std::sqrt(step));
  }
  ChartOptions options;
  options.title = "Loss";
  const std::string svg = render_line_chart({loss, val}, options);
  EXPECT_EQ(svg.rfind("<svg class=\"chart\"", 0), 0u);
  const std::string loss_group = find_series(svg, "loss"), val_group = find_series(svg, "val_loss");
  EXPECT_EQ(declared_points(loss_group), 100);
  EXPECT_EQ(polyline_points(loss_group), 100u);
  EXPECT_EQ(count(loss_group, "<circle"), 0u);  // a dense line has no markers
  EXPECT_EQ(polyline_points(val_group), 3u);
  EXPECT_EQ(count(val_group, "<circle"), 3u);  // a sparse one has
  // Both names in the legend, in different colours.
  EXPECT_GE(count(svg, ">loss</text>"), 1u);
  EXPECT_GE(count(svg, ">val_loss</text>"), 1u);
  EXPECT_NE(loss_group.find("#1f77b4"), std::string::npos);
  EXPECT_NE(val_group.find("#ff7f0e"), std::string::npos);
  // Axis labels are the nice ticks of the data's range.
  EXPECT_NE(svg.find(">100</text>"), std::string::npos);
  EXPECT_NE(svg.find(">step</text>"), std::string::npos);
}

TEST(SvgChart, MissingValuesBreakTheLine) {
  const std::string svg =
      render_line_chart({{"gt", {1, 2, 3, 4, 5, 6}, {0.1, 0.2, kNaN, 0.4, 0.5, 0.6}}}, {});
  const std::string group = find_series(svg, "gt");
  EXPECT_EQ(declared_points(group), 5);
  EXPECT_EQ(count(group, "<polyline"), 2u);
  EXPECT_EQ(polyline_points(group), 5u);
  EXPECT_FALSE(has_non_finite(svg));
}

TEST(SvgChart, SinglePointAndConstantSeriesAreVisible) {
  const std::string single = render_line_chart({{"score", {7}, {0.5}}}, {});
  const std::string group = find_series(single, "score");
  EXPECT_EQ(declared_points(group), 1);
  EXPECT_EQ(count(group, "<polyline"), 0u);
  EXPECT_EQ(count(group, "<circle"), 1u);
  EXPECT_FALSE(has_non_finite(single));

  const std::string flat = render_line_chart({{"beta", {1, 2, 3}, {0.05, 0.05, 0.05}}}, {});
  EXPECT_EQ(polyline_points(find_series(flat, "beta")), 3u);
  EXPECT_FALSE(has_non_finite(flat));
  EXPECT_NE(flat.find(">0.050</text>"), std::string::npos);  // the constant, among its neighbours
}

TEST(SvgChart, LogScaleSkipsValuesItCannotShow) {
  ChartOptions options;
  options.log_y = true;
  const std::string svg =
      render_line_chart({{"grad_norm", {1, 2, 3, 4, 5}, {0.5, 3, 0, 40, 200}}}, options);
  const std::string group = find_series(svg, "grad_norm");
  EXPECT_EQ(declared_points(group), 4);  // 0 has no logarithm
  EXPECT_EQ(count(group, "<polyline"), 2u);
  for (const char* label :
       {">0.1</text>", ">1</text>", ">10</text>", ">100</text>", ">1000</text>"})
    EXPECT_NE(svg.find(label), std::string::npos) << label;
}

TEST(SvgChart, LogXAxisMarkersAndErrorBars) {
  ChartOptions options;
  options.log_x = true;
  ChartSeries runs{"runs", {1e6, 1e7, 1e8, -5}, {3.0, 2.5, 2.2, 2.0}, SeriesStyle::kMarkers, {},
                   {}};
  ChartSeries out{"left out", {3e7}, {4.0}, SeriesStyle::kHollowMarkers, {}, {}};
  ChartSeries forecast{"forecast", {1e9}, {2.0}, SeriesStyle::kMarkers, {1.8}, {2.3}};
  const std::string svg = render_line_chart({runs, out, forecast}, options);
  const std::string runs_group = find_series(svg, "runs");
  EXPECT_EQ(declared_points(runs_group), 3);  // -5 has no logarithm
  EXPECT_EQ(count(runs_group, "class=\"marker\""), 3u);
  EXPECT_EQ(count(runs_group, "<polyline"), 0u);
  EXPECT_NE(find_series(svg, "left out").find("fill=\"#ffffff\""), std::string::npos);
  EXPECT_EQ(count(find_series(svg, "forecast"), "class=\"error-bar\""), 1u);
  // Decades on x; the y axis reaches the error bar's ends.
  for (const char* label : {">1e6</text>", ">1e7</text>", ">1e8</text>", ">1e9</text>"})
    EXPECT_NE(svg.find(label), std::string::npos) << label;
  EXPECT_NE(svg.find("data-x=\"1000000 1000000000\""), std::string::npos);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(svg, m, std::regex("data-y=\"([-0-9.e]+) ([-0-9.e]+)\"")));
  EXPECT_LE(std::stod(m[1]), 1.8);
  EXPECT_GE(std::stod(m[2]), 4.0);
  EXPECT_FALSE(has_non_finite(svg));
}

TEST(SvgChart, EmptyChartSaysNoData) {
  const std::string svg = render_line_chart({{"kl", {1, 2}, {kNaN, kNaN}}}, {});
  EXPECT_NE(svg.find("no data"), std::string::npos);
  EXPECT_EQ(declared_points(find_series(svg, "kl")), 0);
  EXPECT_NE(render_line_chart({}, {}).find("no data"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// A run directory as `tiller run` leaves it: pretrain, sft, reward and ppo stages with metrics,
// summaries, PPO samples and the final summary table.

class RunReport : public ::testing::Test {
 protected:
  void SetUp() override {
    run_dir_ = test::temp_dir("report_run") + "/demo";
    write_recipe();
    write_pretrain();
    write_sft();
    write_reward();
    write_ppo();
    test::write_file(run_dir_ + "/summary.json",
                     json{{"rows",
                           {{{"label", "ground truth: base"}, {"value", 0.12}},
                            {{"label", "ground truth: SFT"}, {"value", 0.31}},
                            {{"label", "ground truth: PPO"}, {"value", 0.74}},
                            {{"label", "RM validation accuracy"}, {"value", 0.88}},
                            {{"label", "final KL"}, {"value", 2.41}}}}}
                         .dump(2));
  }

  std::string stage_dir(const std::string& stage) {
    const std::string dir = run_dir_ + "/" + stage;
    make_directories(dir);
    return dir;
  }

  void write_recipe() {
    make_directories(run_dir_);
    json recipe = {{"run", {{"name", "demo <quickstart>"}, {"dir", run_dir_}, {"seed", 1234}}},
                   {"stages",
                    {{{"name", "pretrain"}, {"type", "pretrain"}},
                     {{"name", "sft"}, {"type", "sft"}},
                     {{"name", "rm"}, {"type", "reward"}},
                     {{"name", "ppo"}, {"type", "rlhf"}}}}};
    test::write_file(run_dir_ + "/recipe.json", recipe.dump(2));
  }

  // 40 steps; validation at step 0 and every 10 steps: 5 points.
  void write_pretrain() {
    const std::string dir = stage_dir("pretrain");
    std::string lines = json{{"step", 0}, {"val_loss", 6.2}}.dump() + "\n";
    for (int step = 1; step <= 40; ++step) {
      json r = {{"step", step},
                {"loss", 6.0 - std::log(step)},
                {"lr", 1e-3 * std::min(1.0, step / 10.0)},
                {"grad_norm", 5.0 / step},
                {"tokens_per_s", 20000 + step}};
      if (step % 10 == 0) r["val_loss"] = 6.1 - std::log(step);
      lines += r.dump() + "\n";
    }
    test::write_file(dir + "/metrics.jsonl", lines);
    test::write_file(
        dir + "/complete.json",
        json{{"stage", "pretrain"}, {"type", "pretrain"}, {"steps", 40}, {"final_loss", 2.31}}.dump(
            2));
  }

  // 30 steps with three malformed lines among them (lines 8, 13, 24) and a NaN logged as null.
  void write_sft() {
    const std::string dir = stage_dir("sft");
    std::string lines;
    int line = 0;
    for (int step = 1; step <= 30; ++step) {
      ++line;
      if (line == 8 || line == 13 || line == 24) {
        lines += line == 8    ? "{\"step\": 8, \"loss\": 1.2"
                 : line == 13 ? "not json"
                              : "{\"loss\": 1}";
        lines += "\n";
        ++line;
      }
      json r = {{"step", step}, {"loss", 2.0 - step * 0.02}, {"lr", 3e-4}};
      if (step % 10 == 0) r["val_loss"] = step == 20 ? json() : json(2.1 - step * 0.02);
      lines += r.dump() + "\n";
    }
    // A trailing blank line is not malformed.
    test::write_file(dir + "/metrics.jsonl", lines + "\n");
    test::write_file(dir + "/complete.json", json{{"stage", "sft"},
                                                  {"type", "sft"},
                                                  {"steps", 30},
                                                  {"final_loss", 1.4},
                                                  {"final_val_loss", 1.52}}
                                                 .dump(2));
  }

  void write_reward() {
    const std::string dir = stage_dir("rm");
    std::string lines;
    for (int step = 1; step <= 20; ++step) {
      json r = {{"step", step},
                {"loss", 0.69 - step * 0.01},
                {"accuracy", 0.5 + step * 0.02},
                {"margin", step * 0.05},
                {"chosen_reward", step * 0.03},
                {"rejected_reward", -step * 0.02},
                {"lr", 1e-4}};
      if (step % 10 == 0) {
        r["val_loss"] = 0.6;
        r["val_accuracy"] = 0.8;
        r["val_margin"] = 0.7;
      }
      lines += r.dump() + "\n";
    }
    test::write_file(dir + "/metrics.jsonl", lines);
    test::write_file(dir + "/complete.json", json{{"stage", "rm"},
                                                  {"type", "reward"},
                                                  {"val_accuracy", 0.88},
                                                  {"reward_offset", -0.12},
                                                  {"steps", 20}}
                                                 .dump(2));
  }

  // 25 iterations, ground truth missing at iteration 5; samples at iterations 0, 10 and 25.
  void write_ppo() {
    const std::string dir = stage_dir("ppo");
    std::string lines;
    for (int it = 1; it <= 25; ++it) {
      json r = {{"step", it},
                {"rm_score", -1.0 + it * 0.1},
                {"rm_score_std", 0.3},
                {"kl_k1", it * 0.1},
                {"kl_k3", it * 0.09},
                {"beta", 0.05},
                {"entropy", 2.0 - it * 0.02},
                {"clipfrac", 0.1},
                {"approx_kl", 0.01},
                {"policy_loss", -0.02},
                {"value_loss", 0.5 / it},
                {"explained_variance", 0.3},
                {"response_length", 20 + it},
                {"eos_rate", 0.9},
                {"seconds_generate", 1.5},
                {"seconds_score", 0.2},
                {"seconds_train", 2.5}};
      if (it != 5) r["ground_truth"] = 0.3 + it * 0.02;
      lines += r.dump() + "\n";
    }
    test::write_file(dir + "/metrics.jsonl", lines);
    auto sample = [](int iteration, const std::string& prompt, const std::string& response,
                     double score, json ground_truth) {
      return json{{"iteration", iteration},
                  {"prompt", prompt},
                  {"response", response},
                  {"score", score},
                  {"ground_truth", ground_truth}}
                 .dump() +
             "\n";
    };
    test::write_file(
        dir + "/samples.jsonl",
        sample(0, "Tell a story about a cat.", "The cat sat.", -0.8, 0) +
            sample(0, "Say hi & bye.", "<script>alert(1)</script>", -1.2, nullptr) +
            sample(10, "Tell a story about a cat.", "The cat ran.", 0.1, 1) +
            "{\"iteration\": 10, \"prompt\": \n" +
            // The after-samples in another order: rows pair them by prompt.
            sample(25, "Say hi & bye.", "Hi! Bye! A&B", 1.4, 1) +
            sample(25, "Tell a story about a cat.", "Once upon a time, a happy cat.", 1.1, 1));
    test::write_file(dir + "/complete.json", json{{"stage", "ppo"},
                                                  {"type", "rlhf"},
                                                  {"ground_truth_initial", 0.31},
                                                  {"ground_truth_final", 0.74},
                                                  {"rm_score_initial", -0.9},
                                                  {"rm_score_final", 1.5},
                                                  {"kl_final", 2.41}}
                                                 .dump(2));
  }

  std::string run_dir_;
};

TEST_F(RunReport, ChartsEveryMetricWithEveryPoint) {
  const std::string page = render_run_report(run_dir_);
  struct Expected {
    std::string stage, metric, series;
    int points;
  };
  const std::vector<Expected> expected = {
      {"pretrain", "loss", "loss", 40},
      {"pretrain", "loss", "val_loss", 5},
      {"pretrain", "lr", "lr", 40},
      {"pretrain", "grad_norm", "grad_norm", 40},
      {"pretrain", "tokens_per_s", "tokens_per_s", 40},
      {"sft", "loss", "loss", 30},
      {"sft", "lr", "lr", 30},
      {"rm", "loss", "loss", 20},
      {"rm", "loss", "val_loss", 2},
      {"rm", "accuracy", "accuracy", 20},
      {"rm", "accuracy", "val_accuracy", 2},
      {"rm", "margin", "val_margin", 2},
      {"rm", "rewards", "chosen_reward", 20},
      {"rm", "rewards", "rejected_reward", 20},
      {"ppo", "rm_score", "rm_score", 25},
      {"ppo", "ground_truth", "ground_truth", 24},
      {"ppo", "kl", "kl_k1", 25},
      {"ppo", "kl", "kl_k3", 25},
      {"ppo", "entropy", "entropy", 25},
      {"ppo", "response_length", "response_length", 25},
      {"ppo", "clipfrac", "clipfrac", 25},
      {"ppo", "value_loss", "value_loss", 25},
      {"ppo", "beta", "beta", 25},
      {"ppo", "seconds", "seconds_train", 25},
  };
  for (const Expected& e : expected) {
    SCOPED_TRACE(e.stage + "/" + e.metric + "/" + e.series);
    const std::string chart = find_chart(page, e.stage, e.metric);
    ASSERT_FALSE(chart.empty());
    const std::string series = find_series(chart, e.series);
    ASSERT_FALSE(series.empty());
    EXPECT_EQ(declared_points(series), e.points);
    EXPECT_EQ(polyline_points(series), static_cast<size_t>(e.points));
  }
  // sft's val_loss was logged at steps 10, 20 and 30, NaN (null) at 20: two dots, no line.
  const std::string val_loss = find_series(find_chart(page, "sft", "loss"), "val_loss");
  EXPECT_EQ(declared_points(val_loss), 2);
  EXPECT_EQ(count(val_loss, "<polyline"), 0u);
  EXPECT_EQ(count(val_loss, "<circle"), 2u);
  // pretrain 4, sft 2 (no grad_norm or tokens_per_s logged), rm 5, ppo 13.
  EXPECT_EQ(count(page, "<svg class=\"chart\""), 24u);
  EXPECT_EQ(find_chart(page, "sft", "grad_norm"), "");
  // rm_score_std has no chart of its own and is said to be logged.
  EXPECT_NE(page.find("Also logged (not charted): rm_score_std."), std::string::npos);
}

TEST_F(RunReport, ShowsStagesSummariesAndSamples) {
  const std::string page = render_run_report(run_dir_);
  EXPECT_NE(page.find("<title>Tiller report: demo &lt;quickstart&gt;</title>"), std::string::npos);
  EXPECT_NE(page.find("<table class=\"stage-table\">"), std::string::npos);
  EXPECT_EQ(count(page, "<td class=\"status-complete\">complete</td>"), 4u);
  EXPECT_NE(page.find("ground_truth_final <b>0.74</b>"), std::string::npos);
  EXPECT_NE(page.find("val_accuracy <b>0.88</b>"), std::string::npos);
  EXPECT_NE(page.find("<td>RM validation accuracy</td><td>0.88</td>"), std::string::npos);
  EXPECT_NE(page.find("<td>reward_offset</td><td>-0.12</td>"), std::string::npos);

  // Before (iteration 0) and after (iteration 25) side by side, paired by prompt.
  EXPECT_NE(page.find("Before PPO (iteration 0)"), std::string::npos);
  EXPECT_NE(page.find("After PPO (iteration 25)"), std::string::npos);
  const size_t cat_row = page.find("<tr><td><pre>Tell a story about a cat.</pre></td>");
  ASSERT_NE(cat_row, std::string::npos);
  const std::string row = page.substr(cat_row, page.find("</tr>", cat_row) - cat_row);
  EXPECT_NE(row.find("The cat sat."), std::string::npos);
  EXPECT_NE(row.find("Once upon a time, a happy cat."), std::string::npos);
  EXPECT_EQ(page.find("The cat ran."), std::string::npos);  // iteration 10 is neither
  EXPECT_NE(page.find("score -0.8 &middot; ground truth 0"), std::string::npos);
}

TEST_F(RunReport, EscapesTextAndFetchesNothing) {
  const std::string page = render_run_report(run_dir_);
  EXPECT_EQ(page.find("<script"), std::string::npos);
  EXPECT_NE(page.find("&lt;script&gt;alert(1)&lt;/script&gt;"), std::string::npos);
  EXPECT_NE(page.find("Say hi &amp; bye."), std::string::npos);
  EXPECT_NE(page.find("Hi! Bye! A&amp;B"), std::string::npos);
  // Self-contained: the only URL is the SVG namespace name, which is never fetched.
  EXPECT_EQ(count(page, "http"), count(page, "xmlns=\"http://www.w3.org/2000/svg\""));
  for (const char* fetch : {"src=", "<link", "url(", "@import"})
    EXPECT_EQ(page.find(fetch), std::string::npos) << fetch;
}

TEST_F(RunReport, SkipsMalformedLinesAndSaysSo) {
  const std::string page = render_run_report(run_dir_);
  EXPECT_NE(page.find("sft/metrics.jsonl: skipped 3 malformed lines (lines 8, 13, 24)"),
            std::string::npos);
  EXPECT_NE(page.find("ppo/samples.jsonl: skipped 1 malformed line (line 4)"), std::string::npos);
  EXPECT_EQ(page.find("pretrain/metrics.jsonl: skipped"), std::string::npos);
}

TEST_F(RunReport, ShowsARunInProgress) {
  remove_all(run_dir_ + "/ppo/complete.json");
  remove_all(run_dir_ + "/summary.json");
  // A stage the recipe lists that has not started, and one whose summary is corrupt.
  json recipe = read_json_file(run_dir_ + "/recipe.json");
  recipe["stages"].push_back({{"name", "ppo2"}, {"type", "rlhf"}});
  test::write_file(run_dir_ + "/recipe.json", recipe.dump());
  test::write_file(run_dir_ + "/rm/complete.json", "{\"val_accuracy\": ");

  const std::string page = render_run_report(run_dir_);
  EXPECT_EQ(count(page, "<td class=\"status-complete\">complete</td>"), 2u);
  EXPECT_EQ(count(page, "<td class=\"status-incomplete\">incomplete</td>"), 2u);
  EXPECT_EQ(count(page, "<td class=\"status-not-started\">not started</td>"), 1u);
  EXPECT_NE(page.find("rm/complete.json:1:"), std::string::npos);  // says why
  EXPECT_NE(page.find("Latest logged, stage incomplete (iteration 25)"), std::string::npos);
  EXPECT_NE(page.find("No metrics logged yet (ppo2/metrics.jsonl is absent)"), std::string::npos);
  EXPECT_EQ(page.find("<h2>Summary</h2>"), std::string::npos);
}

TEST_F(RunReport, WritesThePageAtomically) {
  const std::string out = run_dir_ + "/report.html";
  write_run_report(run_dir_, out);
  EXPECT_EQ(read_file(out), render_run_report(run_dir_));
  EXPECT_FALSE(path_exists(out + ".tmp"));
}

TEST(RunReportErrors, NameTheFileThatIsNotARun) {
  const std::string dir = test::temp_dir("report_errors");
  std::string error = test::error_of([&] { render_run_report(dir + "/missing"); });
  EXPECT_NE(error.find(dir + "/missing: not a run directory"), std::string::npos) << error;

  error = test::error_of([&] { render_run_report(dir); });
  EXPECT_NE(error.find(dir + "/recipe.json: not found"), std::string::npos) << error;

  test::write_file(dir + "/recipe.json", "{\"stages\": [");
  error = test::error_of([&] { render_run_report(dir); });
  EXPECT_NE(error.find(dir + "/recipe.json:1:"), std::string::npos) << error;

  test::write_file(dir + "/recipe.json", "{\"run\": {}}");
  error = test::error_of([&] { render_run_report(dir); });
  EXPECT_NE(error.find(dir + "/recipe.json: no \"stages\" list"), std::string::npos) << error;

  test::write_file(dir + "/recipe.json", "{\"stages\": [{\"type\": \"sft\"}]}");
  error = test::error_of([&] { render_run_report(dir); });
  EXPECT_NE(error.find(dir + "/recipe.json: stages[0] has no \"name\""), std::string::npos)
      << error;
  EXPECT_EQ(error.find('\n'), std::string::npos) << "one line: " << error;

  error = test::error_of([&] { write_run_report(dir + "/missing", dir + "/out.html"); });
  EXPECT_FALSE(error.empty());
  EXPECT_FALSE(path_exists(dir + "/out.html"));
}

// ---------------------------------------------------------------------------------------------
// `tiller report`

TEST_F(RunReport, CommandWritesTheReportAndPrintsItsPath) {
  std::string output;
  const std::string tiller = quote(test::tiller_binary());
  if (test::run_command(tiller + " report --help", &output) != 0)
    GTEST_SKIP() << "skipped: this tiller binary has no `report` command: " << output;

  ASSERT_EQ(test::run_command(tiller + " report " + quote(run_dir_), &output), 0) << output;
  EXPECT_EQ(output, "wrote " + run_dir_ + "/report.html\n");
  EXPECT_NE(read_file(run_dir_ + "/report.html").find("<table class=\"stage-table\">"),
            std::string::npos);

  const std::string elsewhere = test::temp_dir("report_cli") + "/r.html";
  ASSERT_EQ(test::run_command(tiller + " report " + quote(run_dir_) + " --out " + quote(elsewhere),
                              &output),
            0)
      << output;
  EXPECT_EQ(output, "wrote " + elsewhere + "\n");
  EXPECT_TRUE(path_exists(elsewhere));

  EXPECT_EQ(test::run_command(tiller + " report " + quote(run_dir_ + "/nope"), &output), 1);
  EXPECT_EQ(output,
            "tiller: error: " + run_dir_ + "/nope: not a run directory (no such directory)\n");
}

// ---------------------------------------------------------------------------------------------
// The page in a browser: Debian's chromium, headless, from the file as a user opens it.

TEST_F(RunReport, RendersInHeadlessChromium) {
  std::string output;
  if (test::run_command("command -v chromium", &output) != 0)
    GTEST_SKIP() << "skipped: chromium is not on PATH (scripts/setup.sh installs Debian's "
                    "chromium package)";
  const std::string report = run_dir_ + "/report.html";
  write_run_report(run_dir_, report);

  // Chromium wants a writable HOME and profile; as root it needs --no-sandbox. Its stderr (D-Bus
  // and GPU complaints in a container) goes to a file so that stdout is the DOM alone.
  const std::string scratch = test::temp_dir("report_chromium");
  const std::string chromium = "HOME=" + quote(scratch) +
                               " timeout 90 chromium --headless --no-sandbox --disable-gpu "
                               "--no-first-run --hide-scrollbars --user-data-dir=" +
                               quote(scratch + "/profile");
  const std::string url = quote("file://" + report);
  ASSERT_EQ(test::run_command(chromium + " --dump-dom " + url + " 2>" + quote(scratch + "/dom.err"),
                              &output),
            0)
      << output << read_file(scratch + "/dom.err");
  EXPECT_EQ(count(output, "<svg class=\"chart\""), 24u);
  EXPECT_NE(output.find("<table class=\"stage-table\">"), std::string::npos);
  EXPECT_EQ(count(output, "<polyline"), count(read_file(report), "<polyline"));
  EXPECT_EQ(output.find("<script"), std::string::npos);  // the escaped sample stayed text

  const std::string png = scratch + "/report.png";
  ASSERT_EQ(test::run_command(chromium + " --window-size=1280,2000 --screenshot=" + quote(png) +
                                  " " + url + " 2>" + quote(scratch + "/png.err"),
                              &output),
            0)
      << output << read_file(scratch + "/png.err");
  ASSERT_TRUE(path_exists(png)) << read_file(scratch + "/png.err");
  const std::string image = read_file(png);
  EXPECT_EQ(image.substr(0, 8), "\x89PNG\r\n\x1a\n");
  EXPECT_GT(image.size(), 20000u);  // charts and tables, not a blank page
}

}  // namespace
