// The subcommands that run after the command line is parsed (the interrupt handlers installed and
// --threads set): each registers its flags on the app and, when it is the one chosen, leaves its
// work in `action` for main to run. One file each: cli/<command>_cmd.cpp.
#pragma once
#include <CLI/CLI.hpp>

#include <functional>

namespace tiller {

// A chosen subcommand's work; returns the process's exit code.
using CommandAction = std::function<int()>;

void add_version_command(CLI::App& app, CommandAction& action);           // version_cmd.cpp
void add_convert_command(CLI::App& app, CommandAction& action);           // convert_cmd.cpp
void add_merge_command(CLI::App& app, CommandAction& action);             // merge_cmd.cpp
void add_quantize_command(CLI::App& app, CommandAction& action);          // quantize_cmd.cpp
void add_export_command(CLI::App& app, CommandAction& action);            // export_cmd.cpp
void add_inspect_command(CLI::App& app, CommandAction& action);           // inspect_cmd.cpp
void add_checkpoint_command(CLI::App& app, CommandAction& action);        // checkpoint_cmd.cpp
void add_generate_command(CLI::App& app, CommandAction& action);          // generate_cmd.cpp
void add_chat_command(CLI::App& app, CommandAction& action);              // chat_cmd.cpp
void add_tokenize_commands(CLI::App& app, CommandAction& action);         // tokenize_cmd.cpp
void add_data_commands(CLI::App& app, CommandAction& action);             // data_cmd.cpp
void add_bench_commands(CLI::App& app, CommandAction& action);            // bench_cmd.cpp
void add_recipe_commands(CLI::App& app, CommandAction& action);           // run_cmd.cpp
void add_eval_reward_command(CLI::App& eval_cmd, CommandAction& action);  // eval_reward_cmd.cpp
void add_eval_preference_command(CLI::App& eval_cmd,
                                 CommandAction& action);  // eval_preference_cmd.cpp
void add_eval_perplexity_command(CLI::App& eval_cmd, CommandAction& action);  // quantize_cmd.cpp

}  // namespace tiller
