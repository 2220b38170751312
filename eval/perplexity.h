// Perplexity of a causal LM on held-out text (`tiller eval perplexity`), and the token stream both
// it and `tiller quantize`'s calibration read from a text file.
#pragma once
#include <string>
#include <vector>

#include "common/model/transformer.h"
#include "common/tokenizer/tokenizer.h"

namespace tiller::eval {

// A text file's documents (its non-empty lines, or the "text" of each JSONL record) as pretraining
// reads them, each encoded with BOS, back to back, until at least `max_tokens` (0: the whole
// file). Throws tiller::Error naming the file when it cannot be read or gives no tokens.
std::vector<int64_t> text_token_stream(const Tokenizer& tokenizer, const std::string& path,
                                       int64_t max_tokens = 0);

struct PerplexityResult {
  double mean_nll = 0;  // nats per predicted token
  double perplexity = 0;
  int64_t windows = 0, predicted_tokens = 0;
};

// Cuts `tokens` into windows of `length` (the last partial one dropped, at most `max_windows`
// when > 0) and scores each token of a window from those before it in the window.
PerplexityResult perplexity(TransformerImpl& model, const std::vector<int64_t>& tokens,
                            int64_t length, int64_t max_windows = 0, int64_t batch = 8);

}  // namespace tiller::eval
