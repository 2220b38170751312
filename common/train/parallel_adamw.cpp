#include "common/train/parallel_adamw.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>

#include "common/torch_compat.h"
#include "common/util/error.h"

namespace tiller {

namespace {

// Largest first, each to the least-loaded rank: about 1/size of the elements on every rank.
std::vector<int> balanced_owners(const std::vector<torch::Tensor>& params, int size) {
  std::vector<size_t> order(params.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return params[a].numel() > params[b].numel(); });
  std::vector<int64_t> load(static_cast<size_t>(size), 0);
  std::vector<int> owner(params.size(), 0);
  for (size_t i : order) {
    const auto least = std::min_element(load.begin(), load.end()) - load.begin();
    owner[i] = static_cast<int>(least);
    load[static_cast<size_t>(least)] += params[i].numel();
  }
  return owner;
}

// Flattens tensors into one buffer and back: one collective for many small tensors.
torch::Tensor flatten(const std::vector<torch::Tensor>& tensors) {
  std::vector<torch::Tensor> flat;
  for (const auto& t : tensors) flat.push_back(t.reshape({-1}));
  return torch::cat(flat);
}

void unflatten_into(const torch::Tensor& flat, const std::vector<torch::Tensor>& tensors) {
  int64_t offset = 0;
  for (const auto& t : tensors) {
    t.copy_(flat.narrow(0, offset, t.numel()).view_as(t));
    offset += t.numel();
  }
}

torch::optim::AdamWParamState* adamw_state(torch::optim::AdamW& adamw, const torch::Tensor& p) {
  auto& state = adamw.state();
  auto it = state.find(compat::optimizer_state_key(state, p));
  if (it == state.end()) return nullptr;
  return static_cast<torch::optim::AdamWParamState*>(it->second.get());
}

}  // namespace

ParallelAdamW::ParallelAdamW(torch::nn::Module& model, const OptimizerOptions& options,
                             const dist::Group& group, ParallelOptions parallel)
    : model_(model), options_(options), group_(group), parallel_(parallel), lr_(options.lr) {
  check(parallel_.zero_stage == 0 || parallel_.zero_stage == 1,
        "optimizer: zero_stage must be 0 or 1, got " + std::to_string(parallel_.zero_stage));
  check(parallel_.bucket_bytes > 0, "optimizer: the all-reduce bucket must be positive");
  check(parallel_.zero_stage == 0 || parallel_.tensor_parallel.single(),
        "optimizer: ZeRO-1 (train.zero_stage 1) cannot be combined with tensor parallelism "
        "(run.tensor_parallel > 1)");
  for (auto& p : model.parameters())
    if (p.requires_grad()) params_.push_back(p);
  for (const auto& p : params_) {
    bool is_shard = false;
    for (const auto& s : parallel_.tensor_parallel_shards) is_shard |= s.is_same(p);
    shard_.push_back(is_shard);
  }
  const bool sharded = parallel_.zero_stage == 1 && !group_.single();
  owner_ = sharded ? balanced_owners(params_, group_.size()) : std::vector<int>(params_.size(), -1);
  if (sharded) {
    adamw_ = make_adamw(model, options, [&](size_t i) { return owns(i); });
  } else {
    adamw_ = make_adamw(model, options);
  }
}

void ParallelAdamW::zero_grad() {
  // Every parameter's, not only those a sharded AdamW holds (adamw_->zero_grad() would clear
  // those twice).
  for (auto& p : params_)
    if (p.grad().defined()) p.mutable_grad().zero_();
}

void ParallelAdamW::set_learning_rate(double lr) {
  lr_ = lr;
  tiller::set_learning_rate(*adamw_, lr);
}

double ParallelAdamW::reduce_gradients_and_clip(double max_norm) {
  if (!group_.single()) {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> bucket;
    int64_t bytes = 0;
    auto flush = [&] {
      if (bucket.empty()) return;
      auto flat = flatten(bucket);
      group_.all_reduce(flat);
      unflatten_into(flat, bucket);
      bucket.clear();
      bytes = 0;
    };
    for (auto& p : params_) {
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      const auto& g = p.grad();
      if (!bucket.empty() && bucket.front().scalar_type() != g.scalar_type()) flush();
      bucket.push_back(g);
      bytes += g.numel() * static_cast<int64_t>(g.element_size());
      if (bytes >= parallel_.bucket_bytes) flush();
    }
    flush();
  }
  if (!parallel_.tensor_parallel.single()) return clip_tensor_parallel(max_norm);
  return torch::nn::utils::clip_grad_norm_(
      params_, max_norm > 0 ? max_norm : std::numeric_limits<double>::infinity());
}

double ParallelAdamW::clip_tensor_parallel(double max_norm) {
  torch::NoGradGuard no_grad;
  const auto on_group =
      torch::TensorOptions(torch::kDouble).device(parallel_.tensor_parallel.device());
  auto replicated = torch::zeros({}, on_group), sharded = torch::zeros({}, on_group);
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& g = params_[i].grad();
    if (!g.defined()) continue;
    (shard_[i] ? sharded : replicated) += g.to(on_group).pow(2).sum();
  }
  parallel_.tensor_parallel.all_reduce(sharded);
  const double norm = std::sqrt((replicated + sharded).item<double>());
  const double coefficient = max_norm / (norm + 1e-6);  // clip_grad_norm_'s
  if (max_norm > 0 && coefficient < 1)
    for (auto& p : params_)
      if (p.grad().defined()) p.mutable_grad().mul_(coefficient);
  return norm;
}

void ParallelAdamW::step() {
  adamw_->step();
  if (parallel_.zero_stage != 1 || group_.single()) return;
  torch::NoGradGuard no_grad;
  for (int root = 0; root < group_.size(); ++root) {
    std::vector<torch::Tensor> owned;
    for (size_t i = 0; i < params_.size(); ++i)
      if (owner_[i] == root) owned.push_back(params_[i].detach());
    if (owned.empty()) continue;
    auto flat = flatten(owned);
    group_.broadcast(flat, root);
    if (root != group_.rank()) unflatten_into(flat, owned);
  }
}

int64_t ParallelAdamW::state_bytes() const {
  int64_t bytes = 0;
  for (const auto& p : params_) {
    auto* s = adamw_state(*adamw_, p);
    if (s == nullptr) continue;
    for (const auto& t : {s->exp_avg(), s->exp_avg_sq(), s->max_exp_avg_sq()})
      if (t.defined()) bytes += t.numel() * static_cast<int64_t>(t.element_size());
    bytes += static_cast<int64_t>(sizeof(int64_t));  // the step count
  }
  return bytes;
}

std::vector<int64_t> ParallelAdamW::state_bytes_per_rank() const {
  const auto mine =
      torch::tensor({static_cast<double>(state_bytes())}, torch::kDouble).to(group_.device());
  std::vector<int64_t> out;
  for (const auto& t : group_.all_gather(mine))
    out.push_back(static_cast<int64_t>(t.item<double>()));
  return out;
}

std::string ParallelAdamW::describe_state_per_rank() const {
  std::string out = "optimizer state per rank:";
  char figure[32];
  const auto bytes = state_bytes_per_rank();
  for (size_t r = 0; r < bytes.size(); ++r) {
    std::snprintf(figure, sizeof figure, "%s %.3f", r == 0 ? "" : ",",
                  static_cast<double>(bytes[r]) / (1 << 20));
    out += figure;
  }
  return out + " MiB" + (parallel_.zero_stage == 1 && !group_.single() ? " (ZeRO-1)" : "");
}

std::string ParallelAdamW::gathered_state() {
  if (parallel_.zero_stage != 1 || group_.single())
    return group_.rank() == 0 ? optimizer_state_bytes(*adamw_) : std::string();
  // Rank 0 assembles a plain AdamW over every parameter from the owners' shards, one
  // parameter at a time (so no rank ever holds more than one extra parameter's moments).
  std::unique_ptr<torch::optim::AdamW> whole;
  if (group_.rank() == 0) {
    whole = make_adamw(model_, options_);
    tiller::set_learning_rate(*whole, lr_);
  }
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& p = params_[i];
    auto* mine = owns(i) ? adamw_state(*adamw_, p) : nullptr;
    auto header = torch::tensor({mine != nullptr ? 1.0 : 0.0,
                                 mine != nullptr ? static_cast<double>(mine->step()) : 0.0},
                                torch::kDouble)
                      .to(group_.device());
    group_.broadcast(header, owner_[i]);
    if (header[0].item<double>() == 0) continue;
    auto exp_avg = mine ? mine->exp_avg().contiguous() : torch::empty_like(p);
    auto exp_avg_sq = mine ? mine->exp_avg_sq().contiguous() : torch::empty_like(p);
    group_.broadcast(exp_avg, owner_[i]);
    group_.broadcast(exp_avg_sq, owner_[i]);
    if (!whole) continue;
    auto state = std::make_unique<torch::optim::AdamWParamState>();
    state->step(static_cast<int64_t>(header[1].item<double>()));
    state->exp_avg(exp_avg.clone());
    state->exp_avg_sq(exp_avg_sq.clone());
    whole->state()[compat::optimizer_state_key(whole->state(), p)] = std::move(state);
  }
  return whole ? optimizer_state_bytes(*whole) : std::string();
}

void ParallelAdamW::load_gathered_state(const std::string& bytes, const std::string& where) {
  if (parallel_.zero_stage != 1 || group_.single()) {
    load_optimizer_state(*adamw_, bytes, where);
    return;
  }
  auto whole = make_adamw(model_, options_);
  load_optimizer_state(*whole, bytes, where);
  auto& from = whole->state();
  auto& to = adamw_->state();
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!owns(i)) continue;
    auto it = from.find(compat::optimizer_state_key(from, params_[i]));
    if (it != from.end()) to[compat::optimizer_state_key(to, params_[i])] = std::move(it->second);
  }
}

}  // namespace tiller
