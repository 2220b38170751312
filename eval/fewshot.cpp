#include "eval/fewshot.h"

#include "common/data/batching.h"  // seeded_permutation
#include "common/util/error.h"

namespace tiller::eval {

std::vector<size_t> select_shots(const std::vector<TaskItem>& pool, const TaskItem& item,
                                 size_t index, int64_t k, uint64_t seed) {
  check(k >= 0, "k-shot: k must be >= 0, got " + std::to_string(k));
  if (k == 0) return {};
  std::vector<size_t> eligible;
  for (size_t i = 0; i < pool.size(); ++i)
    if (pool[i].has_target && pool[i].prompt != item.prompt &&
        (item.group.empty() || pool[i].group == item.group))
      eligible.push_back(i);
  check(static_cast<int64_t>(eligible.size()) >= k,
        item.where + ": k-shot needs " + std::to_string(k) + " examples but the pool has only " +
            std::to_string(eligible.size()) + " eligible" +
            (item.group.empty() ? "" : " in group \"" + item.group + "\"") +
            " (other prompts, with a target)");
  uint64_t state = seed ^ (0x9E3779B97F4A7C15ULL * (static_cast<uint64_t>(index) + 1));
  const std::vector<int64_t> order =
      seeded_permutation(static_cast<int64_t>(eligible.size()), splitmix64(state));
  std::vector<size_t> shots;
  for (int64_t i = 0; i < k; ++i) shots.push_back(eligible[static_cast<size_t>(order[i])]);
  return shots;
}

std::vector<TaskItem> with_shots(const std::vector<TaskItem>& items,
                                 const std::vector<TaskItem>& pool, const FewShotOptions& options) {
  if (options.k == 0) return items;
  check(!pool.empty(), "k-shot: the pool of examples is empty");
  std::vector<TaskItem> out = items;
  for (size_t i = 0; i < items.size(); ++i) {
    std::string prefix;
    for (size_t shot : select_shots(pool, items[i], i, options.k, options.seed))
      prefix += pool[shot].prompt + pool[shot].target + options.separator;
    out[i].prompt = prefix + items[i].prompt;
  }
  return out;
}

}  // namespace tiller::eval
