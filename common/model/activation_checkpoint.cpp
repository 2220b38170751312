#include "common/model/activation_checkpoint.h"

#include "common/model/transformer.h"
#include "common/torch_compat.h"

namespace tiller {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct CheckpointedLayer : torch::autograd::Function<CheckpointedLayer> {
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x, torch::Tensor cos,
                               torch::Tensor sin, torch::Tensor allowed, int64_t layer_address) {
    ctx->saved_data["layer"] = layer_address;
    ctx->saved_data["autocast"] = compat::cpu_autocast_enabled();
    ctx->save_for_backward({x, cos, sin, allowed});
    auto* layer = reinterpret_cast<DecoderLayerImpl*>(layer_address);
    return layer->forward(x, cos, sin, allowed, nullptr, 0);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto* layer = reinterpret_cast<DecoderLayerImpl*>(ctx->saved_data["layer"].toInt());
    const bool autocast = ctx->saved_data["autocast"].toBool();
    auto saved = ctx->get_saved_variables();
    auto x = saved[0].detach().requires_grad_(true);
    torch::Tensor out;
    {
      torch::AutoGradMode grad_on(true);
      compat::AutocastGuard cast(autocast, x.device());
      out = layer->forward(x, saved[1], saved[2], saved[3], nullptr, 0);
    }
    torch::autograd::backward({out}, {grad_outputs[0]});
    return {x.grad(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor checkpointed_layer(DecoderLayerImpl& layer, const torch::Tensor& x,
                                 const torch::Tensor& cos, const torch::Tensor& sin,
                                 const torch::Tensor& allowed) {
  // The function's output needs a gradient where the layer's own parameters train even though x
  // has none (LoRA adapters after a frozen embedding); x then takes one, which nothing reads.
  bool layer_trains = layer.self_attn->lora != nullptr || layer.mlp->lora != nullptr;
  for (const auto& p : layer.parameters()) layer_trains = layer_trains || p.requires_grad();
  const bool needs_input_grad = layer_trains && !x.requires_grad() && torch::GradMode::is_enabled();
  return CheckpointedLayer::apply(needs_input_grad ? x.detach().requires_grad_(true) : x, cos, sin,
                                  allowed, reinterpret_cast<int64_t>(&layer));
}

}  // namespace tiller
