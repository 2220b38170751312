// Learning-rate schedule: linear warmup, then cosine, linear or constant decay to min_lr.
#pragma once
#include <string>

namespace tiller {

struct ScheduleOptions {
  double lr = 3e-4;
  double min_lr_ratio = 0.1;  // the final learning rate as a fraction of lr
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  std::string kind = "cosine";  // "cosine", "linear" or "constant"
};

// The learning rate for optimizer step `step` (0-based).
double learning_rate(const ScheduleOptions& options, int64_t step);

}  // namespace tiller
