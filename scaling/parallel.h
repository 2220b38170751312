// parallel_for: runs body(i) for i in [0, count) on a few threads. Each index is independent, so
// the results do not depend on the thread count.
#pragma once
#include <algorithm>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace tiller::scaling {

// threads <= 0: one per hardware thread. The first exception a body throws is rethrown here once
// every thread has stopped.
template <typename Body>
void parallel_for(size_t count, int threads, const Body& body) {
  size_t workers =
      threads > 0 ? size_t(threads) : std::max(1u, std::thread::hardware_concurrency());
  workers = std::min(workers, count);
  if (workers <= 1) {
    for (size_t i = 0; i < count; ++i) body(i);
    return;
  }
  std::exception_ptr failure;
  std::mutex failure_mutex;
  std::vector<std::thread> pool;
  for (size_t w = 0; w < workers; ++w) {
    pool.emplace_back([&, w] {
      try {
        for (size_t i = w; i < count; i += workers) body(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(failure_mutex);
        if (!failure) failure = std::current_exception();
      }
    });
  }
  for (std::thread& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace tiller::scaling
