// The run report: one self-contained HTML page (inline SVG charts and CSS, no script, nothing
// fetched) showing a run directory's stages, their curves, their summaries and, for PPO, sample
// responses before and after training.
#pragma once
#include <string>

namespace tiller {

// Reads RUN_DIR/recipe.json, RUN_DIR/summary.json (optional) and per stage metrics.jsonl,
// complete.json and samples.jsonl, any of which may be missing while a run is in progress.
// Malformed JSONL lines are skipped and counted in the page. Throws tiller::Error naming the file
// when RUN_DIR is not a run directory or its recipe.json cannot be read.
std::string render_run_report(const std::string& run_dir);

// Renders the report and writes it to out_path atomically (a temporary file in the same
// directory, renamed into place), so a browser never shows half a page.
void write_run_report(const std::string& run_dir, const std::string& out_path);

}  // namespace tiller
