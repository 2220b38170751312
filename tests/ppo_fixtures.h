// What the PPO and GRPO trainer tests (tiller_tests and tiller_device_tests) feed the trainers: a
// scorer that prefers one token, short numbered prompts and their episodes' seeds.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace tiller::test {

constexpr int64_t kRewardedToken = 7;

// The fraction of each response's tokens that are kRewardedToken: a reward model that prefers one
// token, a function of the tokens alone.
inline torch::Tensor rewarded_token_frequency(const std::vector<std::vector<int64_t>>&,
                                              const std::vector<std::vector<int64_t>>& responses) {
  std::vector<float> out;
  for (const auto& r : responses) {
    int64_t hits = 0;
    for (int64_t id : r) hits += id == kRewardedToken;
    out.push_back(r.empty() ? 0.0f : static_cast<float>(hits) / static_cast<float>(r.size()));
  }
  return torch::tensor(out);
}

// `count` prompts of BOS and 1 to `longest` tokens of 3..31, each different.
inline std::vector<std::vector<int64_t>> numbered_prompts(int64_t count, int64_t longest) {
  std::vector<std::vector<int64_t>> out;
  for (int64_t i = 0; i < count; ++i) {
    std::vector<int64_t> p = {1};  // BOS
    for (int64_t j = 0; j < 1 + i % longest; ++j) p.push_back(3 + (i * 7 + j * 5) % 29);
    out.push_back(p);
  }
  return out;
}

// `count` episode seeds, base * 1000 + i: one batch's seeds differ from another base's.
inline std::vector<uint64_t> episode_seeds(int64_t count, uint64_t base) {
  std::vector<uint64_t> out;
  for (int64_t i = 0; i < count; ++i) out.push_back(base * 1000 + static_cast<uint64_t>(i));
  return out;
}

}  // namespace tiller::test
