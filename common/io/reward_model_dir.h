// Reward-model directories: loading one (a Hugging Face sequence classifier) as a RewardModel, and
// the pad id its config.json declares for a tokenizer. Here rather than in model/ because loading
// needs io's HF reader and the pad id needs the tokenizer (docs/design.md, dependency order).
#pragma once
#include <cstdint>
#include <string>

#include "common/model/reward_model.h"

namespace tiller {

class Tokenizer;

// Loads DIR as a reward model: it must be a single-label sequence classifier (num_labels 1).
RewardModel load_reward_model(const std::string& dir);

// The pad id a reward model's config.json declares. It must differ from EOS: every scored sequence
// ends with EOS, and transformers finds the last real token as the last one that is not pad.
// The tokenizer's own pad when it has one, else 0 (SentencePiece's <unk> in Llama vocabularies).
int64_t reward_pad_id(const Tokenizer& tokenizer);

}  // namespace tiller
