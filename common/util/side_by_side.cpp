#include "common/util/side_by_side.h"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <exception>
#include <thread>

namespace tiller {

SideBySide::SideBySide(bool wanted) {
  const int threads = at::get_num_threads();
  if (!wanted || threads < 2) return;
  restore_threads_ = threads;
  // Sets this thread's share and the default a new thread starts from (LibTorch reads it when the
  // thread first runs a parallel operator), so the worker run() starts gets the same share.
  at::set_num_threads(threads / 2);
}

SideBySide::~SideBySide() {
  if (enabled()) at::set_num_threads(restore_threads_);
}

void SideBySide::run(const std::function<void()>& first,
                     const std::function<void()>& second) const {
  if (!enabled()) {
    first();
    second();
    return;
  }
  const at::ThreadLocalState caller_state;
  std::exception_ptr first_error, second_error;
  std::thread worker([&] {
    at::ThreadLocalStateGuard state(caller_state);
    try {
      first();
    } catch (...) {
      first_error = std::current_exception();
    }
  });
  try {
    second();
  } catch (...) {
    second_error = std::current_exception();
  }
  worker.join();
  if (first_error) std::rethrow_exception(first_error);
  if (second_error) std::rethrow_exception(second_error);
}

}  // namespace tiller
