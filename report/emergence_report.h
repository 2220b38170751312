// The "Emergence" section of a sweep directory's report: what `tiller eval emergence` wrote into
// SWEEP_DIR/emergence (emergence.json and one SVG per figure), shown as the figures and the
// mirage reading of each task and shot count.
#pragma once
#include <string>

namespace tiller {

// "" when SWEEP_DIR/emergence/emergence.json does not exist; a file that cannot be read is a
// tiller::Error naming it.
std::string render_emergence_section(const std::string& sweep_dir);

}  // namespace tiller
