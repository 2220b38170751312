// `tiller checkpoint verify DIR...`: reads every checkpoint of a stage in full.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "common/train/checkpoint.h"
#include "common/util/files.h"

namespace tiller {

namespace {

void verify(const std::vector<std::string>& dirs) {
  for (const auto& dir : dirs) {
    const auto steps = verify_checkpoints(dir);
    std::string detail;
    if (!steps.empty()) {
      detail =
          " (steps " + std::to_string(steps.front()) + ".." + std::to_string(steps.back()) + ")";
      if (!path_exists(dir + "/latest"))
        detail += "; no `latest`: none committed, a resume starts over";
    }
    std::printf("%s: %zu checkpoints read in full%s\n", dir.c_str(), steps.size(), detail.c_str());
  }
}

}  // namespace

void add_checkpoint_command(CLI::App& app, CommandAction& action) {
  auto dirs = std::make_shared<std::vector<std::string>>();
  auto* checkpoint_cmd = app.add_subcommand("checkpoint", "checkpoint tools");
  auto* verify_cmd = checkpoint_cmd->add_subcommand(
      "verify", "read every checkpoint in CHECKPOINTS_DIR... in full (no model needed)");
  verify_cmd->add_option("dirs", *dirs, "a stage's checkpoints/ directory")->required();
  checkpoint_cmd->require_subcommand(1);
  verify_cmd->callback([dirs, &action] {
    action = [dirs] {
      verify(*dirs);
      return 0;
    };
  });
}

}  // namespace tiller
