// Two independent pieces of CPU work at once, each on its share of the intra-op threads.
//
// The models RLHF trains on a few cores are small: their per-operator overhead, not their matrix
// multiplies, sets the pace, and LibTorch's intra-op threads barely help (the quickstart's PPO
// training pass was faster on one thread than on two). Two models' passes that do not depend on
// each other (the actor's and the critic's) then finish sooner side by side, one thread each,
// than one after the other on both threads.
//
// While a SideBySide is enabled the caller's intra-op threads are halved (restored when it goes);
// run() starts `first` on a new thread, which gets the same share and the caller's thread-local
// state (grad mode, inference mode, autocast), runs `second` on the caller's thread, and waits
// for both. Neither piece may call a collective: the other piece could be calling one too.
// Disabled, run() calls first() then second().
#pragma once
#include <functional>

namespace tiller {

class SideBySide {
 public:
  // Enabled only when asked for and the caller has at least two intra-op threads.
  explicit SideBySide(bool wanted);
  ~SideBySide();
  SideBySide(const SideBySide&) = delete;
  SideBySide& operator=(const SideBySide&) = delete;

  bool enabled() const { return restore_threads_ > 0; }
  // Runs both and returns when both have; an exception from either is rethrown (first's when
  // both threw) once both have finished.
  void run(const std::function<void()>& first, const std::function<void()>& second) const;

 private:
  int restore_threads_ = 0;  // the caller's intra-op threads before; 0: disabled
};

}  // namespace tiller
