// Batching: examples laid into rows (packed several to a row, or one a row with padding), rows
// grouped into batches, in a deterministic seeded order that a checkpoint can resume mid-epoch.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/data/sft_data.h"

namespace tiller {

// A batch ready for the model. Targets are already shifted: targets[b][t] is the token that
// position t predicts, or -100 where nothing is trained (prompt, padding, segment boundary).
struct TokenBatch {
  torch::Tensor input_ids;    // [B, T] int64
  torch::Tensor targets;      // [B, T] int64, -100 = ignored
  torch::Tensor segment_ids;  // [B, T] int64, example index within the row, -1 on padding
  int64_t target_count = 0;   // number of targets that are not -100

  int64_t rows() const { return input_ids.size(0); }
  // Rows [begin, begin + count) as a smaller batch (a micro-batch).
  TokenBatch slice(int64_t begin, int64_t count) const;
};

// A row: the examples laid one after another in it.
using Row = std::vector<int64_t>;

struct BatchingOptions {
  int64_t max_seq_len = 512;
  bool packing = true;  // false: one example a row, rows of similar length batched together
  uint64_t seed = 0;
  int64_t rows_per_batch = 8;  // used to group similar lengths when not packing
};

// The rows of one epoch: a seeded permutation of the examples (the same on every machine),
// then packed first-fit in that order, or bucketed by length.
std::vector<Row> plan_epoch(const ExampleSource& examples, const BatchingOptions& options,
                            int64_t epoch);
// Rows in the examples' own order, no shuffling (validation).
std::vector<Row> plan_in_order(const ExampleSource& examples, const BatchingOptions& options);

// Builds the tensors for rows[begin, begin + count). Packed rows are padded to max_seq_len,
// unpacked ones to the longest row of the batch.
TokenBatch make_batch(const ExampleSource& examples, const std::vector<Row>& rows, int64_t begin,
                      int64_t count, const BatchingOptions& options, int64_t pad_id);

// The same over examples in a vector (identical plans and batches).
std::vector<Row> plan_epoch(const std::vector<Example>& examples, const BatchingOptions& options,
                            int64_t epoch);
std::vector<Row> plan_in_order(const std::vector<Example>& examples,
                               const BatchingOptions& options);
TokenBatch make_batch(const std::vector<Example>& examples, const std::vector<Row>& rows,
                      int64_t begin, int64_t count, const BatchingOptions& options, int64_t pad_id);

// A deterministic split of n examples: `fraction` of them (at least one when fraction > 0),
// chosen by seed, go to validation; both lists of indices ascending. Throws tiller::Error when
// fraction is outside [0, 1) or leaves no training example.
struct ValidationSplit {
  std::vector<int64_t> train, validation;
};
ValidationSplit split_validation(int64_t n, double fraction, uint64_t seed);
// The same split moving the examples of `all` into train and validation.
void split_validation(std::vector<Example>& all, double fraction, uint64_t seed,
                      std::vector<Example>* train, std::vector<Example>* validation);

// splitmix64: a small, portable generator whose stream is fixed by its seed (std's
// distributions are not the same everywhere). Advances `state` and returns the next value.
uint64_t splitmix64(uint64_t& state);

// Portable seeded permutation of [0, n) (Fisher-Yates over a 64-bit mixer; the same everywhere).
std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed);

// Which of `n` records go to validation: `fraction` of them (at least one when fraction > 0), the
// first of a permutation seeded with `seed`. Throws tiller::Error when fraction is outside [0, 1)
// or leaves no training record (`what` names the records: "pairs", "rankings").
std::vector<bool> validation_choice(int64_t n, double fraction, uint64_t seed,
                                    const std::string& what);

}  // namespace tiller
