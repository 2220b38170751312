// Per-sequence log-probabilities of preference pairs under a causal LM: each side's response
// tokens (those after the prompt, EOS included) summed, chosen and rejected rows of a batch in
// one forward. What every DPO-family loss, the reference cache and the evaluation read.
#pragma once
#include <torch/torch.h>

#include <vector>

#include "common/data/preference_data.h"
#include "common/model/transformer.h"

namespace tiller {

// Pairs [begin, begin + count) of `order` (indices into `pairs`).
struct PairSlice {
  const std::vector<PreferencePair>& pairs;
  const std::vector<int64_t>& order;
  size_t begin = 0, count = 0;
};

struct SideLogProbs {
  torch::Tensor chosen, rejected;                // [P] float, summed over response tokens
  torch::Tensor chosen_tokens, rejected_tokens;  // [P] float, response token counts
  int64_t tokens = 0;                            // tokens in the batch (padding excluded)
  bool packed = false;  // computed behind the pairs' shared prefixes (share_prefixes)
};

// One forward of `model` over the slice's 2P sequences (chosen rows, then rejected), right-padded
// with `pad_id` behind an attention mask. With share_prefixes, each pair's chosen and rejected
// rows are packed behind one copy of the tokens they begin with (their prompt, as tokenized) where
// the model's shape makes that cheaper (common/model/shared_prefix.h): the same sums to rounding.
// Autograd follows the caller's mode; autocast too.
SideLogProbs pair_log_probs(TransformerImpl& model, const PairSlice& slice, int64_t pad_id,
                            bool share_prefixes);

// Response token counts of one side of a pair.
int64_t chosen_response_tokens(const PreferencePair& pair);
int64_t rejected_response_tokens(const PreferencePair& pair);

// 0, 1, ..., n - 1.
std::vector<int64_t> identity_order(size_t n);

}  // namespace tiller
