// `tiller eval --model DIR --tasks T.jsonl`, `tiller eval --across SWEEP/runs.jsonl --tasks ...`
// and `tiller eval make-task`: task evaluation with discontinuous and continuous metrics
// (docs/eval.md).
#pragma once
#include <CLI/CLI.hpp>

namespace tiller {

// Adds the task-evaluation flags and the make-task subcommand to the `eval` command (which keeps
// its other subcommands). They run from CLI11 callbacks and throw tiller::Error on bad input.
void add_eval_task_commands(CLI::App& eval_cmd);

}  // namespace tiller
