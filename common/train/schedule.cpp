#include "common/train/schedule.h"

#include <cmath>
#include <cstdint>

namespace tiller {

double learning_rate(const ScheduleOptions& o, int64_t step) {
  if (o.warmup_steps > 0 && step < o.warmup_steps)
    return o.lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup_steps);
  if (o.kind == "constant") return o.lr;
  const double min_lr = o.lr * o.min_lr_ratio;
  const int64_t decay_steps = std::max<int64_t>(1, o.total_steps - o.warmup_steps);
  const double progress =
      std::min(1.0, static_cast<double>(step - o.warmup_steps) / static_cast<double>(decay_steps));
  if (o.kind == "linear") return o.lr + (min_lr - o.lr) * progress;
  return min_lr + 0.5 * (o.lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace tiller
