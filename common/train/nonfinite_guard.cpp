#include "common/train/nonfinite_guard.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "common/util/error.h"

namespace tiller {

void NonFiniteGuard::set_spike_filter(double zscore, int64_t window) {
  spike_zscore_ = zscore;
  spike_window_ = zscore > 0 ? std::max<int64_t>(window, 2) : 0;
}

bool NonFiniteGuard::is_spike(double loss, double* zscore) const {
  const auto n = static_cast<int64_t>(recent_.size());
  if (spike_zscore_ <= 0 || n < std::min<int64_t>(spike_window_, 8)) return false;
  double mean = 0;
  for (double x : recent_) mean += x;
  mean /= static_cast<double>(n);
  double var = 0;
  for (double x : recent_) var += (x - mean) * (x - mean);
  const double std = std::sqrt(var / static_cast<double>(n - 1));
  // A flat window (std ~ 0) judges against a small floor instead of dividing by zero.
  *zscore = (loss - mean) / std::max(std, 1e-6 * std::max(1.0, std::abs(mean)));
  return *zscore > spike_zscore_;
}

void NonFiniteGuard::stop(const std::string& what, int64_t step) const {
  throw Error("stage " + stage_ + ": " + std::to_string(consecutive_) + " " + what +
              " in a row at step " + std::to_string(step) +
              "; stopped (the last good checkpoint in " + checkpoints_ +
              " is intact; lower train.lr or check the data)");
}

bool NonFiniteGuard::accept(double loss, double grad_norm, int64_t step) {
  if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
    ++skipped_;
    ++consecutive_;
    std::fprintf(stderr,
                 "[%s] step %lld: non-finite loss or gradient norm, step skipped (%lld in a row)\n",
                 stage_.c_str(), (long long)step, (long long)consecutive_);
    if (consecutive_ >= max_in_a_row_) stop("non-finite steps", step);
    return false;
  }
  double zscore = 0;
  if (is_spike(loss, &zscore)) {
    ++spikes_;
    ++consecutive_;
    std::fprintf(stderr,
                 "[%s] step %lld: loss %.4f is %.1f standard deviations above the last %zu steps' "
                 "mean, step skipped (%lld in a row)\n",
                 stage_.c_str(), (long long)step, loss, zscore, recent_.size(),
                 (long long)consecutive_);
    if (consecutive_ >= max_in_a_row_) stop("loss spikes", step);
    return false;
  }
  consecutive_ = 0;
  if (spike_window_ > 0) {
    recent_.push_back(loss);
    if (static_cast<int64_t>(recent_.size()) > spike_window_) recent_.erase(recent_.begin());
  }
  return true;
}

nlohmann::json NonFiniteGuard::to_json() const {
  return {{"consecutive_nonfinite", consecutive_},
          {"skipped_steps", skipped_},
          {"spike_skipped_steps", spikes_},
          {"recent_losses", recent_}};
}

void NonFiniteGuard::restore(const nlohmann::json& state) {
  consecutive_ = state.value("consecutive_nonfinite", int64_t{0});
  skipped_ = state.value("skipped_steps", int64_t{0});
  spikes_ = state.value("spike_skipped_steps", int64_t{0});
  recent_ = state.value("recent_losses", std::vector<double>{});
  if (spike_window_ > 0 && static_cast<int64_t>(recent_.size()) > spike_window_)
    recent_.erase(recent_.begin(), recent_.end() - spike_window_);
}

}  // namespace tiller
