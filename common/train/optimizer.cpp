#include "common/train/optimizer.h"

#include <sstream>

#include "common/train/fused_adamw.h"
#include "common/util/error.h"

namespace tiller {

std::unique_ptr<torch::optim::AdamW> make_adamw(torch::nn::Module& model,
                                                const OptimizerOptions& o) {
  return make_adamw(model, o, [](size_t) { return true; });
}

std::unique_ptr<torch::optim::AdamW> make_adamw(torch::nn::Module& model, const OptimizerOptions& o,
                                                const std::function<bool(size_t)>& include) {
  std::vector<torch::Tensor> decayed, plain;
  size_t index = 0;
  for (auto& item : model.named_parameters(/*recurse=*/true)) {
    if (!item.value().requires_grad()) continue;
    if (!include(index++)) continue;
    const std::string& name = item.key();
    const bool no_decay = item.value().dim() < 2 || name.find("norm") != std::string::npos;
    (no_decay ? plain : decayed).push_back(item.value());
  }
  auto base = torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decayed, std::make_unique<torch::optim::AdamWOptions>(
                                   torch::optim::AdamWOptions(base).weight_decay(o.weight_decay)));
  groups.emplace_back(plain, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(base).weight_decay(0.0)));
  return std::make_unique<FusedAdamW>(groups, base);
}

void set_learning_rate(torch::optim::Optimizer& optimizer, double lr) {
  for (auto& group : optimizer.param_groups())
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
}

namespace {

// The bytes of an AdamW's moments (0 for another optimizer's state): about the size of its
// serialised state.
int64_t adamw_moment_bytes(torch::optim::Optimizer& optimizer) {
  int64_t bytes = 0;
  for (auto& entry : optimizer.state()) {
    const auto* state = dynamic_cast<const torch::optim::AdamWParamState*>(entry.second.get());
    if (state == nullptr) continue;
    for (const auto& t : {state->exp_avg(), state->exp_avg_sq(), state->max_exp_avg_sq()})
      if (t.defined()) bytes += t.numel() * static_cast<int64_t>(t.element_size());
  }
  return bytes;
}

}  // namespace

std::string optimizer_state_bytes(torch::optim::Optimizer& optimizer) {
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  // Written straight into one string reserved at the moments' size (plus the archive's records):
  // an ostringstream and its str() held the state twice while a checkpoint was written, the
  // stage's peak memory (llama-124m: 836 MiB of AdamW moments).
  std::string bytes;
  bytes.reserve(static_cast<size_t>(adamw_moment_bytes(optimizer)) +
                1024 * optimizer.state().size() + (1 << 20));
  archive.save_to([&bytes](const void* data, size_t size) {
    bytes.append(static_cast<const char*>(data), size);
    return size;
  });
  return bytes;
}

void load_optimizer_state(torch::optim::Optimizer& optimizer, const std::string& bytes,
                          const std::string& where) {
  try {
    std::istringstream in(bytes);
    torch::serialize::InputArchive archive;
    archive.load_from(in);
    optimizer.load(archive);
  } catch (const c10::Error& e) {
    throw Error(where + ": cannot restore the optimizer state (" +
                std::string(e.what_without_backtrace()).substr(0, 200) + ")");
  }
}

}  // namespace tiller
