#include "eval/perplexity.h"

#include <cmath>

#include "common/data/sft_data.h"  // read_text_documents, bos_token_stream
#include "common/train/token_log_probs.h"
#include "common/util/error.h"

namespace tiller::eval {

std::vector<int64_t> text_token_stream(const Tokenizer& tokenizer, const std::string& path,
                                       int64_t max_tokens) {
  auto tokens = bos_token_stream(read_text_documents(path, /*skip_bad_lines=*/false, nullptr),
                                 tokenizer, max_tokens);
  check(!tokens.empty(), "text file " + path + " has no text");
  return tokens;
}

PerplexityResult perplexity(TransformerImpl& model, const std::vector<int64_t>& tokens,
                            int64_t length, int64_t max_windows, int64_t batch) {
  check(length >= 2, "perplexity: the window length must be at least 2 tokens");
  int64_t windows = static_cast<int64_t>(tokens.size()) / length;
  if (max_windows > 0) windows = std::min(windows, max_windows);
  check(windows >= 1, "perplexity: the text gives " + std::to_string(tokens.size()) +
                          " tokens, fewer than one window of " + std::to_string(length));
  torch::NoGradGuard no_grad;
  model.eval();
  const auto device = model.parameters().front().device();
  const auto all =
      torch::tensor(std::vector<int64_t>(tokens.begin(), tokens.begin() + windows * length))
          .view({windows, length});
  double total = 0;
  for (int64_t first = 0; first < windows; first += batch) {
    const auto ids = all.narrow(0, first, std::min(batch, windows - first)).to(device);
    const auto logits = model.forward(ids, torch::ones_like(ids)).to(torch::kFloat);
    total -= token_log_probs(logits.narrow(1, 0, length - 1), ids.narrow(1, 1, length - 1))
                 .sum()
                 .item<double>();
  }
  PerplexityResult r;
  r.windows = windows;
  r.predicted_tokens = windows * (length - 1);
  r.mean_nll = total / static_cast<double>(r.predicted_tokens);
  r.perplexity = std::exp(r.mean_nll);
  return r;
}

}  // namespace tiller::eval
