// A deterministic synthetic language for the self-contained quickstart: short stories about
// children and animals, each ending happily or sadly. The ground truth is the ending: a happy
// one (a sentence with "happy" or "smiled") is preferred. From one seed it writes everything the
// chain needs: a pretraining corpus, SFT conversations (half of them sad), preference pairs
// (the same story with a happy and a sad ending) and prompts. Optionally also arithmetic problems
// with checkable answers ("What is 23 + 45?" -> "23 + 45 = 68. #### 68"), for online RL with a
// verifiable reward.
#pragma once
#include <cstdint>
#include <string>

namespace tiller {

// Arithmetic files, written when `enabled`. Each problem is "a op b" with a result that is not
// negative; a fixed tenth of all possible problems (chosen by a hash of the problem and the seed)
// is held out: the prompts come from it, the corpus and the SFT examples from the rest.
struct SyntheticArithmeticOptions {
  bool enabled = false;
  int64_t corpus_problems = 20000;  // arithmetic_corpus.txt: worked problems, one a line
  int64_t sft_examples = 4000;      // arithmetic_sft.jsonl: {"prompt", "completion"}
  int64_t prompts = 500;            // arithmetic_prompts.jsonl: {"prompt", "answer"}, held out
  int64_t max_operand = 99;         // + and - take operands in [0, max_operand]
  int64_t max_factor = 9;           // * takes factors in [0, max_factor]
  std::string operations = "+-";    // any of '+', '-', '*'
};

struct SyntheticDataOptions {
  std::string dir;
  uint64_t seed = 1;
  int64_t corpus_stories = 6000;    // corpus.txt: one story a line
  int64_t sft_examples = 2000;      // sft.jsonl: {"prompt", "completion"}
  int64_t preference_pairs = 2000;  // preferences.jsonl: {"prompt", "chosen", "rejected"}
  int64_t prompts = 1000;           // prompts.jsonl: {"prompt"}
  SyntheticArithmeticOptions arithmetic;
};

// The ground-truth rule as a regex (ECMAScript) that a recipe's ground_truth can name.
const char* synthetic_happy_ending_pattern();

// The marker before an arithmetic completion's final answer, as in GSM8K.
const char* synthetic_answer_marker();

// Writes corpus.txt, sft.jsonl, preferences.jsonl, prompts.jsonl (and with arithmetic enabled
// arithmetic_corpus.txt, arithmetic_sft.jsonl, arithmetic_prompts.jsonl) and manifest.json into
// options.dir, unless a manifest with the same options is already there. Files appear atomically.
// Returns true when it wrote them. Options out of range are a tiller::Error.
bool write_synthetic_dataset(const SyntheticDataOptions& options);

}  // namespace tiller
