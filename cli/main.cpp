// tiller: the command line. Each subcommand lives in its own cli/<command>_cmd.cpp and only
// parses its flags; main parses the line, runs the chosen command, and reports a user error as
// one line on stderr with a non-zero exit.
#include <c10/util/Exception.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "cli/eval_cmd.h"
#include "cli/report_cmd.h"
#include "cli/scaling_cmd.h"
#include "cli/sweep_cmd.h"
#include "common/dist/interrupt.h"
#include "common/dist/process_group.h"
#include "common/util/error.h"
#include "common/util/runtime.h"

using namespace tiller;

namespace {

// Prints a user error as one line; returns the exit code.
// A recipe's mistakes come one per line; anything else is cut to its first line.
// In a multi-process job the line names the rank, and the process ends at once: its peers may be
// gone, and c10d's destructors would wait for them.
int report(const std::string& message, bool multi_line = false) {
  const std::string shown = multi_line ? message : message.substr(0, message.find('\n'));
  std::fprintf(stderr, "tiller: error: %s%s\n", dist::error_prefix().c_str(), shown.c_str());
  if (!dist::error_prefix().empty()) {
    std::fflush(nullptr);
    std::_Exit(1);
  }
  return 1;
}

// Every subcommand, in --help's order.
void add_commands(CLI::App& app, CommandAction& action) {
  add_version_command(app, action);
  add_convert_command(app, action);
  add_merge_command(app, action);
  add_quantize_command(app, action);
  add_export_command(app, action);
  add_inspect_command(app, action);
  add_chat_command(app, action);
  add_checkpoint_command(app, action);
  add_generate_command(app, action);
  add_tokenize_commands(app, action);
  add_data_commands(app, action);
  add_bench_commands(app, action);
  add_recipe_commands(app, action);
  auto* eval_cmd = app.add_subcommand(
      "eval", "evaluate a model on tasks (--model/--across, docs/eval.md) or a reward model");
  eval_cmd->require_subcommand(0, 1);
  add_eval_reward_command(*eval_cmd, action);
  add_eval_preference_command(*eval_cmd, action);
  add_eval_perplexity_command(*eval_cmd, action);
  add_eval_task_commands(*eval_cmd);
  add_eval_emergence_commands(*eval_cmd);
  add_report_command(app);
  add_scaling_commands(app);
  add_sweep_command(app);
}

// Parses the command line; a non-negative result is the exit code of a line that ends there
// (--help, a mistake, or a command run in its CLI11 callback that failed).
int parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    // CLI11 reports a missing subcommand before an unexpected word: name the word instead.
    const auto extra = app.remaining(true);
    if (!extra.empty() && std::string(e.what()).find("subcommand is required") != std::string::npos)
      return report((extra[0][0] == '-' ? "unknown flag '" : "unknown subcommand '") + extra[0] +
                    "' (see --help)");
    return report(e.what() + std::string(" (see --help)"));
  } catch (const Error& e) {  // commands that run in their CLI11 callback (report, scaling)
    return report(e.what(), /*multi_line=*/true);
  } catch (const std::exception& e) {
    return report(e.what());
  }
  return -1;
}

// Runs the chosen command; Ctrl-C ends it after a checkpoint, with exit code 0.
int run(const CommandAction& action, int threads) {
  try {
    install_interrupt_handlers();
    set_threads(threads);
    return action ? action() : 0;
  } catch (const Interrupted& e) {
    std::fprintf(stderr, "tiller: %s%s\n", dist::error_prefix().c_str(), e.what());
    try {
      dist::shutdown();  // every rank stopped at the same step
    } catch (const Error& e) {
      return report(e.what());
    }
    return 0;
  } catch (const Error& e) {
    return report(e.what(), /*multi_line=*/true);
  } catch (const c10::Error& e) {
    return report(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return report(e.what());
  }
}

}  // namespace

int main(int argc, char** argv) {
  ensure_passive_omp_wait(argv);
  tune_allocator();
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress lines reach a log file as they happen
  CLI::App app{"tiller: instruction SFT, reward models and PPO-based RLHF on LibTorch"};
  app.require_subcommand(1);
  int threads = 0;
  // Added before the commands: `tiller run` reads it (it wins over the recipe's run.threads).
  app.add_option("--threads", threads,
                 "intra-op threads (0: all cores; the default: all cores, or a recipe's "
                 "run.threads, which this flag overrides)")
      ->check(CLI::Range(0, 1024));
  CommandAction action;
  add_commands(app, action);
  const int parsed = parse(app, argc, argv);
  if (parsed >= 0) return parsed;
  return run(action, threads);
}
