// The SFT stage (prompt-masked instruction tuning) and pretraining (every token counts), which
// share one loop: parse -> build model, data, optimizer -> resume -> train -> save final/.
#pragma once
#include <nlohmann/json.hpp>

#include <string>

#include "common/data/sft_data.h"
#include "common/recipe/lora_section.h"
#include "common/recipe/recipe.h"
#include "common/recipe/stage_registry.h"
#include "common/train/train_config.h"

namespace tiller {

struct SftStageConfig {
  std::string name;
  bool pretrain = false;
  std::string init;         // "@base", "@stage" or a directory; empty: from scratch (pretrain)
  std::string model_shape;  // from scratch: a built-in shape ...
  nlohmann::json model_fields =
      nlohmann::json::object();      // ... with HF config fields overriding it
  std::string tokenizer;             // from scratch: tokenizer.model, or ...
  std::string tokenizer_corpus;      // ... a SentencePiece model trained on this text file
  int64_t tokenizer_vocab_size = 0;  //     with this many pieces (into RUN_DIR/<stage>/tokenizer/)
  SftDataOptions data;
  std::string val_path;  // a validation file, or empty to split val_fraction off train
  double val_fraction = 0.1;
  bool packing = true;
  TrainConfig train;
  LoraSection lora;  // enabled: adapters on the init model, the base frozen
};

// Parses a pretrain (`pretrain`: every token counts, no init by default) or sft stage body;
// mistakes go to `errors` with their paths.
SftStageConfig parse_sft_stage(const StageEntry& entry, ConfigErrors& errors, bool pretrain);

// Every value the stage runs with, defaults included, as stage-body sections ({"data": {...},
// "train": {...}, "init": ...}): the resolved recipe's, which parse_sft_stage reads back to the
// same config. Keys pretraining refuses are left out of a pretrain stage's.
nlohmann::json sft_stated_values(const SftStageConfig& config);

// Runs the stage to completion (resuming from RUN_DIR/<name>/checkpoints when present) and
// writes RUN_DIR/<name>/final/. Returns a summary (figures for the run's report).
nlohmann::json run_sft_stage(const Recipe& recipe, const SftStageConfig& config);

// The registry's entry for pretraining (`pretrain`) or SFT: parser, runner, summary and report.
StageType sft_stage_type(bool pretrain);

}  // namespace tiller
