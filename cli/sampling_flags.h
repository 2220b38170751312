// What the commands that sample text from a model directory (generate, chat) share: the sampling
// flags, and the model and tokenizer loaded and checked against each other.
#pragma once
#include <CLI/CLI.hpp>

#include <string>

#include "common/model/transformer.h"
#include "common/rollout/generator.h"
#include "common/tokenizer/tokenizer.h"

namespace tiller {

// --max-new-tokens, --temperature, --top-p, --top-k and --seed, into `sampling` (its values are
// the defaults shown); `seed_help` says what the seed seeds.
void add_sampling_flags(CLI::App& cmd, SamplingOptions& sampling, const std::string& seed_help);

struct TextModel {
  Transformer model;
  Tokenizer tokenizer;
};

// `model_dir` with `adapter_dir` applied (none when empty), in eval mode, and `tokenizer_path`
// (default: the directory's), checked against the model. `sampling` takes the tokenizer's EOS and
// pad and leaves out the full-pass log-probs: these commands print text.
TextModel load_text_model(const std::string& model_dir, const std::string& adapter_dir,
                          const std::string& tokenizer_path, SamplingOptions& sampling);

}  // namespace tiller
