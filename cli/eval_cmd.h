// `tiller eval --model DIR --tasks T.jsonl`, `tiller eval --across SWEEP/runs.jsonl --tasks ...`
// and `tiller eval make-task`: task evaluation with discontinuous and continuous metrics
// (docs/eval.md).
#pragma once
#include <CLI/CLI.hpp>

namespace tiller {

// Adds the task-evaluation flags and the make-task subcommand to the `eval` command (which keeps
// its other subcommands). They run from CLI11 callbacks and throw tiller::Error on bad input.
void add_eval_task_commands(CLI::App& eval_cmd);

// Adds `eval make-suite` (the synthetic emergence suite and its corpus) and `eval emergence`
// (a suite across a sweep's model sizes, with the mirage reading): cli/emergence_cmd.cpp.
void add_eval_emergence_commands(CLI::App& eval_cmd);

}  // namespace tiller
