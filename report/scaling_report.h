// Pictures of a scaling fit: loss against N, D and C with the runs as points (those the fit left
// out drawn hollow), the fitted Chinchilla curves and the forecast with its interval; and the
// "Scaling" section of the report of a sweep directory (one that holds runs.jsonl).
#pragma once
#include <string>
#include <vector>

#include "scaling/analysis.h"
#include "scaling/runs_table.h"

namespace tiller {

// Each an <svg class="chart"> element (report/svg_chart.h), with data-chart="loss_vs_N" etc.
struct ScalingCharts {
  std::string loss_vs_n, loss_vs_d, loss_vs_c;
};

// Log x axes. Along N: L(N, D) at each distinct D of the fitted runs (D within 1% counted as one;
// at their median D when there are more than four) and at the forecast's D. Along D: the same
// with N and D swapped. Along C: the compute-optimal frontier L(N_opt(C), D_opt(C)). With no
// analysis (the fit failed), the runs alone.
ScalingCharts render_scaling_charts(const scaling::RunsTable& table,
                                    const scaling::ScalingAnalysis* analysis);

// Writes DIR/loss_vs_N.svg, DIR/loss_vs_D.svg and DIR/loss_vs_C.svg (DIR created if need be);
// returns their paths.
std::vector<std::string> write_scaling_charts(const ScalingCharts& charts, const std::string& dir);

// Whether dir is a sweep directory for the report: it has runs.jsonl and no recipe.json.
bool is_sweep_directory(const std::string& dir);

// The report's Scaling section for SWEEP_DIR/runs.jsonl: the runs table, the fit's parameters and
// the three charts. A fit that fails is reported in the section (the runs are still shown); a
// runs.jsonl that cannot be read at all throws tiller::Error naming file:line.
std::string render_scaling_section(const std::string& sweep_dir);

}  // namespace tiller
