// log_softmax(logits)[target] at every position: the language-model loss (negated and summed)
// and PPO's per-token log-probabilities, as one operator forward and one backward on fp32 CPU.
//
// Written in LibTorch it is log_softmax, a gather (or nll_loss), and backward a zero-filled
// [N, V] tensor, a scatter and log_softmax's backward: at a 32000-token vocabulary that is four
// passes over a 130 MB tensor of logits for a 1024-token batch, and LibTorch 1.13's
// log_softmax backward alone took 6% of a llama-124m training step. Here the forward reads each
// row once (its largest value and its exp-sum, keeping only log-sum-exp per row) and the backward
// writes the gradient once. Anything but fp32 on the CPU takes the LibTorch formula, which is
// also the reference the tests hold this to.
#pragma once
#include <torch/torch.h>

namespace tiller {

// logits [..., V], targets [...] (int64, the same leading shape) -> [...] fp32. A target equal
// to ignore_index gives 0 and no gradient; any other target outside [0, V) is an Error.
torch::Tensor token_log_probs(const torch::Tensor& logits, const torch::Tensor& targets,
                              int64_t ignore_index = -100);

// token_log_probs, and beside it the entropy of each position's distribution: [...] fp32 without
// gradient, 0 where the target is ignore_index. Fused, from the same two passes over each row (GRPO
// and PPO log both; a separate entropy read each micro-batch's logits twice more).
struct LogProbsAndEntropy {
  torch::Tensor logp, entropy;
};
LogProbsAndEntropy token_log_probs_and_entropy(const torch::Tensor& logits,
                                               const torch::Tensor& targets,
                                               int64_t ignore_index = -100);

// The LibTorch formula (what token_log_probs computes where it does not fuse).
torch::Tensor token_log_probs_reference(const torch::Tensor& logits, const torch::Tensor& targets,
                                        int64_t ignore_index = -100);

}  // namespace tiller
