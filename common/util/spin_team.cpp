#include "common/util/spin_team.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TILLER_SPIN_PAUSE() _mm_pause()
#else
#define TILLER_SPIN_PAUSE() std::this_thread::yield()
#endif

namespace tiller {

SpinTeam::SpinTeam(int threads) {
  for (int w = 1; w < threads; ++w) workers_.emplace_back([this, w] { work(w); });
}

SpinTeam::~SpinTeam() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_.store(true);
  }
  wake_.notify_all();
  for (auto& worker : workers_) worker.join();
}

void SpinTeam::run_chunk(int64_t chunk) const {
  if (chunk >= chunks_) return;
  const int64_t begin = chunk * chunk_size_;
  (*body_)(begin, std::min(n_, begin + chunk_size_));
}

void SpinTeam::parallel_for(int64_t n, int64_t grain,
                            const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  const int64_t most = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
  const int64_t chunks = std::min<int64_t>(threads(), most);
  if (chunks <= 1) return body(0, n);
  body_ = &body;
  n_ = n;
  chunk_size_ = (n + chunks - 1) / chunks;
  chunks_ = (n + chunk_size_ - 1) / chunk_size_;
  pending_.store(static_cast<int>(workers_.size()));
  epoch_.fetch_add(1);  // publishes the fields above (sequentially consistent)
  if (sleeping_.load() > 0) {
    std::lock_guard<std::mutex> lock(mutex_);
    wake_.notify_all();
  }
  run_chunk(0);
  while (pending_.load() > 0) TILLER_SPIN_PAUSE();
}

void SpinTeam::work(int worker) {
  uint64_t seen = 0;
  for (;;) {
    const auto give_up =
        std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicroseconds);
    for (int spins = 0; epoch_.load() == seen && !stopping_.load(); ++spins) {
      TILLER_SPIN_PAUSE();
      if (spins % 64 == 0 && std::chrono::steady_clock::now() > give_up) {
        std::unique_lock<std::mutex> lock(mutex_);
        sleeping_.fetch_add(1);
        wake_.wait(lock, [&] { return epoch_.load() != seen || stopping_.load(); });
        sleeping_.fetch_sub(1);
      }
    }
    if (stopping_.load()) return;
    seen = epoch_.load();
    run_chunk(worker);
    pending_.fetch_sub(1);
  }
}

}  // namespace tiller
