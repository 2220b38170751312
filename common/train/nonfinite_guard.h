// NonFiniteGuard: decides whether a step's update may be applied. A non-finite loss or gradient
// norm skips the update and is counted; too many in a row stop the stage with an error.
#pragma once
#include <nlohmann/json.hpp>

#include <string>

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

  int64_t skipped() const { return skipped_; }
  // The counters, for checkpoints (to_json) and resume (restore).
  nlohmann::json to_json() const {
    return {{"consecutive_nonfinite", consecutive_}, {"skipped_steps", skipped_}};
  }
  void restore(const nlohmann::json& state);

 private:
  std::string stage_, checkpoints_;
  int64_t max_in_a_row_;
  int64_t consecutive_ = 0, skipped_ = 0;
};

}  // namespace tiller
