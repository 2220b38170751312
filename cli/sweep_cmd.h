// `tiller sweep RECIPE.json --grid key=v1,v2 [--grid ...]`: one run per grid point, each up to
// the measured pretrain/sft stage, and OUT/runs.jsonl for `tiller scaling fit`.
#pragma once
#include <CLI/CLI.hpp>

namespace tiller {

// Registers `sweep` on app; it runs from its CLI11 callback and throws tiller::Error on bad input.
void add_sweep_command(CLI::App& app);

}  // namespace tiller
