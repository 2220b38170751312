// `tiller version`: the version and the LibTorch in use.
#include <cstdio>

#include "cli/commands.h"
#include "common/torch_compat.h"
#include "tiller_build_paths.h"

namespace tiller {

void add_version_command(CLI::App& app, CommandAction& action) {
  auto* version = app.add_subcommand("version", "print the version and the LibTorch in use");
  version->callback([&action] {
    action = [] {
      std::printf("tiller %s (LibTorch %s%s)\n", TILLER_VERSION, compat::torch_version().c_str(),
                  compat::cuda_available() ? ", CUDA" : ", CPU");
      return 0;
    };
  });
}

}  // namespace tiller
