#include "common/train/fused_adamw.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "common/torch_compat.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define TILLER_HAVE_AVX2_KERNELS 1
#endif

namespace tiller {

namespace {

void update_portable(float* p, const float* g, float* m, float* v, int64_t n,
                     const AdamWCoefficients& c) {
  for (int64_t i = 0; i < n; ++i) {
    float w = p[i];
    if (c.decay) w *= c.weight_decay_factor;
    const float mi = m[i] * c.beta1 + c.one_minus_beta1 * g[i];
    const float vi = v[i] * c.beta2 + c.one_minus_beta2 * g[i] * g[i];
    const float denom = std::sqrt(vi) * c.inv_bias2_sqrt + c.eps;
    m[i] = mi;
    v[i] = vi;
    p[i] = w - c.step_size * mi / denom;
  }
}

#ifdef TILLER_HAVE_AVX2_KERNELS
__attribute__((target("avx2,fma"))) void update_avx2(float* p, const float* g, float* m, float* v,
                                                     int64_t n, const AdamWCoefficients& c) {
  const __m256 beta1 = _mm256_set1_ps(c.beta1), one_minus_beta1 = _mm256_set1_ps(c.one_minus_beta1);
  const __m256 beta2 = _mm256_set1_ps(c.beta2), one_minus_beta2 = _mm256_set1_ps(c.one_minus_beta2);
  const __m256 decay = _mm256_set1_ps(c.decay ? c.weight_decay_factor : 1.0f);
  const __m256 step_size = _mm256_set1_ps(c.step_size);
  const __m256 inv_bias2_sqrt = _mm256_set1_ps(c.inv_bias2_sqrt), eps = _mm256_set1_ps(c.eps);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gi = _mm256_loadu_ps(g + i);
    const __m256 w = _mm256_mul_ps(_mm256_loadu_ps(p + i), decay);
    const __m256 mi =
        _mm256_fmadd_ps(one_minus_beta1, gi, _mm256_mul_ps(_mm256_loadu_ps(m + i), beta1));
    const __m256 vi = _mm256_fmadd_ps(_mm256_mul_ps(one_minus_beta2, gi), gi,
                                      _mm256_mul_ps(_mm256_loadu_ps(v + i), beta2));
    const __m256 denom = _mm256_fmadd_ps(_mm256_sqrt_ps(vi), inv_bias2_sqrt, eps);
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    _mm256_storeu_ps(p + i, _mm256_fnmadd_ps(step_size, _mm256_div_ps(mi, denom), w));
  }
  if (i < n) update_portable(p + i, g + i, m + i, v + i, n - i, c);
}
#endif

bool fusable(const torch::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == torch::kFloat &&
         t.layout() == torch::kStrided && t.is_contiguous();
}

}  // namespace

AdamWKernels best_adamw_kernels() {
#ifdef TILLER_HAVE_AVX2_KERNELS
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) return AdamWKernels::avx2;
#endif
  return AdamWKernels::portable;
}

void adamw_update(float* p, const float* g, float* m, float* v, int64_t n,
                  const AdamWCoefficients& c, AdamWKernels kernels) {
#ifdef TILLER_HAVE_AVX2_KERNELS
  if (kernels == AdamWKernels::avx2) return update_avx2(p, g, m, v, n, c);
#endif
  (void)kernels;
  update_portable(p, g, m, v, n, c);
}

torch::Tensor FusedAdamW::step(LossClosure closure) {
  // Every parameter with a gradient is checked first (the step fuses all or none), and its state
  // found once: null where AdamW would create it on its first step.
  std::vector<torch::optim::AdamWParamState*> states;
  last_step_fused_ = false;
  for (const auto& group : param_groups_) {
    if (static_cast<const torch::optim::AdamWOptions&>(group.options()).amsgrad())
      return AdamW::step(closure);
    for (const auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      if (!fusable(p) || !fusable(p.grad())) return AdamW::step(closure);
      const auto found = state_.find(compat::optimizer_state_key(state_, p));
      auto* s = found == state_.end()
                    ? nullptr
                    : static_cast<torch::optim::AdamWParamState*>(found->second.get());
      if (s != nullptr &&
          !(fusable(s->exp_avg()) && fusable(s->exp_avg_sq()) &&
            s->exp_avg().numel() == p.numel() && s->exp_avg_sq().numel() == p.numel()))
        return AdamW::step(closure);
      states.push_back(s);
    }
  }
  last_step_fused_ = true;
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  const AdamWKernels kernels = best_adamw_kernels();
  size_t next = 0;
  for (auto& group : param_groups_) {
    const auto& options = static_cast<const torch::optim::AdamWOptions&>(group.options());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      torch::optim::AdamWParamState* state = states[next++];
      if (state == nullptr) {
        auto fresh = std::make_unique<torch::optim::AdamWParamState>();
        fresh->step(0);
        fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        state = fresh.get();
        state_.emplace(compat::optimizer_state_key(state_, p), std::move(fresh));
      }
      auto& s = *state;
      s.step(s.step() + 1);
      const double beta1 = std::get<0>(options.betas()), beta2 = std::get<1>(options.betas());
      const double t = static_cast<double>(s.step());
      AdamWCoefficients c;
      c.beta1 = static_cast<float>(beta1);
      c.one_minus_beta1 = static_cast<float>(1 - beta1);
      c.beta2 = static_cast<float>(beta2);
      c.one_minus_beta2 = static_cast<float>(1 - beta2);
      c.decay = options.weight_decay() != 0;
      c.weight_decay_factor = static_cast<float>(1 - options.lr() * options.weight_decay());
      c.step_size = static_cast<float>(options.lr() / (1 - std::pow(beta1, t)));
      c.inv_bias2_sqrt = static_cast<float>(1 / std::sqrt(1 - std::pow(beta2, t)));
      c.eps = static_cast<float>(options.eps());
      float* param = p.data_ptr<float>();
      const float* grad = p.grad().data_ptr<float>();
      float* m = s.exp_avg().data_ptr<float>();
      float* v = s.exp_avg_sq().data_ptr<float>();
      // Elementwise, so any split gives the same result; small tensors stay on this thread.
      at::parallel_for(0, p.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
        adamw_update(param + begin, grad + begin, m + begin, v + begin, end - begin, c, kernels);
      });
    }
  }
  return loss;
}

}  // namespace tiller
