// `tiller scaling fit`: scaling-law fits and forecasts from a table of training runs.
#pragma once
#include <CLI/CLI.hpp>

namespace tiller {

// Registers `scaling fit FILE [flags]` on app. The command runs from its CLI11 callback, that is
// inside app.parse(); it throws tiller::Error on bad input or flags.
void add_scaling_commands(CLI::App& app);

}  // namespace tiller
