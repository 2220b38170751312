// Generator: batched sampling with a preallocated KV cache (prefill, then decode one token at a
// time), on the very module it is given. PPO's rollouts come from here.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <vector>

#include "common/model/transformer.h"

namespace tiller {

struct SamplingOptions {
  int64_t max_new_tokens = 64;
  double temperature = 1.0;  // 0: greedy (log-probs then use temperature 1)
  int64_t top_k = 0;         // 0: no top-k filter
  double top_p = 1.0;        // 1: no nucleus filter
  uint64_t seed = 0;
  // One seed per output row: row b's draws come from its own generator, so its sample does not
  // depend on which other rows share the batch (PPO seeds each episode, whatever rank or batch
  // generates it). Empty: every row draws from one generator seeded with `seed`.
  std::vector<uint64_t> row_seeds;
  int64_t eos_id = 2;
  int64_t pad_id = 0;  // fills prompt padding and the tail after a row's EOS
  bool stop_at_eos = true;
  // Log-probs from one forward pass over prompt + response after sampling (the computation PPO's
  // training pass repeats, so the two agree exactly), instead of the decode steps' own: in fp32
  // those differ from a full pass by rounding (up to 1.4e-5 on stories260K, whose logits reach
  // ~22). Costs one batched forward.
  bool full_pass_logprobs = true;
  // Decode steps through FastDecoder (common/rollout/fast_decode.h: direct BLAS calls on the
  // model's own weights) where it supports the model: fp32 on the CPU, unsharded; and sampling
  // without top-k/top-p in plain loops over fp32 CPU logits. false: always LibTorch's ops, as
  // prefill uses (tests and benchmarks compare the two).
  bool fast_decode = true;
  // Whether FastDecoder may multiply by PanelMatrix copies of the weights where they are faster
  // (FastDecoder::WeightPanels); false: always BLAS (`tiller bench decode --no-weight-panels`
  // measures the two side by side).
  bool weight_panels = true;
  // Called after each step with that step's picks ([B] int64 on the CPU; pad_id on rows that had
  // already ended): `tiller chat` prints each token as it comes.
  std::function<void(const torch::Tensor& picks)> on_step;

  void validate() const;  // throws tiller::Error on out-of-range values
};

// Prompts left-padded to a common length, followed by generated responses.
struct GenerationBatch {
  torch::Tensor prompt_ids;      // [B, P] int64, left-padded with pad_id
  torch::Tensor prompt_mask;     // [B, P] bool, true on real prompt tokens
  torch::Tensor response_ids;    // [B, R] int64, pad_id after a row's EOS
  torch::Tensor response_mask;   // [B, R] bool, true on generated tokens (EOS included)
  torch::Tensor logprobs;        // [B, R] float, log p(token) under the temperature-scaled
                                 // distribution before top-k/top-p; 0 where response_mask is false
                                 // (see SamplingOptions::full_pass_logprobs)
  torch::Tensor ended_with_eos;  // [B] bool

  int64_t batch() const { return prompt_ids.size(0); }
  // Row b's generated tokens (EOS included when it was produced).
  std::vector<int64_t> response(int64_t row) const;
  // Prompt and response concatenated, [B, P + R], with the matching attention mask.
  torch::Tensor sequence_ids() const;
  torch::Tensor sequence_mask() const;
};

// Generates from each prompt (token ids, BOS included if wanted). The model is used as is, in
// no-grad mode; it must be a causal LM. Prompts may differ in length.
GenerationBatch generate(TransformerImpl& model, const std::vector<std::vector<int64_t>>& prompts,
                         const SamplingOptions& options);

// Generates group_size (G >= 1) samples from each prompt, as GRPO needs: row b * G + g of the
// batch ([B * G, ...], prompt_ids and prompt_mask repeated to match) is prompt b's g-th sample.
// Each prompt is prefilled once; its KV cache, last logits and positions are then repeated G
// times and the B * G rows decode together. The same samples as generate() on each prompt
// repeated G times in a row (with row_seeds, which then holds B * G seeds, one per output row).
// generate() is the case G = 1.
GenerationBatch generate_groups(TransformerImpl& model,
                                const std::vector<std::vector<int64_t>>& prompts,
                                int64_t group_size, const SamplingOptions& options);

// Logits as float divided by the sampling temperature (1 for greedy, temperature 0): the logits
// themselves at 1, without the copy a division makes (a GRPO micro-batch's are 65 MB) and the
// pass its backward adds.
torch::Tensor at_temperature(const torch::Tensor& logits, double temperature);

// The logits that predict each response token, from one full forward pass over prompt_len +
// response_len tokens (prompt left-padded, as GenerationBatch lays them), divided by
// `temperature` (1 when it is 0): [B, R, V] float. Sampling's log-probs, the reference's and
// PPO's training pass all come from here, so they agree to rounding.
torch::Tensor response_logits(TransformerImpl& model, const torch::Tensor& sequence_ids,
                              const torch::Tensor& sequence_mask, int64_t prompt_len,
                              double temperature);

// Log-probabilities of the response tokens under response_logits: [B, R], 0 where the response
// mask is false. The reference against which the generator's log-probs are checked.
torch::Tensor response_logprobs(TransformerImpl& model, const GenerationBatch& batch,
                                double temperature);

}  // namespace tiller
