#include "eval/perplexity.h"

#include <cmath>
#include <fstream>

#include "common/util/error.h"

namespace tiller::eval {

std::vector<int64_t> text_token_stream(const Tokenizer& tokenizer, const std::string& path,
                                       int64_t max_tokens) {
  std::ifstream in(path);
  check(in.good(), "cannot read text file " + path);
  std::vector<int64_t> tokens;
  std::string line;
  while (std::getline(in, line) &&
         (max_tokens <= 0 || static_cast<int64_t>(tokens.size()) < max_tokens)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto ids = tokenizer.encode(line, /*add_bos=*/true);
    tokens.insert(tokens.end(), ids.begin(), ids.end());
  }
  check(!in.bad(), "error reading text file " + path);
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
    const auto log_probs = torch::log_softmax(logits.narrow(1, 0, length - 1), -1);
    const auto targets = ids.narrow(1, 1, length - 1).unsqueeze(-1);
    total -= log_probs.gather(-1, targets).sum().item<double>();
  }
  PerplexityResult r;
  r.windows = windows;
  r.predicted_tokens = windows * (length - 1);
  r.mean_nll = total / static_cast<double>(r.predicted_tokens);
  r.perplexity = std::exp(r.mean_nll);
  return r;
}

}  // namespace tiller::eval
