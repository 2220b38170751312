// k-shot prompts, as lm-evaluation-harness builds them: k solved examples drawn from a pool with
// a fixed seed, each written as its prompt and target, joined by a separator before the test
// item's own prompt.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "eval/task_eval.h"

namespace tiller::eval {

struct FewShotOptions {
  int64_t k = 0;                 // solved examples before each test item
  uint64_t seed = 1234;          // which ones (with the item's index)
  std::string separator = "\n";  // between the examples and before the test prompt
};

// The pool indices of the k examples for test item `index`: the pool's eligible items in a
// permutation seeded by (seed, index), the first k. Eligible: a pool item with a target whose
// prompt differs from the test item's (so the item itself is never its own example, when the
// pool is the test file) and, when the test item has a group, of the same group. For one seed
// and item, the examples for k are the first k of those for k + 1. Throws tiller::Error naming
// the item when fewer than k are eligible.
std::vector<size_t> select_shots(const std::vector<TaskItem>& pool, const TaskItem& item,
                                 size_t index, int64_t k, uint64_t seed);

// The items with k examples before each prompt: example.prompt + example.target + separator,
// k times, then the item's prompt. k = 0 returns the items unchanged. Throws tiller::Error when a
// pool item has no target or k exceeds what the pool offers.
std::vector<TaskItem> with_shots(const std::vector<TaskItem>& items,
                                 const std::vector<TaskItem>& pool, const FewShotOptions& options);

}  // namespace tiller::eval
