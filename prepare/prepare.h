// `tiller data prepare` and the recipe's `prepare` stage: raw text in, tokenised shards out, in one
// streaming pass. Documents are read in order, cleaned and filtered on worker threads (the text
// steps, hashes, MinHash signatures, tokens), then deduplicated, split and written in input order
// by one thread, so that the output does not depend on the number of threads. Memory is bounded
// by `memory_mb` (the batches in flight, and the deduplication indexes, which are refused with a
// clear line before they would outgrow it), not by the corpus.
#pragma once
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

#include "common/recipe/config_reader.h"
#include "prepare/inputs.h"
#include "prepare/minhash.h"
#include "prepare/text_steps.h"

namespace tiller {

struct PrepareConfig {
  std::vector<InputSpec> inputs;
  InputOptions input;
  std::string tokenizer;  // tokenizer.model / tokenizer.json, or a model directory holding one
  std::string output;     // `data prepare`'s; a recipe stage writes RUN_DIR/<stage>/final
  int64_t threads = 0;    // workers; 0: every core
  int64_t memory_mb = 1024;
  TextSteps steps;
  bool exact_dedup = false;
  std::optional<MinHashOptions> near_dedup;
  double validation_fraction = 0.0;  // of the documents, chosen by a hash of their text
  uint64_t seed = 0;                 // of the split
  int64_t shard_tokens = int64_t{1} << 28;
  int64_t examples = 3;  // documents stats.json quotes for each step
};

// The keys of a `data prepare` config, or of a `prepare` stage (in_recipe: no "output" or
// "seed", which come from the stage's directory and the run's seed).
PrepareConfig read_prepare_config(ConfigReader& r, ConfigErrors& errors, bool in_recipe);
// Every value the preparation runs with (the resolved config written beside the shards).
nlohmann::json prepare_config_values(const PrepareConfig& config);

// Runs the preparation into `output_dir` (written under a temporary name, renamed when complete:
// a failed or killed run leaves no output). Returns the summary written as stats.json. `label`
// heads the progress lines ("[prepare]").
nlohmann::json prepare_data(const PrepareConfig& config, const std::string& output_dir,
                            const std::string& label);

// The tokenizer file a config's `tokenizer` names: the path itself, or tokenizer.model /
// tokenizer.json inside a directory.
std::string tokenizer_file(const std::string& path);

}  // namespace tiller
