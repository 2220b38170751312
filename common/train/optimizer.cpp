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

std::string optimizer_state_bytes(torch::optim::Optimizer& optimizer) {
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  std::ostringstream out;
  archive.save_to(out);
  return out.str();
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
