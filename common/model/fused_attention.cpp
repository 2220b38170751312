#include "common/model/fused_attention.h"

#include <ATen/Parallel.h>
#include <cblas.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common/torch_compat.h"
#include "common/util/vec_math.h"

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
  float scale;     // 1 / sqrt(dim)
  CBLAS_INT S, D;  // s_len, dim for BLAS
  int64_t grain;   // heads per parallel chunk: about 2^15 multiply-adds each

  Dims(const torch::Tensor& q, const torch::Tensor& k)
      : batch(q.size(0)),
        heads(q.size(1)),
        t_len(q.size(2)),
        s_len(k.size(2)),
        dim(q.size(3)),
        scale(static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)))),
        S(static_cast<CBLAS_INT>(s_len)),
        D(static_cast<CBLAS_INT>(dim)),
        grain(
            std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, t_len * s_len * dim))) {}
};

// Queries are taken in blocks of this many rows, and each block multiplies only the keys some
// row of it may see: under a causal mask that skips nearly half the work, and with packed
// segments more.
constexpr int64_t kRowsPerBlock = 64;

// Where a query's allowed keys lie: [first, end), all of them allowed where `dense` (causal,
// padding and segment masks), only some where not (then the mask is read).
struct RowSpan {
  int64_t first = 0, end = 0;
  bool dense = true;
};

// Each block of queries' keys: the union [first, end) of its queries' spans, empty where none of
// them sees anything, less its longest run of keys that no query of the block sees where that run
// is at least kLeastSkippedKeys long (a shared prefix's second response does not see the first):
// the block multiplies its keys in one or two parts. A [batch, blocks, 4] int64 table (first,
// end, gap first, gap end; an empty gap where none), made by the forward and saved for the
// backward, which needs nothing else of the mask.
constexpr int64_t kLeastSkippedKeys = 32;

struct KeyPart {
  int64_t lo, hi;
};

// A block's one or two parts, without a heap allocation in the per-head loops.
struct KeyParts {
  KeyPart part[2];
  size_t count;
  size_t size() const { return count; }
  const KeyPart& operator[](size_t j) const { return part[j]; }
  const KeyPart* begin() const { return part; }
  const KeyPart* end() const { return part + count; }
};

struct BlockSpans {
  torch::Tensor table;
  int64_t blocks_per_row;

  explicit BlockSpans(torch::Tensor spans)
      : table(std::move(spans)), blocks_per_row(table.size(1)) {}
  int64_t first(int64_t b, int64_t i) const { return at(b, i)[0]; }
  int64_t end(int64_t b, int64_t i) const { return at(b, i)[1]; }
  // [first, end) without the gap: one or two parts.
  KeyParts parts(int64_t b, int64_t i) const {
    const int64_t* s = at(b, i);
    if (s[2] == s[3]) return {{{s[0], s[1]}, {0, 0}}, 1};
    return {{{s[0], s[2]}, {s[3], s[1]}}, 2};
  }

 private:
  const int64_t* at(int64_t b, int64_t i) const {
    return table.data_ptr<int64_t>() + (b * blocks_per_row + i) * 4;
  }
};

// The mask read once for every head: each query's span, and each block's.
struct MaskSpans {
  int64_t t_len;
  std::vector<RowSpan> rows;  // [batch * t_len]
  BlockSpans blocks;

  MaskSpans(const torch::Tensor& allowed, int64_t batch, int64_t t_len_, int64_t s_len)
      : t_len(t_len_),
        rows(static_cast<size_t>(batch * t_len_)),
        blocks(
            torch::zeros({batch, (t_len_ + kRowsPerBlock - 1) / kRowsPerBlock, 4}, torch::kLong)) {
    const bool* mask = allowed.data_ptr<bool>();
    int64_t* block_table = blocks.table.data_ptr<int64_t>();
    for (int64_t r = 0; r < batch * t_len; ++r) {
      const bool* seen = mask + r * s_len;
      RowSpan& span = rows[static_cast<size_t>(r)];
      int64_t count = 0;
      span.first = s_len;
      for (int64_t s = 0; s < s_len; ++s)
        if (seen[s]) {
          span.first = std::min(span.first, s);
          span.end = s + 1;
          ++count;
        }
      if (count == 0) {
        span.first = span.end = 0;
        continue;
      }
      span.dense = count == span.end - span.first;
      int64_t* block =
          block_table + ((r / t_len) * blocks.blocks_per_row + (r % t_len) / kRowsPerBlock) * 4;
      const bool block_empty = block[0] == block[1];
      block[0] = block_empty ? span.first : std::min(block[0], span.first);
      block[1] = block_empty ? span.end : std::max(block[1], span.end);
    }
    // The gaps, in blocks with a query that does not see all of its span (a gap between dense
    // spans would be padding, which costs no more than it did).
    std::vector<char> seen_by_block;
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t i = 0; i < blocks.blocks_per_row; ++i) {
        int64_t* block = block_table + (b * blocks.blocks_per_row + i) * 4;
        const int64_t t0 = i * kRowsPerBlock, t1 = std::min(t_len, t0 + kRowsPerBlock);
        bool sparse = false;
        for (int64_t t = t0; t < t1; ++t) sparse = sparse || !row(b, t).dense;
        if (!sparse || block[1] - block[0] < kLeastSkippedKeys) continue;
        seen_by_block.assign(static_cast<size_t>(s_len), 0);
        for (int64_t t = t0; t < t1; ++t) {
          const RowSpan& span = row(b, t);
          const bool* seen = mask + (b * t_len + t) * s_len;
          for (int64_t s = span.first; s < span.end; ++s)
            seen_by_block[static_cast<size_t>(s)] |= static_cast<char>(seen[s]);
        }
        int64_t run_start = block[0];
        for (int64_t s = block[0]; s <= block[1]; ++s) {
          if (s < block[1] && seen_by_block[static_cast<size_t>(s)] == 0) continue;
          if (s - run_start >= kLeastSkippedKeys && s - run_start > block[3] - block[2]) {
            block[2] = run_start;
            block[3] = s;
          }
          run_start = s + 1;
        }
      }
  }

  const RowSpan& row(int64_t b, int64_t t) const {
    return rows[static_cast<size_t>(b * t_len + t)];
  }
};

// One query's scores over its block's keys [lo, hi) -> its probabilities there (0 where masked).
void softmax_row(vec::Isa isa, float* row, const RowSpan& span, const bool* seen, int64_t lo,
                 int64_t hi) {
  if (span.first == span.end) {  // sees nothing: zeros, as compat::attention gives
    std::fill(row + lo, row + hi, 0.0f);
    return;
  }
  if (!span.dense)
    for (int64_t s = span.first; s < span.end; ++s)
      if (!seen[s]) row[s] = -std::numeric_limits<float>::infinity();  // exp gives exactly 0
  float* kept = row + span.first;
  const int64_t n = span.end - span.first;
  const float largest = vec::max(isa, kept, n);
  const float inv = 1.0f / vec::exp_sum(isa, kept, largest, n, kept);
  for (int64_t s = 0; s < n; ++s) kept[s] *= inv;
  std::fill(row + lo, row + span.first, 0.0f);
  std::fill(row + span.end, row + hi, 0.0f);
}

struct AttentionFunction : torch::autograd::Function<AttentionFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& allowed) {
    const Dims n(q, k);
    const int64_t batch = n.batch, heads = n.heads, t_len = n.t_len, s_len = n.s_len, dim = n.dim;
    const MaskSpans spans(allowed, batch, t_len, s_len);
    // probs holds each query's probabilities over its block's keys; the rest is never read.
    auto probs = torch::empty({batch, heads, t_len, s_len}, q.options());
    auto out = torch::empty({batch, heads, t_len, dim}, q.options());
    const bool* mask = allowed.data_ptr<bool>();
    const vec::Isa isa = vec::best_isa();
    at::parallel_for(0, batch * heads, n.grain, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / heads, h = bh % heads;
        const HeadView qh = head(q, b, h), kh = head(k, b, h), vh = head(v, b, h);
        float* p = probs.data_ptr<float>() + bh * t_len * s_len;
        float* o = out.data_ptr<float>() + bh * t_len * dim;
        for (int64_t i = 0; i < spans.blocks.blocks_per_row; ++i) {
          const int64_t t0 = i * kRowsPerBlock, rows = std::min(kRowsPerBlock, t_len - t0);
          const int64_t lo = spans.blocks.first(b, i), hi = spans.blocks.end(b, i);
          if (lo == hi) {  // no query of the block sees anything
            std::fill(o + t0 * dim, o + (t0 + rows) * dim, 0.0f);
            continue;
          }
          const auto R = static_cast<CBLAS_INT>(rows);
          const KeyParts parts = spans.blocks.parts(b, i);
          // The scores of the gap's keys are not computed: every query of the block has them
          // masked, so softmax_row writes -inf (or 0) over them before reading.
          for (const KeyPart& part : parts)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R,
                        static_cast<CBLAS_INT>(part.hi - part.lo), n.D, n.scale,
                        qh.data + t0 * qh.ld, qh.ld, kh.data + part.lo * kh.ld, kh.ld, 0.0f,
                        p + t0 * s_len + part.lo, n.S);
          for (int64_t t = t0; t < t0 + rows; ++t)
            softmax_row(isa, p + t * s_len, spans.row(b, t), mask + (b * t_len + t) * s_len, lo,
                        hi);
          for (size_t j = 0; j < parts.size(); ++j)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, n.D,
                        static_cast<CBLAS_INT>(parts[j].hi - parts[j].lo), 1.0f,
                        p + t0 * s_len + parts[j].lo, n.S, vh.data + parts[j].lo * vh.ld, vh.ld,
                        j == 0 ? 0.0f : 1.0f, o + t0 * dim, n.D);
        }
      }
    });
    ctx->save_for_backward({q, k, v, probs, spans.blocks.table});
    return out;
  }

  // Per block of queries, over its keys [lo, hi): dV += P^T dO; dP = dO V^T;
  // dS = P * (dP - rowsum(P * dP)); dQ = scale dS K; dK += scale dS^T Q.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &v = saved[2], &probs = saved[3];
    const BlockSpans blocks(saved[4]);
    const auto d_out = grads[0].contiguous();
    const Dims n(q, k);
    const int64_t batch = n.batch, heads = n.heads, t_len = n.t_len, s_len = n.s_len, dim = n.dim;
    auto dq = torch::empty({batch, heads, t_len, dim}, q.options());
    auto dk = torch::zeros({batch, heads, s_len, dim}, q.options());  // blocks add into these
    auto dv = torch::zeros({batch, heads, s_len, dim}, q.options());
    auto d_scores = torch::empty({batch, heads, t_len, s_len}, q.options());
    at::parallel_for(0, batch * heads, n.grain, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / heads, h = bh % heads;
        const HeadView qh = head(q, b, h), kh = head(k, b, h), vh = head(v, b, h);
        const float* p = probs.data_ptr<float>() + bh * t_len * s_len;
        const float* go = d_out.data_ptr<float>() + bh * t_len * dim;
        float* ds = d_scores.data_ptr<float>() + bh * t_len * s_len;
        float* dqh = dq.data_ptr<float>() + bh * t_len * dim;
        float* dkh = dk.data_ptr<float>() + bh * s_len * dim;
        float* dvh = dv.data_ptr<float>() + bh * s_len * dim;
        for (int64_t i = 0; i < blocks.blocks_per_row; ++i) {
          const int64_t t0 = i * kRowsPerBlock, rows = std::min(kRowsPerBlock, t_len - t0);
          const int64_t lo = blocks.first(b, i), hi = blocks.end(b, i);
          if (lo == hi) {
            std::fill(dqh + t0 * dim, dqh + (t0 + rows) * dim, 0.0f);
            continue;
          }
          const auto R = static_cast<CBLAS_INT>(rows);
          // The gap's probabilities are 0: its keys take no gradient from this block.
          const KeyParts parts = blocks.parts(b, i);
          for (const KeyPart& part : parts) {
            const auto C = static_cast<CBLAS_INT>(part.hi - part.lo);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, n.D, R, 1.0f,
                        p + t0 * s_len + part.lo, n.S, go + t0 * dim, n.D, 1.0f,
                        dvh + part.lo * dim, n.D);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, C, n.D, 1.0f, go + t0 * dim,
                        n.D, vh.data + part.lo * vh.ld, vh.ld, 0.0f, ds + t0 * s_len + part.lo,
                        n.S);
          }
          for (int64_t t = t0; t < t0 + rows; ++t) {
            const float* pr = p + t * s_len;
            float* row = ds + t * s_len;
            float dot = 0;
            for (const KeyPart& part : parts)
              for (int64_t s = part.lo; s < part.hi; ++s) dot += pr[s] * row[s];
            for (const KeyPart& part : parts)
              for (int64_t s = part.lo; s < part.hi; ++s) row[s] = pr[s] * (row[s] - dot);
          }
          for (size_t j = 0; j < parts.size(); ++j) {
            const auto C = static_cast<CBLAS_INT>(parts[j].hi - parts[j].lo);
            const float* dsb = ds + t0 * s_len + parts[j].lo;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, n.D, C, n.scale, dsb, n.S,
                        kh.data + parts[j].lo * kh.ld, kh.ld, j == 0 ? 0.0f : 1.0f, dqh + t0 * dim,
                        n.D);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, n.D, R, n.scale, dsb, n.S,
                        qh.data + t0 * qh.ld, qh.ld, 1.0f, dkh + parts[j].lo * dim, n.D);
          }
        }
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
