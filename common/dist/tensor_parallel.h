// Tensor parallelism (Megatron-style): autograd-aware collectives over a tensor-parallel group,
// and the 2-D layout of a job (data parallel x tensor parallel).
//
// The three collectives are the only places where a sharded model talks to its peers:
//   copy_to_tensor_parallel      forward: identity          backward: all-reduce sum
//   reduce_from_tensor_parallel  forward: all-reduce sum    backward: identity
//   gather_last_dim              forward: all-gather, cat   backward: this rank's slice
// A column-parallel linear takes copy_to_... of its input; a row-parallel one hands its partial
// output to reduce_from_.... On a single-process group all three are the identity.
//
// The group must outlive every graph built with it (backward reads it).
#pragma once
#include <torch/torch.h>

#include "common/dist/process_group.h"

namespace tiller::dist {

torch::Tensor copy_to_tensor_parallel(const torch::Tensor& x, const Group& group);
torch::Tensor reduce_from_tensor_parallel(const torch::Tensor& x, const Group& group);
// Every member's x ([..., n], the same n everywhere) -> [..., n * size], in group-rank order.
torch::Tensor gather_last_dim(const torch::Tensor& x, const Group& group);

// The job as data parallel x tensor parallel: tensor-parallel groups of consecutive world ranks
// ({0, 1}, {2, 3} for 4 ranks at degree 2), data-parallel groups across them ({0, 2}, {1, 3}).
struct Layout {
  Group data;    // this rank's data-parallel group: the optimizer's and the data shards'
  Group tensor;  // this rank's tensor-parallel group: the one the model is sharded over
};

// Once per process, after initialize(), on every rank with the same degree (a collective: it
// creates the groups). A degree that does not divide the world is a tiller::Error.
void set_up_layout(int tensor_parallel);
// The layout set up, or (world, a single process) when none was.
Layout layout();

}  // namespace tiller::dist
