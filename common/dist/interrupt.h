// Ctrl-C and schedulers' SIGTERM: the first signal asks the training loops to stop after the
// current step; they write a checkpoint and throw Interrupted, which the CLI reports as one line
// before exiting 0 (run again to resume). A second signal ends the process at once.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "common/util/error.h"

namespace tiller {

struct Interrupted : Error {
  using Error::Error;
};

// Installs the SIGINT and SIGTERM handlers (once).
void install_interrupt_handlers();
bool interrupt_requested();
// For tests and embedders: as if a signal had arrived (or, with false, clears it).
void request_interrupt(bool requested = true);

// At the end of a step (on every rank of a job: it agrees whether any rank was signalled): when an
// interrupt was requested, saves a checkpoint through `save` unless
// `already_saved`, then throws Interrupted naming the stage and the step.
void stop_if_interrupted(const std::string& stage, int64_t step, bool already_saved,
                         const std::function<void()>& save);

}  // namespace tiller
