// SideBySide: both pieces run, on two threads with half the intra-op threads each, with the
// caller's grad mode; the caller's threads come back; errors reach the caller after both finish.
#include "common/util/side_by_side.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>

using namespace tiller;

namespace {

struct ThreadsForTest {
  int before = at::get_num_threads();
  explicit ThreadsForTest(int threads) { at::set_num_threads(threads); }
  ~ThreadsForTest() { at::set_num_threads(before); }
};

// What a piece saw of where and how it ran.
struct Seen {
  std::thread::id thread;
  int intra_op_threads = 0;
  bool grad_mode = true;
  bool ran = false;
};

std::function<void()> record(Seen& seen) {
  return [&seen] {
    seen.thread = std::this_thread::get_id();
    // A parallel operator first: LibTorch sets a new thread's count when it runs one.
    torch::ones({4096}).sum();
    seen.intra_op_threads = at::get_num_threads();
    seen.grad_mode = torch::GradMode::is_enabled();
    seen.ran = true;
  };
}

}  // namespace

TEST(SideBySide, RunsBothOnTwoThreadsWithHalfTheIntraOpThreadsEach) {
  ThreadsForTest four(4);
  Seen first, second;
  {
    SideBySide both(true);
    ASSERT_TRUE(both.enabled());
    torch::NoGradGuard no_grad;
    both.run(record(first), record(second));
  }
  EXPECT_TRUE(first.ran && second.ran);
  EXPECT_NE(first.thread, second.thread);
  EXPECT_EQ(second.thread, std::this_thread::get_id()) << "second runs on the caller's thread";
  EXPECT_EQ(first.intra_op_threads, 2);
  EXPECT_EQ(second.intra_op_threads, 2);
  EXPECT_FALSE(first.grad_mode) << "the caller's no-grad mode reaches the other thread";
  EXPECT_FALSE(second.grad_mode);
  EXPECT_EQ(at::get_num_threads(), 4) << "the caller's threads are restored";
}

TEST(SideBySide, OneAfterTheOtherWhenNotWantedOrWithOneThread) {
  for (const auto& [threads, wanted] : {std::make_pair(1, true), std::make_pair(2, false)}) {
    ThreadsForTest set(threads);
    Seen first, second;
    SideBySide both(wanted);
    EXPECT_FALSE(both.enabled());
    both.run(record(first), record(second));
    EXPECT_EQ(first.thread, std::this_thread::get_id());
    EXPECT_EQ(second.thread, std::this_thread::get_id());
    EXPECT_EQ(first.intra_op_threads, threads);
    EXPECT_TRUE(first.grad_mode);
  }
}

// The pieces really overlap: each waits (bounded) until the other has started.
TEST(SideBySide, ThePiecesOverlap) {
  ThreadsForTest two(2);
  std::atomic<int> started{0};
  std::atomic<bool> both_seen_by_first{false}, both_seen_by_second{false};
  const auto piece = [&](std::atomic<bool>& saw_both) {
    return [&] {
      ++started;
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (started.load() < 2 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::yield();
      saw_both = started.load() == 2;
    };
  };
  SideBySide(true).run(piece(both_seen_by_first), piece(both_seen_by_second));
  EXPECT_TRUE(both_seen_by_first);
  EXPECT_TRUE(both_seen_by_second);
}

TEST(SideBySide, AnErrorReachesTheCallerAfterBothFinish) {
  ThreadsForTest two(2);
  bool second_finished = false;
  const auto throws = [](const char* what) { return [what] { throw std::runtime_error(what); }; };
  try {
    SideBySide(true).run(throws("first failed"), [&] { second_finished = true; });
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "first failed");
  }
  EXPECT_TRUE(second_finished);
  try {
    SideBySide(true).run(throws("first failed"), throws("second failed"));
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "first failed") << "the first piece's error when both fail";
  }
  try {
    SideBySide(true).run([] {}, throws("second failed"));
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "second failed");
  }
  EXPECT_EQ(at::get_num_threads(), 2);
}
