// Starting a child process with its output in a file: what `tiller sweep` does for each grid
// point and what the multi-process tests do for each rank.
#pragma once
#include <string>
#include <vector>

namespace tiller {

// Starts args[0] (a path) with args, stdout and stderr appended to `output_file`, and this
// process's environment with the "NAME=value" entries of `environment` added or replacing
// theirs. Returns the child's pid (always > 0); throws tiller::Error naming the program when it
// cannot start.
int spawn_with_output(const std::vector<std::string>& args, const std::string& output_file,
                      const std::vector<std::string>& environment = {});

}  // namespace tiller
