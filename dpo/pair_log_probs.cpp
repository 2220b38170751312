#include "dpo/pair_log_probs.h"

#include "common/model/shared_prefix.h"
#include "common/model/to_device.h"
#include "common/train/lm_loss.h"
#include "common/util/error.h"

namespace tiller {

int64_t chosen_response_tokens(const PreferencePair& pair) {
  return static_cast<int64_t>(pair.chosen.size()) - pair.chosen_prompt_tokens;
}

int64_t rejected_response_tokens(const PreferencePair& pair) {
  return static_cast<int64_t>(pair.rejected.size()) - pair.rejected_prompt_tokens;
}

std::vector<int64_t> identity_order(size_t n) {
  std::vector<int64_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = static_cast<int64_t>(i);
  return order;
}

namespace {

struct SequenceRow {
  const std::vector<int64_t>* tokens;
  int64_t prompt_tokens;
};

}  // namespace

SideLogProbs pair_log_probs(TransformerImpl& model, const PairSlice& slice, int64_t pad_id,
                            bool share_prefixes) {
  check(slice.count >= 1 && slice.begin + slice.count <= slice.order.size(),
        "pair_log_probs: the slice lies outside the order");
  std::vector<SequenceRow> rows;
  for (int side = 0; side < 2; ++side)
    for (size_t i = slice.begin; i < slice.begin + slice.count; ++i) {
      const PreferencePair& p = slice.pairs[static_cast<size_t>(slice.order[i])];
      rows.push_back(side == 0 ? SequenceRow{&p.chosen, p.chosen_prompt_tokens}
                               : SequenceRow{&p.rejected, p.rejected_prompt_tokens});
    }
  size_t longest = 0;
  for (const SequenceRow& r : rows) longest = std::max(longest, r.tokens->size());
  const auto n = static_cast<int64_t>(rows.size()), t = static_cast<int64_t>(longest);
  // ids, mask, targets: [2P, T]; targets[r][j] is the next token where it is a response token,
  // else -100 (the prompt, padding, and the last position, which predicts nothing).
  auto ids = torch::full({n, t}, pad_id, torch::kLong);
  auto mask = torch::zeros({n, t}, torch::kLong);
  auto targets = torch::full({n, t}, int64_t{-100}, torch::kLong);
  auto counts = torch::zeros({n}, torch::kFloat);
  auto id = ids.accessor<int64_t, 2>(), m = mask.accessor<int64_t, 2>(),
       target = targets.accessor<int64_t, 2>();
  int64_t tokens = 0;
  for (int64_t r = 0; r < n; ++r) {
    const auto& seq = *rows[static_cast<size_t>(r)].tokens;
    const int64_t len = static_cast<int64_t>(seq.size());
    const int64_t prompt = rows[static_cast<size_t>(r)].prompt_tokens;
    check(prompt >= 1 && prompt < len, "pair_log_probs: a sequence has no response tokens");
    for (int64_t j = 0; j < len; ++j) {
      id[r][j] = seq[static_cast<size_t>(j)];
      m[r][j] = 1;
      if (j >= prompt) target[r][j - 1] = seq[static_cast<size_t>(j)];
    }
    counts[r] = static_cast<float>(len - prompt);
    tokens += len;
  }
  std::vector<PrefixGroup> groups;
  if (share_prefixes) {
    std::vector<const std::vector<int64_t>*> sequences;
    for (const SequenceRow& r : rows) sequences.push_back(r.tokens);
    groups = pair_prefix_groups(sequences);
  }
  bool packed = false;
  const auto p = static_cast<int64_t>(slice.count);
  const auto sums = row_target_log_probs(model, targets, [&](const torch::Tensor& outputs) {
                      return hidden_sharing_prefixes(model, ids, mask, groups, &packed, outputs);
                    }).sum(1);  // [2P]
  counts = counts.to(sums.device());
  return {sums.narrow(0, 0, p),
          sums.narrow(0, p, p),
          counts.narrow(0, 0, p),
          counts.narrow(0, p, p),
          tokens,
          packed};
}

}  // namespace tiller
