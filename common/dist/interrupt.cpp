#include "common/dist/interrupt.h"

#include <unistd.h>

#include <csignal>

#include "common/dist/process_group.h"

namespace tiller {

namespace {

volatile std::sig_atomic_t g_interrupted = 0;

extern "C" void on_interrupt(int signal) {
  if (g_interrupted) {
    // The second signal: the default action (termination) right away.
    std::signal(signal, SIG_DFL);
    std::raise(signal);
    return;
  }
  g_interrupted = 1;
  static const char message[] =
      "\ntiller: stopping after the current step (a checkpoint is written); signal again to stop "
      "now\n";
  [[maybe_unused]] auto written = ::write(2, message, sizeof message - 1);
}

}  // namespace

void install_interrupt_handlers() {
  static bool installed = false;
  if (installed) return;
  installed = true;
  struct sigaction action {};
  action.sa_handler = on_interrupt;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

bool interrupt_requested() {
  return g_interrupted != 0;
}

void request_interrupt(bool requested) {
  g_interrupted = requested ? 1 : 0;
}

void stop_if_interrupted(const std::string& stage, int64_t step, bool already_saved,
                         const std::function<void()>& save) {
  // Every rank of a job stops at the same step (a signal may reach only some of them).
  if (dist::world().max(interrupt_requested() ? 1.0 : 0.0) == 0) return;
  request_interrupt();
  if (!already_saved) save();
  throw Interrupted("interrupted: stage " + stage + " stopped after step " + std::to_string(step) +
                    " with a checkpoint there; run the same command again to resume");
}

}  // namespace tiller
