#include "common/dist/tensor_parallel.h"

#include <optional>

#include "common/util/error.h"

namespace tiller::dist {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// AutogradContext keeps IValues only: the group travels as its address (see the header on its
// lifetime).
void remember(AutogradContext* ctx, const Group& group) {
  ctx->saved_data["group"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(&group));
}
const Group& recall(AutogradContext* ctx) {
  return *reinterpret_cast<const Group*>(static_cast<intptr_t>(ctx->saved_data["group"].toInt()));
}

torch::Tensor all_reduced(const torch::Tensor& x, const Group& group) {
  auto out = x.contiguous().clone();
  group.all_reduce(out);
  return out;
}

struct CopyToTensorParallel : torch::autograd::Function<CopyToTensorParallel> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const Group* group) {
    remember(ctx, *group);
    return x;  // autograd makes the output its own alias of x
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    return {all_reduced(grads[0], recall(ctx)), torch::Tensor()};
  }
};

struct ReduceFromTensorParallel : torch::autograd::Function<ReduceFromTensorParallel> {
  static torch::Tensor forward(AutogradContext*, const torch::Tensor& x, const Group* group) {
    return all_reduced(x, *group);
  }
  static tensor_list backward(AutogradContext*, tensor_list grads) {
    return {grads[0], torch::Tensor()};
  }
};

struct GatherLastDim : torch::autograd::Function<GatherLastDim> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const Group* group) {
    remember(ctx, *group);
    ctx->saved_data["width"] = x.size(-1);
    return torch::cat(group->all_gather(x.contiguous()), -1);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const int64_t width = ctx->saved_data["width"].toInt();
    const int rank = recall(ctx).rank();
    return {grads[0].narrow(-1, rank * width, width).contiguous(), torch::Tensor()};
  }
};

std::optional<Layout>& the_layout() {
  static std::optional<Layout> layout;
  return layout;
}

}  // namespace

torch::Tensor copy_to_tensor_parallel(const torch::Tensor& x, const Group& group) {
  if (group.single()) return x;
  return CopyToTensorParallel::apply(x, &group);
}

torch::Tensor reduce_from_tensor_parallel(const torch::Tensor& x, const Group& group) {
  if (group.single()) return x;
  return ReduceFromTensorParallel::apply(x, &group);
}

torch::Tensor gather_last_dim(const torch::Tensor& x, const Group& group) {
  if (group.single()) return x;
  return GatherLastDim::apply(x, &group);
}

void set_up_layout(int tensor_parallel) {
  const Group& w = world();
  check(tensor_parallel >= 1 && w.size() % tensor_parallel == 0,
        "run.tensor_parallel " + std::to_string(tensor_parallel) + " does not divide the " +
            std::to_string(w.size()) + " ranks of the job");
  check(!the_layout().has_value(), "distributed: the layout is set up once per process");
  Layout layout;
  if (tensor_parallel == 1) {
    layout.data = w;
  } else {
    const int me = w.rank(), slice = me / tensor_parallel, position = me % tensor_parallel;
    std::vector<int> tensor_ranks, data_ranks;
    for (int r = 0; r < tensor_parallel; ++r) tensor_ranks.push_back(slice * tensor_parallel + r);
    for (int r = position; r < w.size(); r += tensor_parallel) data_ranks.push_back(r);
    layout.tensor = new_group(tensor_ranks, "tensor" + std::to_string(slice));
    layout.data = new_group(data_ranks, "data" + std::to_string(position));
  }
  the_layout() = std::move(layout);
}

Layout layout() {
  if (the_layout().has_value()) return *the_layout();
  return Layout{world(), Group()};
}

}  // namespace tiller::dist
