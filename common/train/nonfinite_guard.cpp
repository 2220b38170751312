#include "common/train/nonfinite_guard.h"

#include <cmath>
#include <cstdio>

#include "common/util/error.h"

namespace tiller {

bool NonFiniteGuard::accept(double loss, double grad_norm, int64_t step) {
  if (std::isfinite(loss) && std::isfinite(grad_norm)) {
    consecutive_ = 0;
    return true;
  }
  ++skipped_;
  ++consecutive_;
  std::fprintf(stderr,
               "[%s] step %lld: non-finite loss or gradient norm, step skipped (%lld in a row)\n",
               stage_.c_str(), (long long)step, (long long)consecutive_);
  if (consecutive_ >= max_in_a_row_) {
    throw Error("stage " + stage_ + ": " + std::to_string(consecutive_) +
                " non-finite steps in a row at step " + std::to_string(step) +
                "; stopped (the last good checkpoint in " + checkpoints_ +
                " is intact; lower train.lr or check the data)");
  }
  return false;
}

void NonFiniteGuard::restore(const nlohmann::json& state) {
  consecutive_ = state.value("consecutive_nonfinite", int64_t{0});
  skipped_ = state.value("skipped_steps", int64_t{0});
}

}  // namespace tiller
