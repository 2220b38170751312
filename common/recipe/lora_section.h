// The "lora" section every training stage accepts (sft, pretrain, reward, dpo, rlhf, grpo): one
// reader, one statement and one place where the adapters meet the stage's model, so that the
// stages accept and state the same keys. Absent: the stage trains full weights.
#pragma once
#include <nlohmann/json.hpp>

#include <string>

#include "common/model/lora.h"
#include "common/model/transformer.h"
#include "common/recipe/config_reader.h"

namespace tiller {

struct LoraSection {
  bool enabled = false;
  LoraOptions options;
  std::string init_adapter;  // a PEFT adapter directory the adapters start from; empty: fresh
};

// Reads stage.lora: `rank` (8), `alpha` (16), `dropout` (0), `targets` ("all-linear" or a list of
// projection names; default all-linear), `init` (kaiming | gaussian), `rslora` (false),
// `base_dtype` (fp32 | bf16),
// `modules_to_save` ([]), `init_adapter`. What needs no model is checked here (rank >= 1, known
// targets and modules, an existing init_adapter); the rest when the adapters are attached.
// `key` names the section: "lora", or "critic_lora" for PPO's critic.
LoraSection read_lora_section(ConfigReader& stage, ConfigErrors& errors,
                              const std::string& key = "lora");

// A model with a score head that starts fresh, or from a reward model, trains it whole beside the
// adapters (as PEFT's SEQ_CLS task adds it to modules_to_save): adds "score" when missing.
void train_score_head_whole(LoraSection& section);

// A stage whose reference is its own policy with the adapters switched off (rlhf, grpo, dpo by
// default) refuses modules_to_save: switching adapters off leaves a trained whole module as
// trained, so the reference would not be the base. Reported at `stage`'s lora.modules_to_save.
void refuse_modules_to_save_beside_switched_off_reference(const LoraSection& section,
                                                          ConfigReader& stage,
                                                          ConfigErrors& errors);

// The section as the resolved recipe states it (every value that ran, targets expanded).
nlohmann::json lora_section_values(const LoraSection& section);

// With the section enabled: attaches adapters to `model` (fresh from `seed`, or init_adapter's
// weights), records `base` as the adapter's base model, and says on stdout how many parameters
// train. A no-op when disabled. Errors name `stage`.
void apply_lora_section(TransformerImpl& model, const LoraSection& section, const std::string& base,
                        uint64_t seed, const std::string& stage);

}  // namespace tiller
