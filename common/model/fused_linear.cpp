#include "common/model/fused_linear.h"

#include <numeric>

#include "common/model/bf16_matmul.h"
#include "common/torch_compat.h"
#include "common/util/error.h"

namespace tiller {

namespace F = torch::nn::functional;

void fuse_parameter_storage(const std::vector<torch::Tensor>& parts) {
  check(!parts.empty(), "fuse_parameter_storage: no tensors");
  int64_t total = 0;
  for (const auto& part : parts) {
    check(part.is_contiguous() && part.scalar_type() == parts[0].scalar_type() &&
              part.device() == parts[0].device(),
          "fuse_parameter_storage: the tensors must be contiguous, of one dtype and device");
    total += part.numel();
  }
  torch::NoGradGuard no_grad;
  const auto buffer = torch::empty({total}, parts[0].options().requires_grad(false));
  int64_t offset = 0;
  for (const auto& part : parts) {
    auto slot = buffer.narrow(0, offset, part.numel()).view(part.sizes());
    slot.copy_(part.detach());
    part.set_data(slot);  // the same parameter (autograd leaf), its data now a view of the buffer
    offset += part.numel();
  }
}

bool stored_back_to_back(const std::vector<torch::Tensor>& parts) {
  if (parts.empty() || !parts[0].defined() || !parts[0].has_storage()) return false;
  const auto& first = parts[0];
  int64_t offset = first.storage_offset();
  for (const auto& part : parts) {
    if (!part.defined() || !part.has_storage() || !part.is_contiguous() ||
        part.scalar_type() != first.scalar_type() || part.device() != first.device() ||
        !part.storage().is_alias_of(first.storage()) || part.storage_offset() != offset)
      return false;
    offset += part.numel();
  }
  return true;
}

namespace {

int64_t rows_of(const std::vector<int64_t>& sizes) {
  return std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
}

// The back-to-back parts as one tensor: weights [sum out_i, in], biases [sum out_i].
torch::Tensor whole(torch::TensorList parts) {
  int64_t rows = 0;
  for (const auto& part : parts) rows += part.size(0);
  const auto& first = parts[0];
  if (first.dim() == 1) return first.detach().as_strided({rows}, {1}, first.storage_offset());
  const int64_t columns = first.size(1);
  return first.detach().as_strided({rows, columns}, {columns, 1}, first.storage_offset());
}

torch::Tensor multiply(const torch::Tensor& input, const torch::Tensor& weight,
                       const torch::Tensor& bias) {
  const auto flat = input.reshape({-1, input.size(-1)});
  auto out = bias.defined() ? torch::addmm(bias, flat, weight.t()) : torch::mm(flat, weight.t());
  auto shape = input.sizes().vec();
  shape.back() = weight.size(0);
  return out.view(shape);
}

// Appends a gradient of the joined weights (or biases) to `out`, one part per fused matrix.
void append_parts(torch::autograd::variable_list& out, const torch::Tensor& joined,
                  const std::vector<int64_t>& rows) {
  for (auto& part : joined.split_with_sizes(rows, 0)) out.push_back(part);
}

// One matrix multiply forward; backward, one for the input's gradient and one for all the
// weights' gradients, handed to each weight as its rows.
struct FusedLinear : torch::autograd::Function<FusedLinear> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input,
                               torch::TensorList weights, torch::TensorList biases) {
    const auto weight = whole(weights);
    std::vector<int64_t> rows;
    for (const auto& w : weights) rows.push_back(w.size(0));
    ctx->saved_data["rows"] = rows;
    ctx->saved_data["biased"] = !biases.empty();
    // A frozen base (LoRA) needs no weight gradient: skipping it saves a third of the work, and
    // the input, kept only for that gradient, is not held until backward.
    bool weights_train = false;
    for (const auto& w : weights) weights_train = weights_train || w.requires_grad();
    for (const auto& b : biases) weights_train = weights_train || b.requires_grad();
    ctx->saved_data["weights_train"] = weights_train;
    ctx->saved_data["input_sizes"] = input.sizes().vec();
    ctx->save_for_backward({weights_train ? input : torch::Tensor(), weight});
    return multiply(input, weight, biases.empty() ? torch::Tensor() : whole(biases));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto& input = saved[0];
    const auto& weight = saved[1];
    const auto rows = ctx->saved_data["rows"].toIntVector();
    const bool biased = ctx->saved_data["biased"].toBool();
    const auto grad = grad_outputs[0].reshape({-1, rows_of(rows)});
    torch::autograd::variable_list out;
    out.push_back(grad.mm(weight).view(ctx->saved_data["input_sizes"].toIntVector()));
    if (!ctx->saved_data["weights_train"].toBool()) {
      out.resize(1 + rows.size() * (biased ? 2 : 1));  // undefined: no gradient
      return out;
    }
    append_parts(out, grad.t().mm(input.reshape({-1, input.size(-1)})), rows);
    if (biased) append_parts(out, grad.sum(0), rows);
    return out;
  }
};

// A frozen weight stored narrower than the input (a LoRA's bf16 base): widened for the multiply,
// one matrix at a time, and widened again for the input's gradient instead of keeping the wide
// copy alive until backward (which would hold every layer's at once).
struct WidenedLinear : torch::autograd::Function<WidenedLinear> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input,
                               const torch::Tensor& narrow) {
    ctx->save_for_backward({narrow});
    ctx->saved_data["input_sizes"] = input.sizes().vec();
    return multiply(input, narrow.to(input.scalar_type()), torch::Tensor());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto narrow = ctx->get_saved_variables()[0];
    const auto sizes = ctx->saved_data["input_sizes"].toIntVector();
    const auto grad = grad_outputs[0].reshape({-1, narrow.size(0)});
    return {grad.mm(narrow.to(grad.scalar_type())).view(sizes), torch::Tensor()};
  }
};

torch::Tensor project_widened(const torch::Tensor& input, const std::vector<torch::Tensor>& weights,
                              const std::vector<torch::Tensor>& biases) {
  for (const auto& w : weights)
    check(!w.requires_grad(), std::string("project: a weight stored in ") +
                                  c10::toString(w.scalar_type()) + " under a " +
                                  c10::toString(input.scalar_type()) +
                                  " input must be frozen (a LoRA's base)");
  const auto narrow = stored_back_to_back(weights) ? whole(weights) : torch::cat(weights);
  const bool tracked = torch::GradMode::is_enabled() && input.requires_grad();
  auto joined = tracked ? WidenedLinear::apply(input, narrow)
                        : multiply(input, narrow.to(input.scalar_type()), torch::Tensor());
  if (!biases.empty()) joined = joined + torch::cat(biases);  // fp32, and may train
  return joined;
}

// bf16 and contiguous (a copy unless it already is).
torch::Tensor to_bf16(const torch::Tensor& t) {
  auto out = t.to(torch::kBFloat16);
  return out.is_contiguous() ? out : out.contiguous();
}

// The weights as one bf16 [sum out_i, in] matrix: one cast of the shared buffer when they lie
// back to back, else of their concatenation.
torch::Tensor bf16_rows(torch::TensorList weights) {
  if (stored_back_to_back(weights.vec())) return to_bf16(whole(weights));
  std::vector<torch::Tensor> parts;
  for (const auto& w : weights) parts.push_back(w.detach());
  return to_bf16(torch::cat(parts));
}

// input [N, in] bf16 x weight [out, in] bf16 -> [..., out] fp32 (`sizes` the input's), plus the
// biases in fp32.
torch::Tensor bf16_product(const torch::Tensor& flat, const torch::Tensor& weight,
                           torch::TensorList biases, torch::IntArrayRef sizes) {
  auto out = bf16_matmul(flat, false, weight, true);
  if (!biases.empty()) out.add_(whole(biases).to(torch::kFloat));
  auto shape = sizes.vec();
  shape.back() = weight.size(0);
  return out.view(shape);
}

// Under bf16 autocast on a CPU with fast bf16: the operands rounded to bf16 as autocast rounds
// them, the sums kept in fp32 (bf16_matmul) and returned in fp32, where autocast's linear would
// round them to bf16 too. Forward one multiply; backward the output's gradient rounded to bf16
// once for the input's gradient and the weights'. Saves the input and weights in bf16.
struct Bf16Linear : torch::autograd::Function<Bf16Linear> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input,
                               torch::TensorList weights, torch::TensorList biases) {
    const auto flat = to_bf16(input.reshape({-1, input.size(-1)}));
    const auto weight = bf16_rows(weights);
    std::vector<int64_t> rows;
    for (const auto& w : weights) rows.push_back(w.size(0));
    bool weights_train = false;
    for (const auto& w : weights) weights_train = weights_train || w.requires_grad();
    for (const auto& b : biases) weights_train = weights_train || b.requires_grad();
    ctx->saved_data["rows"] = rows;
    ctx->saved_data["biased"] = !biases.empty();
    ctx->saved_data["weights_train"] = weights_train;
    ctx->saved_data["input_sizes"] = input.sizes().vec();
    ctx->saved_data["input_dtype"] = static_cast<int64_t>(input.scalar_type());
    ctx->save_for_backward({weights_train ? flat : torch::Tensor(), weight});
    return bf16_product(flat, weight, biases, input.sizes());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto& flat = saved[0];
    const auto& weight = saved[1];
    const auto rows = ctx->saved_data["rows"].toIntVector();
    const bool biased = ctx->saved_data["biased"].toBool();
    const auto grad = grad_outputs[0].reshape({-1, rows_of(rows)});
    const auto narrow_grad = to_bf16(grad);
    torch::autograd::variable_list out;
    if (ctx->needs_input_grad(0)) {
      const auto dtype = static_cast<torch::ScalarType>(ctx->saved_data["input_dtype"].toInt());
      out.push_back(bf16_matmul(narrow_grad, false, weight, false)
                        .view(ctx->saved_data["input_sizes"].toIntVector())
                        .to(dtype));
    } else {
      out.emplace_back();
    }
    if (!ctx->saved_data["weights_train"].toBool()) {
      out.resize(1 + rows.size() * (biased ? 2 : 1));  // undefined: no gradient
      return out;
    }
    append_parts(out, bf16_matmul(narrow_grad, true, flat, false), rows);  // [out, in]
    if (biased) append_parts(out, grad.to(torch::kFloat).sum(0), rows);
    return out;
  }
};

// Whether project() takes Bf16Linear: bf16 autocast on the CPU, fp32 (master) or bf16 (a LoRA's
// frozen base) weights, and bf16_matmul available.
bool bf16_autocast_product(const torch::Tensor& input, const std::vector<torch::Tensor>& weights,
                           const std::vector<torch::Tensor>& biases) {
  if (weights.empty() || !input.device().is_cpu() || !compat::cpu_autocast_bf16()) return false;
  const auto floating = [](const torch::Tensor& t) {
    return t.device().is_cpu() &&
           (t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kBFloat16);
  };
  if (!floating(input)) return false;
  for (const auto& w : weights)
    if (!floating(w) || w.dim() != 2) return false;
  for (const auto& b : biases)
    if (!floating(b)) return false;
  if (!biases.empty() && !stored_back_to_back(biases)) return false;
  return bf16_matmul_available();
}

torch::Tensor project_bf16(const torch::Tensor& input, const std::vector<torch::Tensor>& weights,
                           const std::vector<torch::Tensor>& biases) {
  bool tracked = false;
  if (torch::GradMode::is_enabled()) {
    tracked = input.requires_grad();
    for (const auto& t : weights) tracked = tracked || t.requires_grad();
    for (const auto& t : biases) tracked = tracked || t.requires_grad();
  }
  return tracked ? Bf16Linear::apply(input, torch::TensorList(weights), torch::TensorList(biases))
                 : bf16_product(to_bf16(input.reshape({-1, input.size(-1)})), bf16_rows(weights),
                                biases, input.sizes());
}

// Whether the back-to-back weights can be multiplied as one matrix in the input's dtype: not
// under autocast (without fast bf16 it chooses each matmul's dtype itself), nor off the CPU.
bool fusable_in_place(const torch::Tensor& input, const std::vector<torch::Tensor>& weights,
                      const std::vector<torch::Tensor>& biases) {
  return input.device().is_cpu() && !compat::cpu_autocast_enabled() &&
         input.scalar_type() == weights[0].scalar_type() && stored_back_to_back(weights) &&
         (biases.empty() || stored_back_to_back(biases));
}

// One F::linear per layer: autocast without fast bf16, CUDA, parts not back to back.
std::vector<torch::Tensor> separate_linears(const torch::Tensor& input,
                                            const std::vector<torch::Tensor>& weights,
                                            const std::vector<torch::Tensor>& biases) {
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < weights.size(); ++i)
    out.push_back(F::linear(input, weights[i], biases.empty() ? torch::Tensor() : biases[i]));
  return out;
}

// The product by the back-to-back weights in one multiply (one path of project_joined).
torch::Tensor project_fused(const torch::Tensor& input, const std::vector<torch::Tensor>& weights,
                            const std::vector<torch::Tensor>& biases) {
  bool tracked = false;
  if (torch::GradMode::is_enabled()) {
    tracked = input.requires_grad();
    for (const auto& t : weights) tracked = tracked || t.requires_grad();
    for (const auto& t : biases) tracked = tracked || t.requires_grad();
  }
  return tracked
             ? FusedLinear::apply(input, torch::TensorList(weights), torch::TensorList(biases))
             : multiply(input, whole(weights), biases.empty() ? torch::Tensor() : whole(biases));
}

bool widened(const torch::Tensor& input, const std::vector<torch::Tensor>& weights) {
  return weights[0].scalar_type() != input.scalar_type() &&
         !compat::autocast_enabled(input.device());
}

}  // namespace

torch::Tensor project_joined(const torch::Tensor& input, const std::vector<torch::Tensor>& weights,
                             const std::vector<torch::Tensor>& biases) {
  check(!weights.empty(), "project: no weights");
  check(biases.empty() || biases.size() == weights.size(), "project: one bias per weight");
  if (bf16_autocast_product(input, weights, biases)) return project_bf16(input, weights, biases);
  if (widened(input, weights)) return project_widened(input, weights, biases);
  if (fusable_in_place(input, weights, biases)) return project_fused(input, weights, biases);
  const auto parts = separate_linears(input, weights, biases);
  return parts.size() == 1 ? parts[0] : torch::cat(parts, -1);
}

std::vector<torch::Tensor> project(const torch::Tensor& input,
                                   const std::vector<torch::Tensor>& weights,
                                   const std::vector<torch::Tensor>& biases) {
  check(!weights.empty(), "project: no weights");
  check(biases.empty() || biases.size() == weights.size(), "project: one bias per weight");
  if (!bf16_autocast_product(input, weights, biases) && !widened(input, weights) &&
      !fusable_in_place(input, weights, biases))
    return separate_linears(input, weights, biases);
  const auto joined = project_joined(input, weights, biases);
  if (weights.size() == 1) return {joined};
  std::vector<int64_t> rows;
  for (const auto& w : weights) rows.push_back(w.size(0));
  return joined.split_with_sizes(rows, -1);
}

torch::Tensor project(const torch::Tensor& input, const torch::Tensor& weight) {
  return project(input, std::vector<torch::Tensor>{weight}, {}).front();
}

}  // namespace tiller
