#include "common/model/fused_attention.h"

#include <ATen/Parallel.h>
#include <cblas.h>

#include <cmath>
#include <limits>

#include "common/torch_compat.h"

namespace tiller {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A [rows, D] matrix of one (batch, head) of a strided [B, H, rows, D] tensor.
struct HeadView {
  const float* data;
  CBLAS_INT ld;  // the row stride
};

HeadView head(const torch::Tensor& t, int64_t b, int64_t h) {
  return {t.data_ptr<float>() + b * t.stride(0) + h * t.stride(1),
          static_cast<CBLAS_INT>(t.stride(2))};
}

// The sizes of one call: q [batch, heads, t_len, dim], k and v [batch, heads, s_len, dim].
struct Dims {
  int64_t batch, heads, t_len, s_len, dim;
  float scale;        // 1 / sqrt(dim)
  CBLAS_INT T, S, D;  // t_len, s_len, dim for BLAS
  int64_t grain;      // heads per parallel chunk: about 2^15 multiply-adds each

  Dims(const torch::Tensor& q, const torch::Tensor& k)
      : batch(q.size(0)),
        heads(q.size(1)),
        t_len(q.size(2)),
        s_len(k.size(2)),
        dim(q.size(3)),
        scale(static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)))),
        T(static_cast<CBLAS_INT>(t_len)),
        S(static_cast<CBLAS_INT>(s_len)),
        D(static_cast<CBLAS_INT>(dim)),
        grain(
            std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, t_len * s_len * dim))) {}
};

struct AttentionFunction : torch::autograd::Function<AttentionFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& allowed) {
    const Dims n(q, k);
    const int64_t batch = n.batch, heads = n.heads, t_len = n.t_len, s_len = n.s_len, dim = n.dim;
    const CBLAS_INT T = n.T, S = n.S, D = n.D;
    auto probs = torch::empty({batch, heads, t_len, s_len}, q.options());
    auto out = torch::empty({batch, heads, t_len, dim}, q.options());
    const bool* mask = allowed.data_ptr<bool>();
    at::parallel_for(0, batch * heads, n.grain, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / heads, h = bh % heads;
        const HeadView qh = head(q, b, h), kh = head(k, b, h), vh = head(v, b, h);
        float* p = probs.data_ptr<float>() + bh * t_len * s_len;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, S, D, n.scale, qh.data, qh.ld,
                    kh.data, kh.ld, 0.0f, p, S);
        for (int64_t t = 0; t < t_len; ++t) {
          float* row = p + t * s_len;
          const bool* seen = mask + (b * t_len + t) * s_len;
          float max = -std::numeric_limits<float>::infinity();
          for (int64_t s = 0; s < s_len; ++s)
            if (seen[s]) max = std::max(max, row[s]);
          if (max == -std::numeric_limits<float>::infinity()) {  // sees nothing: zeros
            std::fill(row, row + s_len, 0.0f);
            continue;
          }
          float sum = 0;
          for (int64_t s = 0; s < s_len; ++s) {
            row[s] = seen[s] ? std::exp(row[s] - max) : 0.0f;
            sum += row[s];
          }
          const float inv = 1.0f / sum;
          for (int64_t s = 0; s < s_len; ++s) row[s] *= inv;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, S, 1.0f, p, S, vh.data, vh.ld,
                    0.0f, out.data_ptr<float>() + bh * t_len * dim, D);
      }
    });
    ctx->save_for_backward({q, k, v, probs});
    return out;
  }

  // dV = P^T dO; dP = dO V^T; dS = P * (dP - rowsum(P * dP)); dQ = scale dS K; dK = scale dS^T Q.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &v = saved[2], &probs = saved[3];
    const auto d_out = grads[0].contiguous();
    const Dims n(q, k);
    const int64_t batch = n.batch, heads = n.heads, t_len = n.t_len, s_len = n.s_len, dim = n.dim;
    const CBLAS_INT T = n.T, S = n.S, D = n.D;
    auto dq = torch::empty({batch, heads, t_len, dim}, q.options());
    auto dk = torch::empty({batch, heads, s_len, dim}, q.options());
    auto dv = torch::empty({batch, heads, s_len, dim}, q.options());
    auto d_scores = torch::empty({batch, heads, t_len, s_len}, q.options());
    at::parallel_for(0, batch * heads, n.grain, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / heads, h = bh % heads;
        const HeadView qh = head(q, b, h), kh = head(k, b, h), vh = head(v, b, h);
        const float* p = probs.data_ptr<float>() + bh * t_len * s_len;
        const float* go = d_out.data_ptr<float>() + bh * t_len * dim;
        float* ds = d_scores.data_ptr<float>() + bh * t_len * s_len;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, S, D, T, 1.0f, p, S, go, D, 0.0f,
                    dv.data_ptr<float>() + bh * s_len * dim, D);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, S, D, 1.0f, go, D, vh.data, vh.ld,
                    0.0f, ds, S);
        for (int64_t t = 0; t < t_len; ++t) {
          const float* pr = p + t * s_len;
          float* row = ds + t * s_len;
          float dot = 0;
          for (int64_t s = 0; s < s_len; ++s) dot += pr[s] * row[s];
          for (int64_t s = 0; s < s_len; ++s) row[s] = pr[s] * (row[s] - dot);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, D, S, n.scale, ds, S, kh.data,
                    kh.ld, 0.0f, dq.data_ptr<float>() + bh * t_len * dim, D);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, S, D, T, n.scale, ds, S, qh.data,
                    qh.ld, 0.0f, dk.data_ptr<float>() + bh * s_len * dim, D);
      }
    });
    return {dq, dk, dv, torch::Tensor()};
  }
};

bool fusable(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
             const torch::Tensor& allowed) {
  const auto fp32_cpu = [](const torch::Tensor& t) {
    return t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.dim() == 4 &&
           t.stride(3) == 1;
  };
  if (!fp32_cpu(q) || !fp32_cpu(k) || !fp32_cpu(v)) return false;
  const int64_t b = q.size(0), h = q.size(1), t = q.size(2), d = q.size(3), s = k.size(2);
  return q.numel() > 0 && k.sizes() == torch::IntArrayRef({b, h, s, d}) && v.sizes() == k.sizes() &&
         allowed.device().is_cpu() && allowed.scalar_type() == torch::kBool &&
         allowed.is_contiguous() && allowed.sizes() == torch::IntArrayRef({b, 1, t, s});
}

}  // namespace

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& allowed) {
  if (!fusable(q, k, v, allowed)) return compat::attention(q, k, v, allowed);
  return AttentionFunction::apply(q, k, v, allowed);
}

}  // namespace tiller
