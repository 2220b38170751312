// Fused projections (common/model/fused_linear.h): q/k/v and gate/up computed as one matrix
// multiply give what separate linear layers give, forward and backward, and the model keeps its
// parameters back to back through an optimizer step and a load.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/io/hf_dir.h"
#include "common/model/fused_linear.h"
#include "common/model/transformer.h"
#include "tests/test_util.h"

namespace tiller {
namespace {

namespace F = torch::nn::functional;

// max |a - b| over max |b|: differences relative to the tensor's scale.
double relative_difference(const torch::Tensor& a, const torch::Tensor& b) {
  const double scale = std::max(b.abs().max().item<double>(), 1e-30);
  return (a - b).abs().max().item<double>() / scale;
}

// Copies of the tensors, each with its own storage, tracked for gradients.
std::vector<torch::Tensor> separate_copies(const std::vector<torch::Tensor>& parts) {
  std::vector<torch::Tensor> out;
  for (const auto& p : parts) out.push_back(p.detach().clone().requires_grad_(true));
  return out;
}

TEST(FusedLinear, ProjectEqualsSeparateLinearsForwardAndBackward) {
  torch::manual_seed(3);
  std::vector<torch::Tensor> weights = {torch::randn({12, 16}), torch::randn({4, 16}),
                                        torch::randn({4, 16})};
  std::vector<torch::Tensor> biases = {torch::randn({12}), torch::randn({4}), torch::randn({4})};
  for (auto& t : weights) t.requires_grad_(true);
  for (auto& t : biases) t.requires_grad_(true);
  fuse_parameter_storage(weights);
  fuse_parameter_storage(biases);
  ASSERT_TRUE(stored_back_to_back(weights));
  ASSERT_TRUE(stored_back_to_back(biases));

  const auto separate_weights = separate_copies(weights);
  const auto separate_biases = separate_copies(biases);
  ASSERT_FALSE(stored_back_to_back(separate_weights));

  const auto input = torch::randn({3, 5, 16}).requires_grad_(true);
  const auto input_copy = input.detach().clone().requires_grad_(true);
  const auto fused = project(input, weights, biases);
  const auto unfused = project(input_copy, separate_weights, separate_biases);
  ASSERT_EQ(fused.size(), 3u);
  torch::Tensor fused_loss = torch::zeros({}), unfused_loss = torch::zeros({});
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_EQ(fused[i].sizes(), unfused[i].sizes());
    EXPECT_LT(relative_difference(fused[i], unfused[i]), 1e-5) << "output " << i;
    EXPECT_LT(relative_difference(unfused[i],
                                  F::linear(input_copy, separate_weights[i], separate_biases[i])),
              1e-6);
    const auto direction = torch::randn(fused[i].sizes());
    fused_loss = fused_loss + (fused[i] * direction).sum();
    unfused_loss = unfused_loss + (unfused[i] * direction).sum();
  }
  fused_loss.backward();
  unfused_loss.backward();
  EXPECT_LT(relative_difference(input.grad(), input_copy.grad()), 1e-5);
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(weights[i].grad().defined());
    EXPECT_EQ(weights[i].grad().sizes(), weights[i].sizes());
    EXPECT_LT(relative_difference(weights[i].grad(), separate_weights[i].grad()), 1e-5) << i;
    EXPECT_LT(relative_difference(biases[i].grad(), separate_biases[i].grad()), 1e-5) << i;
  }

  // A second backward (gradient accumulation) adds to the same gradients.
  const auto before = weights[1].grad().clone();
  const auto again = project(input, weights, biases);
  (again[1] * 2).sum().backward();
  const auto expected =
      before + 2 * torch::ones({3 * 5, 4}).t().mm(input.detach().reshape({-1, 16}));
  EXPECT_LT(relative_difference(weights[1].grad(), expected), 1e-5);
}

// A frozen base (LoRA): only the input's gradient, equal to the separate linears', in fp32 and
// with the weights stored in bf16 (widened for each multiply); a bf16 weight that trains is
// refused.
TEST(FusedLinear, FrozenWeightsGiveTheInputGradientAloneAlsoStoredInBf16) {
  torch::manual_seed(4);
  std::vector<torch::Tensor> weights = {torch::randn({12, 16}), torch::randn({4, 16})};
  std::vector<torch::Tensor> biases = {torch::randn({12}), torch::randn({4})};
  fuse_parameter_storage(weights);
  std::vector<torch::Tensor> narrow = {weights[0].to(torch::kBFloat16),
                                       weights[1].to(torch::kBFloat16)};
  fuse_parameter_storage(narrow);
  const auto x = torch::randn({3, 5, 16});
  const auto gradient = [&](const std::vector<torch::Tensor>& w, bool separate) {
    const auto input = x.clone().requires_grad_(true);
    const auto out = separate ? std::vector<torch::Tensor>{F::linear(input, w[0], biases[0]),
                                                           F::linear(input, w[1], biases[1])}
                              : project(input, w, biases);
    const auto d0 = torch::ones(out[0].sizes()), d1 = torch::full(out[1].sizes(), 0.5);
    ((out[0] * d0).sum() + (out[1] * d1).sum()).backward();
    return std::pair{out, input.grad()};
  };
  const auto [fused_out, fused_grad] = gradient(weights, false);
  const auto [separate_out, separate_grad] = gradient(weights, true);
  EXPECT_LT(relative_difference(fused_out[0], separate_out[0]), 1e-5);
  EXPECT_LT(relative_difference(fused_grad, separate_grad), 1e-5);
  for (const auto& w : weights) EXPECT_FALSE(w.grad().defined());

  std::vector<torch::Tensor> rounded = {narrow[0].to(torch::kFloat), narrow[1].to(torch::kFloat)};
  const auto [narrow_out, narrow_grad] = gradient(narrow, false);
  const auto [rounded_out, rounded_grad] = gradient(rounded, true);
  EXPECT_EQ(narrow_out[1].scalar_type(), torch::kFloat);
  EXPECT_LT(relative_difference(narrow_out[0], rounded_out[0]), 1e-6);
  EXPECT_LT(relative_difference(narrow_out[1], rounded_out[1]), 1e-6);
  EXPECT_LT(relative_difference(narrow_grad, rounded_grad), 1e-6);

  narrow[1].requires_grad_(true);
  EXPECT_NE(test::error_of([&] { project(x, narrow, {}); }).find("must be frozen"),
            std::string::npos);
}

TEST(FusedLinear, ModelWithFusedProjectionsEqualsTheUnfusedModel) {
  for (const bool bias : {false, true}) {
    auto config = test::llama_config(64, 32, 48, 2, 4, 2, 16);
    config.attention_bias = bias;
    torch::manual_seed(5);
    Transformer fused(config);
    fused->init_weights(7);
    Transformer unfused(config);
    {
      torch::NoGradGuard no_grad;
      auto source = fused->local_weights();
      auto target = unfused->local_weights();
      for (size_t i = 0; i < source.size(); ++i) {
        ASSERT_EQ(source[i].first, target[i].first);
        target[i].second.copy_(source[i].second);
        // Its own storage: the unfused path.
        target[i].second.set_data(target[i].second.detach().clone());
      }
    }
    const auto& attention = fused->model->layer_list[0]->self_attn;
    const auto& mlp = fused->model->layer_list[0]->mlp;
    ASSERT_TRUE(stored_back_to_back(
        {attention->q_proj->weight, attention->k_proj->weight, attention->v_proj->weight}));
    ASSERT_TRUE(stored_back_to_back({mlp->gate_proj->weight, mlp->up_proj->weight}));
    const auto& other = unfused->model->layer_list[0]->self_attn;
    ASSERT_FALSE(
        stored_back_to_back({other->q_proj->weight, other->k_proj->weight, other->v_proj->weight}));

    const auto ids = torch::randint(0, 64, {3, 10});
    auto mask = torch::ones({3, 10}, torch::kLong);
    mask.index_put_({0, torch::indexing::Slice(0, 3)}, 0);  // a left-padded row
    const auto fused_logits = fused->forward(ids, mask);
    const auto unfused_logits = unfused->forward(ids, mask);
    EXPECT_LT(relative_difference(fused_logits, unfused_logits), 1e-5) << "bias " << bias;
    F::cross_entropy(fused_logits.reshape({-1, 64}), ids.reshape({-1})).backward();
    F::cross_entropy(unfused_logits.reshape({-1, 64}), ids.reshape({-1})).backward();
    auto fused_params = fused->named_parameters();
    auto unfused_params = unfused->named_parameters();
    int compared = 0;
    for (const auto& item : fused_params) {
      const auto& g = item.value().grad();
      ASSERT_TRUE(g.defined()) << item.key();
      EXPECT_LT(relative_difference(g, unfused_params[item.key()].grad()), 1e-5) << item.key();
      ++compared;
    }
    EXPECT_EQ(compared, static_cast<int>(unfused_params.size()));

    // An optimizer step updates the parameters in place: they stay back to back.
    torch::optim::AdamW optimizer(fused->parameters(), torch::optim::AdamWOptions(1e-3));
    optimizer.step();
    EXPECT_TRUE(stored_back_to_back(
        {attention->q_proj->weight, attention->k_proj->weight, attention->v_proj->weight}));
  }
}

TEST(FusedLinear, LoadedModelKeepsItsProjectionsFused) {
  const auto config = test::llama_config(64, 32, 48, 2, 4, 2, 16);
  auto source = test::sharp_random_model(config, 11);
  const std::string dir = test::temp_dir("fused_load") + "/model";
  save_hf_model(*source, dir);
  auto loaded = load_hf_model(dir);
  const auto& attention = loaded->model->layer_list[1]->self_attn;
  const auto& mlp = loaded->model->layer_list[1]->mlp;
  EXPECT_TRUE(stored_back_to_back(
      {attention->q_proj->weight, attention->k_proj->weight, attention->v_proj->weight}));
  EXPECT_TRUE(stored_back_to_back({mlp->gate_proj->weight, mlp->up_proj->weight}));
  EXPECT_TRUE(torch::equal(attention->k_proj->weight,
                           source->model->layer_list[1]->self_attn->k_proj->weight));
}

}  // namespace
}  // namespace tiller
