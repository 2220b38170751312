// EpochCursor: a stage's position in its training data, epoch by epoch. Each epoch has its own
// order (a plan computed from the epoch's number alone, so that a resumed run re-plans exactly);
// a step takes the next items, rolling over into the next epoch's plan when this one runs out.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "common/util/error.h"

namespace tiller {

template <typename Item>
class EpochCursor {
 public:
  // plan(epoch): the epoch's items in training order; must be deterministic in `epoch`.
  explicit EpochCursor(std::function<std::vector<Item>(int64_t epoch)> plan)
      : plan_(std::move(plan)) {}

  // Moves to `index` of `epoch` (a checkpoint's position).
  void seek(int64_t epoch, int64_t index) {
    epoch_ = epoch;
    index_ = index;
    planned_ = false;
  }

  // The current epoch's plan (computed once per epoch).
  const std::vector<Item>& current() {
    if (!planned_) {
      items_ = plan_(epoch_);
      planned_ = true;
    }
    return items_;
  }

  // The next `count` items, continuing into the next epoch's plan when this one runs out.
  std::vector<Item> take(int64_t count) {
    std::vector<Item> out;
    out.reserve(static_cast<size_t>(count));
    while (static_cast<int64_t>(out.size()) < count) {
      if (index_ >= static_cast<int64_t>(current().size())) {
        check(index_ > 0 || !items_.empty(), "EpochCursor: an epoch's plan is empty");
        ++epoch_;
        index_ = 0;
        planned_ = false;
        continue;
      }
      out.push_back(items_[static_cast<size_t>(index_++)]);
    }
    return out;
  }

  int64_t epoch() const { return epoch_; }
  int64_t index() const { return index_; }  // the next item of the epoch's plan

 private:
  std::function<std::vector<Item>(int64_t)> plan_;
  std::vector<Item> items_;
  bool planned_ = false;
  int64_t epoch_ = 0, index_ = 0;
};

}  // namespace tiller
