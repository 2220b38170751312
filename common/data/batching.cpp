#include "common/data/batching.h"

#include <algorithm>
#include <numeric>

#include "common/util/error.h"

namespace tiller {

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

namespace {

int64_t row_length(const ExampleSource& examples, const Row& row) {
  int64_t n = 0;
  for (int64_t i : row) n += examples.length(i);
  return n;
}

std::vector<Row> lay_out(const ExampleSource& examples, const std::vector<int64_t>& order,
                         const BatchingOptions& o, bool shuffle_buckets, uint64_t seed) {
  std::vector<Row> rows;
  if (o.packing) {
    int64_t used = 0;
    for (int64_t i : order) {
      const int64_t n = examples.length(i);
      TORCH_CHECK(n <= o.max_seq_len, "example longer than max_seq_len reached batching");
      if (rows.empty() || used + n > o.max_seq_len) {
        rows.emplace_back();
        used = 0;
      }
      rows.back().push_back(i);
      used += n;
    }
    return rows;
  }
  for (int64_t i : order) rows.push_back({i});
  // Sort by length inside windows of 16 batches, then shuffle whole batches: little padding,
  // still a random order of batches.
  const int64_t window = std::max<int64_t>(1, o.rows_per_batch) * 16;
  for (size_t start = 0; start < rows.size(); start += window) {
    auto end = rows.begin() + std::min(rows.size(), start + static_cast<size_t>(window));
    std::stable_sort(rows.begin() + start, end, [&](const Row& a, const Row& b) {
      return examples.length(a[0]) < examples.length(b[0]);
    });
  }
  if (!shuffle_buckets) return rows;
  const int64_t per = std::max<int64_t>(1, o.rows_per_batch);
  const int64_t batches = static_cast<int64_t>(rows.size()) / per;
  auto perm = seeded_permutation(batches, seed ^ 0x5bd1e995ull);
  std::vector<Row> shuffled;
  for (int64_t b : perm)
    for (int64_t r = 0; r < per; ++r) shuffled.push_back(rows[b * per + r]);
  for (size_t r = static_cast<size_t>(batches * per); r < rows.size(); ++r)
    shuffled.push_back(rows[r]);
  return shuffled;
}

}  // namespace

std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  uint64_t state = seed;
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(splitmix64(state) % static_cast<uint64_t>(i + 1));
    std::swap(perm[i], perm[j]);
  }
  return perm;
}

std::vector<Row> plan_epoch(const ExampleSource& examples, const BatchingOptions& o,
                            int64_t epoch) {
  const uint64_t seed = o.seed * 0x100000001b3ull + static_cast<uint64_t>(epoch) + 1;
  return lay_out(examples, seeded_permutation(examples.size(), seed), o, true, seed);
}

std::vector<Row> plan_in_order(const ExampleSource& examples, const BatchingOptions& o) {
  std::vector<int64_t> order(static_cast<size_t>(examples.size()));
  std::iota(order.begin(), order.end(), 0);
  return lay_out(examples, order, o, false, 0);
}

std::vector<Row> plan_epoch(const std::vector<Example>& examples, const BatchingOptions& o,
                            int64_t epoch) {
  return plan_epoch(InMemoryExamples(examples), o, epoch);
}

std::vector<Row> plan_in_order(const std::vector<Example>& examples, const BatchingOptions& o) {
  return plan_in_order(InMemoryExamples(examples), o);
}

TokenBatch make_batch(const std::vector<Example>& examples, const std::vector<Row>& rows,
                      int64_t begin, int64_t count, const BatchingOptions& o, int64_t pad_id) {
  return make_batch(InMemoryExamples(examples), rows, begin, count, o, pad_id);
}

TokenBatch make_batch(const ExampleSource& examples, const std::vector<Row>& rows, int64_t begin,
                      int64_t count, const BatchingOptions& o, int64_t pad_id) {
  TORCH_CHECK(begin >= 0 && count > 0 && begin + count <= static_cast<int64_t>(rows.size()),
              "batch rows out of range");
  int64_t length = 0;
  for (int64_t r = begin; r < begin + count; ++r)
    length = std::max(length, row_length(examples, rows[r]));
  if (o.packing) length = o.max_seq_len;
  auto input = torch::full({count, length}, pad_id, torch::kLong);
  auto targets = torch::full({count, length}, -100, torch::kLong);
  auto segments = torch::full({count, length}, -1, torch::kLong);
  auto in_a = input.accessor<int64_t, 2>();
  auto tg_a = targets.accessor<int64_t, 2>();
  auto sg_a = segments.accessor<int64_t, 2>();
  int64_t target_count = 0;
  for (int64_t r = 0; r < count; ++r) {
    int64_t t = 0;
    int64_t segment = 0;
    for (int64_t index : rows[begin + r]) {
      const Example e = examples.at(index);
      const int64_t n = static_cast<int64_t>(e.tokens.size());
      for (int64_t i = 0; i < n; ++i) {
        in_a[r][t + i] = e.tokens[i];
        sg_a[r][t + i] = segment;
        // Position i predicts token i + 1 of the same example.
        if (i + 1 < n && e.trainable[i + 1]) {
          tg_a[r][t + i] = e.tokens[i + 1];
          ++target_count;
        }
      }
      t += n;
      ++segment;
    }
  }
  return {input, targets, segments, target_count};
}

TokenBatch TokenBatch::slice(int64_t begin, int64_t count) const {
  TokenBatch out{input_ids.narrow(0, begin, count), targets.narrow(0, begin, count),
                 segment_ids.narrow(0, begin, count), 0};
  out.target_count = out.targets.ne(-100).sum().item<int64_t>();
  return out;
}

ValidationSplit split_validation(int64_t n, double fraction, uint64_t seed) {
  check(fraction >= 0 && fraction < 1, "val_fraction must be in [0, 1)");
  int64_t val_count = fraction > 0 ? std::max<int64_t>(1, static_cast<int64_t>(n * fraction)) : 0;
  check(val_count < n, "val_fraction leaves no training examples");
  auto perm = seeded_permutation(n, seed ^ 0xa0761d6478bd642full);
  std::vector<bool> is_val(n, false);
  for (int64_t i = 0; i < val_count; ++i) is_val[perm[i]] = true;
  ValidationSplit split;
  split.validation.reserve(static_cast<size_t>(val_count));
  split.train.reserve(static_cast<size_t>(n - val_count));
  for (int64_t i = 0; i < n; ++i) (is_val[i] ? split.validation : split.train).push_back(i);
  return split;
}

void split_validation(std::vector<Example>& all, double fraction, uint64_t seed,
                      std::vector<Example>* train, std::vector<Example>* validation) {
  const ValidationSplit split = split_validation(static_cast<int64_t>(all.size()), fraction, seed);
  for (int64_t i : split.train) train->push_back(std::move(all[static_cast<size_t>(i)]));
  for (int64_t i : split.validation) validation->push_back(std::move(all[static_cast<size_t>(i)]));
  all.clear();
}

std::vector<bool> validation_choice(int64_t n, double fraction, uint64_t seed,
                                    const std::string& what) {
  check(fraction >= 0 && fraction < 1, "val_fraction must be in [0, 1)");
  const int64_t val_count =
      fraction > 0 ? std::max<int64_t>(1, static_cast<int64_t>(n * fraction)) : 0;
  check(val_count < n, "val_fraction " + std::to_string(fraction) + " leaves no training " + what +
                           " (" + std::to_string(n) + " " + what + ")");
  const auto perm = seeded_permutation(n, seed);
  std::vector<bool> is_val(static_cast<size_t>(n), false);
  for (int64_t i = 0; i < val_count; ++i) is_val[static_cast<size_t>(perm[i])] = true;
  return is_val;
}

}  // namespace tiller
