// The optimizer every training loop steps through: AdamW (optimizer.h) over a data-parallel group.
//
//   zero_grad -> each rank's backward (scaled to its share of the global batch)
//   -> reduce_gradients_and_clip (bucketed all-reduce sum, then one global norm and clip)
//   -> step (every rank the same update, so the weights stay identical everywhere)
//
// ZeRO stage 1 (zero_stage = 1): each rank keeps the AdamW state of its own parameters only
// (balanced by size), updates them, and broadcasts them to the others; the weights are bit for
// bit those of plain data parallel. On one process both are plain AdamW.
//
// Checkpoints hold the whole state in one world-size-independent file (gathered to rank 0), so a
// run saved on N ranks resumes on M.
//
// Tensor parallel: the group is the data-parallel one; the model's sharded parameters are named
// in ParallelOptions, and the gradient norm sums their squares over the tensor-parallel group
// (replicated parameters, identical on every member, count once). Each tensor-parallel rank's
// state covers its own shards; ZeRO-1 is not combined with tensor parallelism.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "common/dist/process_group.h"
#include "common/train/optimizer.h"

namespace tiller {

struct ParallelOptions {
  int zero_stage = 0;                 // 0: replicated state; 1: state sharded over the group
  int64_t bucket_bytes = 25ll << 20;  // gradient all-reduce bucket
  dist::Group tensor_parallel;        // the group the model is sharded over (single: none)
  std::vector<torch::Tensor> tensor_parallel_shards;  // the parameters that are shards
};

class ParallelAdamW {
 public:
  ParallelAdamW(torch::nn::Module& model, const OptimizerOptions& options, const dist::Group& group,
                ParallelOptions parallel = {});

  void zero_grad();
  void set_learning_rate(double lr);
  double learning_rate() const { return lr_; }
  // Sums every parameter's gradient over the group (a missing one counts as zeros), then clips
  // them to max_norm (<= 0: no clipping). Returns the global norm before clipping.
  double reduce_gradients_and_clip(double max_norm);
  // The AdamW update; under ZeRO-1 each rank updates its parameters and broadcasts them.
  void step();

  // Bytes of optimizer state this rank holds (moments and step counts).
  int64_t state_bytes() const;
  // Collective: every member's state_bytes(), in group-rank order.
  std::vector<int64_t> state_bytes_per_rank() const;
  // Collective: "optimizer state per rank: 0.41, 0.39 MiB (ZeRO-1)" for the log.
  std::string describe_state_per_rank() const;
  // Collective (every rank calls it): the whole state serialized as a plain AdamW over the model
  // (optimizer.h's format). Rank 0 gets the bytes, other ranks an empty string.
  std::string gathered_state();
  // Restores from gathered_state()'s bytes; every rank keeps what it owns.
  void load_gathered_state(const std::string& bytes, const std::string& where);

  const std::vector<torch::Tensor>& parameters() const { return params_; }
  int zero_stage() const { return parallel_.zero_stage; }
  const dist::Group& tensor_parallel() const { return parallel_.tensor_parallel; }

 private:
  bool owns(size_t index) const { return owner_[index] == group_.rank(); }
  // clip_grad_norm_ with the norm taken over the tensor-parallel group's shards.
  double clip_tensor_parallel(double max_norm);

  torch::nn::Module& model_;
  OptimizerOptions options_;
  dist::Group group_;
  ParallelOptions parallel_;
  std::vector<torch::Tensor> params_;           // trainable parameters, in the model's order
  std::vector<int> owner_;                      // group rank that updates each parameter
  std::vector<bool> shard_;                     // a tensor-parallel shard (per parameter)
  std::unique_ptr<torch::optim::AdamW> adamw_;  // over every parameter, or this rank's
  double lr_;
};

}  // namespace tiller
