// FusedAdamW: LibTorch's AdamW formula in one pass. Against torch::optim::AdamW on a model (both
// parameter groups, weight decay, fused q/k/v views), each kernel set against the formula in
// double precision, checkpoints exchanged with a plain AdamW both ways, and the fallback.
#include "common/train/fused_adamw.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "common/torch_compat.h"
#include "common/train/optimizer.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

OptimizerOptions options() {
  return {1e-2, 0.1, 0.9, 0.95, 1e-8};
}

Transformer model(uint64_t seed) {
  Transformer m(test::llama_config(40, 32, 48, 2, 4, 2, 32));
  m->init_weights(seed);
  return m;
}

// The same optimizer options as make_adamw, in a plain torch::optim::AdamW.
std::unique_ptr<torch::optim::AdamW> plain_adamw(torch::nn::Module& m) {
  auto fused = make_adamw(m, options());
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (auto& g : fused->param_groups()) groups.emplace_back(g.params(), g.options().clone());
  return std::make_unique<torch::optim::AdamW>(
      groups, static_cast<torch::optim::AdamWOptions&>(fused->defaults()));
}

// Gradients from a seeded generator, the same for both models each step.
void set_gradients(torch::nn::Module& m, int step) {
  auto generator = compat::make_cpu_generator(static_cast<uint64_t>(1000 + step));
  for (auto& p : m.parameters()) p.mutable_grad() = torch::randn(p.sizes(), generator) * 0.1;
}

void expect_parameters_close(torch::nn::Module& a, torch::nn::Module& b, double rtol) {
  const auto pa = a.named_parameters(), pb = b.named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    const double diff = (pa[i].value() - pb[i].value()).abs().max().item<double>();
    const double scale = pa[i].value().abs().max().item<double>();
    EXPECT_LE(diff, rtol * scale) << pa[i].key();
  }
}

}  // namespace

TEST(FusedAdamW, UpdatesAsTorchAdamWDoes) {
  auto fused_model = model(1), plain_model = model(1);
  auto fused = make_adamw(*fused_model, options());
  auto plain = plain_adamw(*plain_model);
  for (int step = 0; step < 6; ++step) {
    set_gradients(*fused_model, step);
    set_gradients(*plain_model, step);
    fused->step();
    plain->step();
    EXPECT_TRUE(dynamic_cast<FusedAdamW&>(*fused).last_step_fused()) << "step " << step;
  }
  // Six steps of lr 1e-2 moved every weight by up to ~6e-2; they agree to float rounding.
  expect_parameters_close(*fused_model, *plain_model, 2e-6);
  EXPECT_FALSE(torch::equal(fused_model->named_parameters()[1].value(),
                            model(1)->named_parameters()[1].value()));
  // The moments, too.
  for (auto& p : fused_model->parameters()) {
    auto& s = static_cast<torch::optim::AdamWParamState&>(
        *fused->state().at(compat::optimizer_state_key(fused->state(), p)));
    EXPECT_EQ(s.step(), 6);
  }
}

TEST(FusedAdamW, EachKernelSetFollowsTheFormulaInDoublePrecision) {
  std::vector<AdamWKernels> sets = {AdamWKernels::portable};
  if (best_adamw_kernels() == AdamWKernels::avx2) sets.push_back(AdamWKernels::avx2);
  const int64_t n = 37;  // four 8-lane blocks and a tail
  for (AdamWKernels kernels : sets) {
    for (bool decay : {false, true}) {
      torch::manual_seed(3);
      auto p = torch::randn({n}), g = torch::randn({n}) * 0.1;
      auto m = torch::randn({n}) * 0.01, v = torch::rand({n}) * 1e-3;
      const double lr = 1e-2, wd = 0.1, b1 = 0.9, b2 = 0.95, eps = 1e-8, t = 3;
      AdamWCoefficients c{0.9f,
                          0.1f,
                          0.95f,
                          0.05f,
                          static_cast<float>(1 - lr * wd),
                          static_cast<float>(lr / (1 - std::pow(b1, t))),
                          static_cast<float>(1 / std::sqrt(1 - std::pow(b2, t))),
                          1e-8f,
                          decay};
      auto pd = p.to(torch::kDouble), gd = g.to(torch::kDouble);
      auto md = m.to(torch::kDouble), vd = v.to(torch::kDouble);
      if (decay) pd = pd * (1 - lr * wd);
      md = md * b1 + (1 - b1) * gd;
      vd = vd * b2 + (1 - b2) * gd * gd;
      pd =
          pd - lr / (1 - std::pow(b1, t)) * md / (vd.sqrt() / std::sqrt(1 - std::pow(b2, t)) + eps);
      adamw_update(p.data_ptr<float>(), g.data_ptr<float>(), m.data_ptr<float>(),
                   v.data_ptr<float>(), n, c, kernels);
      SCOPED_TRACE("kernels " + std::to_string(static_cast<int>(kernels)) + ", decay " +
                   std::to_string(decay));
      EXPECT_TRUE(torch::allclose(p.to(torch::kDouble), pd, 1e-6, 1e-7));
      EXPECT_TRUE(torch::allclose(m.to(torch::kDouble), md, 1e-6, 1e-9));
      EXPECT_TRUE(torch::allclose(v.to(torch::kDouble), vd, 1e-6, 1e-12));
    }
  }
}

// The state is AdamW's own: a checkpoint of one continues in the other, both ways.
TEST(FusedAdamW, CheckpointsAreExchangedWithAPlainAdamW) {
  auto fused_model = model(2), plain_model = model(2);
  auto fused = make_adamw(*fused_model, options());
  auto plain = plain_adamw(*plain_model);
  for (int step = 0; step < 3; ++step) {
    set_gradients(*fused_model, step);
    fused->step();
  }
  // The plain one takes over the fused one's weights and state.
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < fused_model->parameters().size(); ++i)
      plain_model->parameters()[i].copy_(fused_model->parameters()[i]);
  }
  load_optimizer_state(*plain, optimizer_state_bytes(*fused), "test");
  // And a second fused one takes over the plain one's (saved before either steps again).
  auto fused_again_model = model(2);
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < fused_model->parameters().size(); ++i)
      fused_again_model->parameters()[i].copy_(fused_model->parameters()[i]);
  }
  auto fused_again = make_adamw(*fused_again_model, options());
  load_optimizer_state(*fused_again, optimizer_state_bytes(*plain), "test");
  for (int step = 3; step < 6; ++step) {
    for (auto* m :
         {fused_model.ptr().get(), plain_model.ptr().get(), fused_again_model.ptr().get()})
      set_gradients(*m, step);
    fused->step();
    plain->step();
    fused_again->step();
  }
  expect_parameters_close(*fused_model, *plain_model, 2e-6);
  // Two fused optimizers from the same weights and state: bit for bit the same.
  for (size_t i = 0; i < fused_model->parameters().size(); ++i)
    EXPECT_TRUE(torch::equal(fused_model->parameters()[i], fused_again_model->parameters()[i]));
}

TEST(FusedAdamW, FallsBackToAdamWForWhatItDoesNotFuse) {
  auto a = torch::randn({4, 6}).requires_grad_(), b = a.detach().clone().requires_grad_();
  torch::optim::AdamWOptions o(1e-2);
  FusedAdamW fused({a}, o);
  torch::optim::AdamW plain({b}, o);
  // A gradient that is a transposed view: not contiguous.
  auto g = torch::randn({6, 4});
  a.mutable_grad() = g.t();
  b.mutable_grad() = g.t();
  fused.step();
  plain.step();
  EXPECT_FALSE(fused.last_step_fused());
  EXPECT_TRUE(torch::equal(a, b)) << "the fallback is AdamW::step itself";
  // Contiguous again: the fused path continues from the state the fallback made.
  a.mutable_grad() = g.t().contiguous();
  b.mutable_grad() = g.t().contiguous();
  fused.step();
  plain.step();
  EXPECT_TRUE(fused.last_step_fused());
  EXPECT_TRUE(torch::allclose(a, b, 1e-6, 1e-7));
}
