// Wall-clock durations for the seconds a stage reports (never for a decision that must be
// reproducible).
#pragma once
#include <chrono>

namespace tiller {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace tiller
