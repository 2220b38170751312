// A deterministic synthetic language for the self-contained quickstart: short stories about
// children and animals, each ending happily or sadly. The ground truth is the ending: a happy
// one (a sentence with "happy" or "smiled") is preferred. From one seed it writes everything the
// chain needs: a pretraining corpus, SFT conversations (half of them sad), preference pairs
// (the same story with a happy and a sad ending) and prompts.
#pragma once
#include <cstdint>
#include <string>

namespace tiller {

struct SyntheticDataOptions {
  std::string dir;
  uint64_t seed = 1;
  int64_t corpus_stories = 6000;    // corpus.txt: one story a line
  int64_t sft_examples = 2000;      // sft.jsonl: {"prompt", "completion"}
  int64_t preference_pairs = 2000;  // preferences.jsonl: {"prompt", "chosen", "rejected"}
  int64_t prompts = 1000;           // prompts.jsonl: {"prompt"}
};

// The ground-truth rule as a regex (ECMAScript) that a recipe's ground_truth can name.
const char* synthetic_happy_ending_pattern();

// Writes corpus.txt, sft.jsonl, preferences.jsonl, prompts.jsonl and manifest.json into
// options.dir, unless a manifest with the same options is already there. Files appear atomically.
// Returns true when it wrote them.
bool write_synthetic_dataset(const SyntheticDataOptions& options);

}  // namespace tiller
