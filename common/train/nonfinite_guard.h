// NonFiniteGuard: decides whether a step's update may be applied. A non-finite loss or gradient
// norm skips the update and is counted; too many in a row stop the stage with an error.
// Optionally a loss spike too: a loss more than `zscore` standard deviations above the mean of
// the last `window` accepted losses skips its update (counted apart); as many spikes in a row as
// non-finite steps allowed stop the stage, since the loss then stays where it jumped.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace tiller {

class NonFiniteGuard {
 public:
  NonFiniteGuard(std::string stage, std::string checkpoints, int64_t max_in_a_row)
      : stage_(std::move(stage)),
        checkpoints_(std::move(checkpoints)),
        max_in_a_row_(max_in_a_row) {}

  // True when both are finite. Otherwise counts the skip, says so on stderr, and throws
  // tiller::Error once max_in_a_row skips happened in a row (checkpoints are left intact).
  bool accept(double loss, double grad_norm, int64_t step);

  // Turns on the loss-spike filter (zscore <= 0: off). It judges once the window holds at least
  // min(window, 8) losses.
  void set_spike_filter(double zscore, int64_t window);

  int64_t skipped() const { return skipped_; }
  int64_t spikes_skipped() const { return spikes_; }
  // The counters and the loss window, for checkpoints (to_json) and resume (restore).
  nlohmann::json to_json() const;
  void restore(const nlohmann::json& state);

 private:
  bool is_spike(double loss, double* zscore) const;
  [[noreturn]] void stop(const std::string& what, int64_t step) const;

  std::string stage_, checkpoints_;
  int64_t max_in_a_row_;
  int64_t consecutive_ = 0, skipped_ = 0, spikes_ = 0;
  double spike_zscore_ = 0;
  int64_t spike_window_ = 0;
  std::vector<double> recent_;  // the last accepted losses, oldest first
};

}  // namespace tiller
