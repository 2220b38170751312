// SpinTeam (common/util/spin_team.h): every index once, in chunks no smaller than the grain, from
// a team of any size; loops back to back (workers spinning) and after the workers have gone to
// sleep; and a team destroyed while asleep or busy.
#include "common/util/spin_team.h"

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <vector>

using namespace tiller;

namespace {

// Runs one loop and checks its chunks: they cover [0, n) once, are at most threads() many, and
// (but for a loop too small to split) hold `grain` indices or more.
void expect_covers_once(SpinTeam& team, int64_t n, int64_t grain) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
  std::mutex mutex;
  std::vector<std::pair<int64_t, int64_t>> chunks;
  std::set<std::thread::id> threads;
  team.parallel_for(n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
    std::lock_guard<std::mutex> lock(mutex);
    chunks.emplace_back(begin, end);
    threads.insert(std::this_thread::get_id());
  });
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "index " << i;
  EXPECT_LE(static_cast<int>(chunks.size()), team.threads());
  EXPECT_EQ(chunks.size(), threads.size());  // one chunk a thread
  if (chunks.size() > 1) {
    for (const auto& [begin, end] : chunks) EXPECT_GE(end - begin, grain);
  }
}

}  // namespace

TEST(SpinTeam, CoversEveryIndexOnceInChunksOfAtLeastTheGrain) {
  for (int threads : {1, 2, 3, 5}) {
    SpinTeam team(threads);
    EXPECT_EQ(team.threads(), threads);
    for (int64_t n : {1, 2, 7, 64, 1001}) {
      for (int64_t grain : {1, 3, 100}) {
        SCOPED_TRACE(std::to_string(threads) + " threads, n " + std::to_string(n) + ", grain " +
                     std::to_string(grain));
        expect_covers_once(team, n, grain);
      }
    }
  }
  SpinTeam team(2);
  bool called = false;
  team.parallel_for(0, 1, [&](int64_t, int64_t) { called = true; });
  EXPECT_FALSE(called);
}

// Thousands of loops back to back, each summing into one total: a loop that returned before its
// chunks were done, or a worker that ran a chunk twice or missed a loop, changes the sum.
TEST(SpinTeam, LoopsBackToBackEachFinishBeforeTheNext) {
  SpinTeam team(3);
  std::atomic<int64_t> total{0};
  for (int loop = 0; loop < 5000; ++loop) {
    team.parallel_for(30, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) total.fetch_add(i);
    });
    ASSERT_EQ(total.load(), static_cast<int64_t>(loop + 1) * (29 * 30 / 2)) << "loop " << loop;
  }
}

// Workers that found no loop go to sleep; the next loop wakes them and runs as before.
TEST(SpinTeam, WakesSleepingWorkers) {
  SpinTeam team(3);
  expect_covers_once(team, 100, 1);
  while (team.sleeping() < 2) std::this_thread::yield();  // the workers stop spinning by themselves
  expect_covers_once(team, 100, 1);
  expect_covers_once(team, 100, 1);
}

TEST(SpinTeam, DestroyedAsleepOrJustAfterALoop) {
  {
    SpinTeam team(2);
    while (team.sleeping() < 1) std::this_thread::yield();
  }
  {
    SpinTeam team(4);
    expect_covers_once(team, 1000, 1);
  }
}
