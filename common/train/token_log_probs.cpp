#include "common/train/token_log_probs.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <string>

#include "common/util/error.h"
#include "common/util/vec_math.h"

namespace tiller {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Rows per parallel chunk: about 2^15 elements each.
int64_t row_grain(int64_t vocab) {
  return std::max<int64_t>(1, (int64_t{1} << 15) / vocab);
}

struct TokenLogProbsFunction : torch::autograd::Function<TokenLogProbsFunction> {
  // logits [N, V] contiguous fp32, targets [N] contiguous int64, already checked. Returns the
  // log-probabilities and, with `with_entropy`, each row's entropy (not differentiable; empty
  // otherwise).
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& logits,
                               const torch::Tensor& targets, int64_t ignore_index,
                               bool with_entropy) {
    const int64_t rows = logits.size(0), vocab = logits.size(1);
    auto out = torch::empty({rows}, logits.options());
    auto log_sum_exp = torch::empty({rows}, logits.options());
    auto entropy = torch::empty({with_entropy ? rows : 0}, logits.options());
    float* h = with_entropy ? entropy.data_ptr<float>() : nullptr;
    const float* x = logits.data_ptr<float>();
    const int64_t* target = targets.data_ptr<int64_t>();
    float* o = out.data_ptr<float>();
    float* lse = log_sum_exp.data_ptr<float>();
    const vec::Isa isa = vec::best_isa();
    at::parallel_for(0, rows, row_grain(vocab), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        if (target[r] == ignore_index) {
          o[r] = lse[r] = 0;
          if (h != nullptr) h[r] = 0;
          continue;
        }
        const float* row = x + r * vocab;
        const float largest = vec::max(isa, row, vocab);
        if (h != nullptr) {
          float weighted = 0;
          const float sum = vec::exp_sum_weighted(isa, row, largest, vocab, &weighted);
          lse[r] = largest + std::log(sum);
          h[r] = std::log(sum) - weighted / sum;
        } else {
          lse[r] = largest + std::log(vec::exp_sum(isa, row, largest, vocab, nullptr));
        }
        o[r] = row[target[r]] - lse[r];
      }
    });
    ctx->save_for_backward({logits, targets, log_sum_exp});
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->mark_non_differentiable({entropy});
    return {out, entropy};
  }

  // d out[r] / d logits[r, j] = [j == target[r]] - softmax(logits[r])[j].
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &logits = saved[0], &targets = saved[1], &log_sum_exp = saved[2];
    const int64_t ignore_index = ctx->saved_data["ignore_index"].toInt();
    const auto upstream = grads[0].contiguous();
    const int64_t rows = logits.size(0), vocab = logits.size(1);
    auto d_logits = torch::empty_like(logits);
    const float* x = logits.data_ptr<float>();
    const int64_t* target = targets.data_ptr<int64_t>();
    const float* lse = log_sum_exp.data_ptr<float>();
    const float* g = upstream.data_ptr<float>();
    float* d = d_logits.data_ptr<float>();
    const vec::Isa isa = vec::best_isa();
    at::parallel_for(0, rows, row_grain(vocab), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        float* d_row = d + r * vocab;
        if (target[r] == ignore_index) {
          std::fill(d_row, d_row + vocab, 0.0f);
          continue;
        }
        vec::scaled_exp(isa, x + r * vocab, lse[r], -g[r], vocab, d_row);
        d_row[target[r]] += g[r];
      }
    });
    return {d_logits, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

void check_shapes(const torch::Tensor& logits, const torch::Tensor& targets, int64_t ignore_index) {
  check(logits.dim() >= 1 && logits.size(-1) >= 1,
        "token log-probabilities: logits need a vocabulary dimension");
  check(targets.scalar_type() == torch::kLong && targets.device() == logits.device(),
        "token log-probabilities: targets must be int64 token ids on the logits' device");
  check(targets.sizes() == logits.sizes().slice(0, logits.dim() - 1),
        "token log-probabilities: targets " + std::to_string(targets.dim()) +
            "-d do not match the logits' leading shape");
  const int64_t vocab = logits.size(-1);
  const auto outside = (targets != ignore_index) & ((targets < 0) | (targets >= vocab));
  if (outside.any().item<bool>()) {
    const int64_t id = targets.masked_select(outside)[0].item<int64_t>();
    throw Error("token log-probabilities: target id " + std::to_string(id) +
                " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
  }
}

// log_probs[..., target] where the target is kept, 0 where it is ignore_index.
torch::Tensor picked_at(const torch::Tensor& log_probs, const torch::Tensor& targets,
                        int64_t ignore_index) {
  const auto kept = targets != ignore_index;
  const auto ids = torch::where(kept, targets, torch::zeros_like(targets));
  const auto picked = log_probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1);
  return torch::where(kept, picked, torch::zeros_like(picked));
}

torch::Tensor log_softmax_at(const torch::Tensor& logits, const torch::Tensor& targets,
                             int64_t ignore_index) {
  return picked_at(torch::log_softmax(logits.to(torch::kFloat), -1), targets, ignore_index);
}

bool fuses(const torch::Tensor& logits) {
  return logits.device().is_cpu() && logits.scalar_type() == torch::kFloat && logits.numel() > 0;
}

variable_list fused(const torch::Tensor& logits, const torch::Tensor& targets, int64_t ignore_index,
                    bool with_entropy) {
  const int64_t vocab = logits.size(-1);
  const auto flat = logits.contiguous().view({-1, vocab});
  return TokenLogProbsFunction::apply(flat, targets.contiguous().view({-1}), ignore_index,
                                      with_entropy);
}

}  // namespace

torch::Tensor token_log_probs(const torch::Tensor& logits, const torch::Tensor& targets,
                              int64_t ignore_index) {
  check_shapes(logits, targets, ignore_index);
  if (!fuses(logits)) return log_softmax_at(logits, targets, ignore_index);
  return fused(logits, targets, ignore_index, false)[0].view(targets.sizes());
}

LogProbsAndEntropy token_log_probs_and_entropy(const torch::Tensor& logits,
                                               const torch::Tensor& targets, int64_t ignore_index) {
  check_shapes(logits, targets, ignore_index);
  if (!fuses(logits)) {  // one log_softmax for both
    const auto log_probs = torch::log_softmax(logits.to(torch::kFloat), -1);
    torch::Tensor entropy;
    {
      torch::NoGradGuard no_grad;
      const auto p_log_p = log_probs.detach().exp() * log_probs.detach();
      entropy = -p_log_p.nan_to_num(0.0).sum(-1);  // 0 * -inf at a masked token counts 0
      entropy.masked_fill_(targets == ignore_index, 0.0);
    }
    return {picked_at(log_probs, targets, ignore_index), entropy};
  }
  const auto outputs = fused(logits, targets, ignore_index, true);
  return {outputs[0].view(targets.sizes()), outputs[1].view(targets.sizes())};
}

torch::Tensor token_log_probs_reference(const torch::Tensor& logits, const torch::Tensor& targets,
                                        int64_t ignore_index) {
  check_shapes(logits, targets, ignore_index);
  return log_softmax_at(logits, targets, ignore_index);
}

}  // namespace tiller
