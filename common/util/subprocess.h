// Running a program to completion with bytes on its stdin, its output captured and a wall-clock
// limit: what a command reward does with its verifier. POSIX (Linux) only.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace tiller {

struct SubprocessOptions {
  double timeout_seconds = 30;      // wall clock, from the start to the program's exit
  std::string working_dir;          // "" = this process's current directory
  size_t stderr_tail_bytes = 4096;  // how much of the end of stderr is kept
  // More stdout than this stops the program like the time limit does (a runaway program must not
  // fill this process's memory).
  size_t stdout_limit_bytes = size_t{64} << 20;
};

struct SubprocessResult {
  // Non-empty when the program did not start ("No such file or directory"): nothing else is set.
  std::string spawn_error;
  // Killed at the time limit (its process group: SIGTERM, then SIGKILL after a short grace).
  bool timed_out = false;
  // Stopped the same way for printing more than stdout_limit_bytes (output holds what came).
  bool output_too_long = false;
  int exit_code = -1;      // its exit status when it exited, else -1
  int signal = 0;          // the signal that ended it, else 0
  std::string output;      // stdout, whole
  std::string error_tail;  // the last stderr_tail_bytes of stderr

  bool succeeded() const {
    return spawn_error.empty() && !timed_out && !output_too_long && exit_code == 0;
  }
};

// Starts argv[0] (looked up on PATH when it has no '/'; no shell) with argv, in a process group of
// its own, writes `input` to its stdin and closes it, and reads stdout and stderr until both end,
// all at once (a program that writes before it reads does not deadlock). A program that exits
// without reading its input is not an error of this function (EPIPE is absorbed and SIGPIPE
// never reaches this process). When the program exits, what is left of its process group is
// killed; at the time limit (or the stdout limit) the whole group is. The program is always reaped.
// Throws tiller::Error only when this process cannot make pipes or poll them (the program killed
// first).
SubprocessResult run_subprocess(const std::vector<std::string>& argv, const std::string& input,
                                const SubprocessOptions& options);

}  // namespace tiller
