// `tiller report RUN_DIR [--out PATH]`: writes the run's self-contained HTML report.
#pragma once
#include <CLI/CLI.hpp>

namespace tiller {

// Registers the `report` subcommand. Its callback does the work while app.parse() runs, so a
// failure leaves parse() as a tiller::Error (any other exception is turned into one): the caller
// catches tiller::Error around parse(), as for any command.
void add_report_command(CLI::App& app);

}  // namespace tiller
