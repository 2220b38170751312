// Training passes over responses that share a prompt (GRPO's groups: G samples of each prompt)
// compute each prompt once. The rows of one prompt are packed into one sequence: the prompt's
// real tokens, then each response in a segment of its own that sees the prompt and itself, never
// another response, at the positions it has in its own row. Attention and every weight see what
// they see in response_logits, so the logits are the same up to rounding; the prompt's tokens go
// through the model once per pack instead of once per row.
//
// A pack of m responses costs attention over a longer sequence (each segment's span reaches back
// over the segments before it), so m is chosen by a multiply-add count of the model's shape:
// long responses on a narrow model stay one row per response (m = 1: response_logits itself).
#pragma once
#include <torch/torch.h>

#include <vector>

#include "common/model/model_config.h"
#include "common/model/transformer.h"

namespace tiller {

// How many responses of one prompt go in one packed sequence (1: none packed), for prompts of
// `prompt_tokens` real tokens and responses `response_len` wide, given how many rows each prompt
// has in the batch: the m in [1, max rows] that minimises the multiply-adds of the transformer's
// layers (projections per token, attention per query-key pair the fused kernel visits), where it
// saves at least a fifth of them (else 1).
int64_t shared_prompt_pack_size(const ModelConfig& config, int64_t prompt_tokens,
                                int64_t response_len, const std::vector<int64_t>& rows_per_prompt);

// response_logits (common/rollout/generator.h) for the same rows, with rows whose prompts are
// equal (ids and mask) sharing one computation of it. Any row order; rows of one prompt need not
// be adjacent. [B, R, V] float, divided by `temperature` (1 when it is 0).
torch::Tensor response_logits_sharing_prompts(TransformerImpl& model,
                                              const torch::Tensor& sequence_ids,
                                              const torch::Tensor& sequence_mask,
                                              int64_t prompt_len, double temperature);

}  // namespace tiller
