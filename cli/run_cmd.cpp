// `tiller run RECIPE` (every stage, or --only / --from / --until) and `tiller <type> RECIPE` (the
// recipe's one stage of a registered type): flags only; the pipeline does the running.
#include <memory>

#include "cli/commands.h"
#include "common/recipe/pipeline.h"
#include "stages/stage_types.h"

namespace tiller {

namespace {

CLI::App* add_recipe_command(CLI::App& app, const std::string& name, const std::string& help,
                             const std::shared_ptr<PipelineOptions>& options) {
  auto* cmd = app.add_subcommand(name, help);
  cmd->add_option("recipe", options->path, "recipe JSON file")->required();
  cmd->add_option("overrides", options->overrides, "key.sub=value overrides");
  cmd->add_flag("--check", options->check_only, "validate the recipe and exit");
  return cmd;
}

// The pipeline with `tiller --threads N` when it was given (it wins over run.threads).
CommandAction pipeline_action(const std::shared_ptr<PipelineOptions>& options,
                              const CLI::Option* threads_flag) {
  return [options, threads_flag] {
    if (threads_flag != nullptr && threads_flag->count() > 0)
      options->threads = threads_flag->as<int>();
    return run_pipeline(stage_registry(), *options);
  };
}

}  // namespace

void add_recipe_commands(CLI::App& app, CommandAction& action) {
  auto options = std::make_shared<PipelineOptions>();
  const CLI::Option* threads_flag = app.get_option_no_throw("--threads");
  auto* run_cmd = add_recipe_command(
      app, "run", "run every stage of a recipe (finished stages are skipped)", options);
  run_cmd->add_option("--only", options->only, "run only this stage");
  run_cmd->add_option("--from", options->from, "start at this stage");
  run_cmd->add_option("--until", options->until, "stop after this stage");
  run_cmd->callback(
      [options, threads_flag, &action] { action = pipeline_action(options, threads_flag); });
  for (const StageType& type : stage_registry()) {
    auto* cmd = add_recipe_command(
        app, type.type, "run the recipe's " + type.type + " stage (" + type.description + ")",
        options);
    cmd->callback([options, threads_flag, name = type.type, &action] {
      options->only_type = name;
      action = pipeline_action(options, threads_flag);
    });
  }
}

}  // namespace tiller
