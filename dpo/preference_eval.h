// `tiller eval preference`: how often a DPO-trained policy's implicit reward,
// beta * (log pi(response) - log pi_ref(response)), prefers the chosen response of held-out pairs,
// tokenized as the dpo stage tokenizes them.
#pragma once
#include <string>

#include "common/data/preference_data.h"

namespace tiller {

struct PreferenceEvalOptions {
  std::string model, reference, data;  // policy and reference directories, a preference file
  std::string format = "preference";   // preference or hh
  std::string template_name = "chatml";
  int64_t max_seq_len = 0;  // 0: the policy's max_position_embeddings
  double beta = 0.1;        // scales the rewards and margins (not the accuracy)
  int64_t micro_batch = 8;  // pairs per forward
};

struct PreferenceEvalResult {
  int64_t pairs = 0;
  double accuracy = 0;  // fraction with chosen reward > rejected reward
  double chosen_reward = 0, rejected_reward = 0, margin = 0;  // means
  PreferenceStats data;
};

PreferenceEvalResult evaluate_preference_policy(const PreferenceEvalOptions& options);

}  // namespace tiller
