// SpinTeam: threads for a run of many short parallel loops, such as a decode step's (about 50 a
// step, tens of microseconds each).
//
// Tiller runs OpenMP's threads passive (common/util/runtime.h: spinning pools of LibTorch and
// OpenBLAS once slowed a training step 100x when another process shared the cores), so every
// at::parallel_for wakes its threads from sleep: about 40 us each on the 2-core EPYC, 2 ms of a
// llama-15m decode step at batch 32 (`OMP_WAIT_POLICY=active` gave 1.24x its tokens/s). A team's
// workers spin between loops instead, and sleep once no loop has come for kSpinMicroseconds: a team
// left idle costs nothing, and the spinning stops with the run of loops. One team per owner (the
// decoder of one generate() call); parallel_for is called from one thread at a time.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tiller {

class SpinTeam {
 public:
  // Longer than what a decoder does between two steps' loops (the sampling of 32 rows of a
  // 32,000-token vocabulary took about 0.4 ms), so that its workers do not sleep every step.
  static constexpr int64_t kSpinMicroseconds = 1000;

  // `threads` counts the caller: threads - 1 workers (none for 1 or less).
  explicit SpinTeam(int threads);
  ~SpinTeam();
  SpinTeam(const SpinTeam&) = delete;
  SpinTeam& operator=(const SpinTeam&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls body(begin, end) over [0, n) in at most threads() contiguous chunks of `grain` or more
  // indices, the first on the calling thread, and returns when all have returned. body must not
  // throw.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body);

  // Workers sleeping now, waiting for a loop (tests).
  int sleeping() const { return sleeping_.load(); }

 private:
  void work(int worker);
  void run_chunk(int64_t chunk) const;

  std::vector<std::thread> workers_;
  // The loop being run: published by bumping epoch_, finished when pending_ reaches 0.
  const std::function<void(int64_t, int64_t)>* body_ = nullptr;
  int64_t n_ = 0, chunk_size_ = 0, chunks_ = 0;
  std::atomic<uint64_t> epoch_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> sleeping_{0};
  std::atomic<bool> stopping_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
};

}  // namespace tiller
