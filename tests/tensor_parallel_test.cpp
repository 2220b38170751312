// Tensor parallelism on real Gloo jobs: the sharded model's logits and gradients match the
// unsharded model's (tiller_tp_probe, 2 ranks); the quickstart pretrain stage at
// run.tensor_parallel=2 follows one process's loss curve, saves plain HF weights and resumes its
// own checkpoints (2 ranks), and does so as 2 data-parallel x 2 tensor-parallel ranks (4).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "common/io/hf_dir.h"
#include "common/io/safetensors.h"
#include "common/util/files.h"
#include "tests/probe/tensor_parallel_probe.h"
#include "tests/test_util.h"
#include "tiller_build_paths.h"

using namespace tiller;

namespace {

// max |a - b| / max |b|: the difference relative to the reference's scale.
double relative_max_difference(const torch::Tensor& a, const torch::Tensor& b) {
  const double scale = b.abs().max().item<double>();
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>() /
         std::max(scale, 1e-12);
}

// The largest relative difference of `key` over the steps both logged; `compared` counts them.
double curve_difference(const std::string& a, const std::string& b, const std::string& key,
                        int* compared) {
  const auto x = test::metrics_by_step(a), y = test::metrics_by_step(b);
  double worst = 0;
  *compared = 0;
  for (const auto& [step, record] : x) {
    if (!record.contains(key)) continue;
    EXPECT_TRUE(y.count(step) && y.at(step).contains(key))
        << key << " at step " << step << " of " << b;
    if (!y.count(step) || !y.at(step).contains(key)) continue;
    const double u = record[key].get<double>(), v = y.at(step)[key].get<double>();
    worst = std::max(worst, std::abs(u - v) / std::max({std::abs(u), std::abs(v), 1e-12}));
    ++*compared;
  }
  return worst;
}

std::vector<std::string> pretrain_args(const std::string& dir, std::vector<std::string> extra) {
  extra.insert(extra.begin(), "pretrain.train.checkpoint_every=4");
  return test::quickstart_pretrain_args(dir, extra);
}

}  // namespace

TEST(TensorParallel, TwoRanksMatchOneOnLogitsAndGradients) {
  const std::string root = test::temp_dir("tp_probe");
  const std::string out = root + "/probe.safetensors";
  const test::Job job = test::launch_job(2, {TILLER_TP_PROBE, out}, root + "/probe");
  ASSERT_EQ(test::wait_job(job, 120), std::vector<int>({0, 0})) << test::job_logs(job);

  const auto sharded = read_safetensors(out);
  const auto reference = test::tensor_parallel_probe(dist::Group());
  ASSERT_EQ(sharded.size(), reference.size());
  double worst_logits = 0, worst_grad = 0;
  int grads = 0;
  for (const auto& [name, expected] : reference) {
    ASSERT_TRUE(sharded.count(name)) << name;
    const auto& got = sharded.at(name);
    ASSERT_EQ(got.sizes(), expected.sizes()) << name;
    const double difference = relative_max_difference(got, expected);
    EXPECT_LT(difference, 1e-5) << name;
    if (name.find(".logits") != std::string::npos)
      worst_logits = std::max(worst_logits, difference);
    if (name.find(".grad.") != std::string::npos) {
      worst_grad = std::max(worst_grad, difference);
      ++grads;
      EXPECT_GT(expected.abs().max().item<double>(), 0) << name << ": a gradient of zeros";
    }
    // Loading full weights into the sharded model sliced them: gathered back, they are equal.
    if (name.find(".weight.") != std::string::npos) {
      EXPECT_TRUE(torch::equal(got, expected)) << name;
    }
  }
  // Untied: 2 layers x 12 tensors + embedding + norm + lm_head; tied: without lm_head.
  EXPECT_EQ(grads, 27 + 26);
  std::printf("tensor parallel probe: max relative difference logits %.3g, gradients %.3g\n",
              worst_logits, worst_grad);
}

TEST(TensorParallel, IndivisibleHeadCountIsAClearError) {
  const std::string root = test::temp_dir("tp_probe_heads");
  const test::Job job =
      test::launch_job(2, {TILLER_TP_PROBE, root + "/never.safetensors", "3"}, root + "/probe");
  const auto codes = test::wait_job(job, 120);
  for (size_t rank = 0; rank < 2; ++rank) {
    EXPECT_EQ(codes[rank], 1) << test::job_logs(job);
    EXPECT_NE(test::read_bytes(job.logs[rank])
                  .find("tensor parallel over 2 ranks: the model's num_attention_heads 3 is not "
                        "divisible by 2"),
              std::string::npos)
        << test::job_logs(job);
  }
  EXPECT_FALSE(path_exists(root + "/never.safetensors"));
}

TEST(TensorParallel, PretrainOnTwoRanksMatchesOneProcessAndResumes) {
  const std::string root = test::temp_dir("tp_pretrain");
  const std::vector<std::string> steps = {"pretrain.train.steps=12"};
  const test::Job one = test::launch_job(1, pretrain_args(root + "/one", steps), root + "/one");
  ASSERT_EQ(test::wait_job(one, 600), std::vector<int>{0}) << test::job_logs(one);
  std::vector<std::string> tp_steps = steps;
  tp_steps.push_back("run.tensor_parallel=2");
  const test::Job two = test::launch_job(2, pretrain_args(root + "/two", tp_steps), root + "/two");
  ASSERT_EQ(test::wait_job(two, 600), std::vector<int>({0, 0})) << test::job_logs(two);
  const std::string log0 = test::read_bytes(two.logs[0]);
  EXPECT_NE(log0.find("distributed: 1 data parallel x 2 tensor parallel"), std::string::npos)
      << log0;
  EXPECT_NE(log0.find("[pretrain] tensor parallel: model sharded over 2 ranks (2 heads, 86 MLP "
                      "units, 200 vocabulary rows each)"),
            std::string::npos)
      << log0;

  const std::string metrics_one = root + "/one/pretrain/metrics.jsonl",
                    metrics_two = root + "/two/pretrain/metrics.jsonl";
  int compared = 0;
  const double loss_difference = curve_difference(metrics_one, metrics_two, "loss", &compared);
  EXPECT_EQ(compared, 12);
  EXPECT_LT(loss_difference, 1e-5);
  const double val_difference = curve_difference(metrics_one, metrics_two, "val_loss", &compared);
  EXPECT_GE(compared, 1);
  EXPECT_LT(val_difference, 1e-5);
  const double norm_difference = curve_difference(metrics_one, metrics_two, "grad_norm", &compared);
  EXPECT_EQ(compared, 12);
  EXPECT_LT(norm_difference, 1e-4);

  // The final directory holds plain HF weights, shaped as one process's, and loads as a model.
  const auto weights_one = read_safetensors(root + "/one/pretrain/final/model.safetensors");
  const auto weights_two = read_safetensors(root + "/two/pretrain/final/model.safetensors");
  ASSERT_EQ(weights_two.size(), weights_one.size());
  double weight_difference = 0;
  for (const auto& [name, tensor] : weights_one) {
    ASSERT_TRUE(weights_two.count(name)) << name;
    ASSERT_EQ(weights_two.at(name).sizes(), tensor.sizes()) << name;
    weight_difference =
        std::max(weight_difference, relative_max_difference(weights_two.at(name), tensor));
  }
  EXPECT_LT(weight_difference, 1e-4);
  const Transformer loaded = load_hf_model(root + "/two/pretrain/final");
  EXPECT_EQ(loaded->config.vocab_size, 400);

  // Each tensor-parallel rank's optimizer state has its own file beside the full weights.
  const std::string last = root + "/two/pretrain/checkpoints/step-12";
  EXPECT_TRUE(path_exists(last + "/optimizer.optimizer.tp0-of-2.pt"));
  EXPECT_TRUE(path_exists(last + "/optimizer.optimizer.tp1-of-2.pt"));
  EXPECT_FALSE(path_exists(last + "/optimizer.optimizer.pt"));
  EXPECT_EQ(read_safetensors(last + "/model.safetensors").at("model.embed_tokens.weight").size(0),
            400);

  // Resumed at step 8 under the same degree, the curve continues as one process's did.
  std::filesystem::remove(root + "/two/pretrain/complete.json");
  write_file_atomic(root + "/two/pretrain/checkpoints/latest", "step-8\n");
  const test::Job resumed =
      test::launch_job(2, pretrain_args(root + "/two", tp_steps), root + "/two.resumed");
  ASSERT_EQ(test::wait_job(resumed, 600), std::vector<int>({0, 0})) << test::job_logs(resumed);
  EXPECT_NE(test::read_bytes(resumed.logs[0]).find("resumed from"), std::string::npos);
  const double resumed_difference = curve_difference(metrics_one, metrics_two, "loss", &compared);
  EXPECT_EQ(compared, 12);
  EXPECT_LT(resumed_difference, 1e-5);

  // One process cannot take the two ranks' optimizer shards: a clear error, not a wrong state.
  std::filesystem::remove(root + "/two/pretrain/complete.json");
  const test::Job other =
      test::launch_job(1, pretrain_args(root + "/two", steps), root + "/two.one");
  ASSERT_EQ(test::wait_job(other, 600), std::vector<int>{1}) << test::job_logs(other);
  EXPECT_NE(test::read_bytes(other.logs[0])
                .find("was saved under run.tensor_parallel 2; resume it with the same degree"),
            std::string::npos)
      << test::job_logs(other);
  std::printf(
      "tensor parallel pretrain: max relative difference loss %.3g (resumed %.3g), val_loss %.3g, "
      "grad_norm %.3g, final weights %.3g\n",
      loss_difference, resumed_difference, val_difference, norm_difference, weight_difference);
}

TEST(TensorParallel, FourRanksAsTwoDataByTwoTensorParallelMatchOneProcess) {
  const std::string root = test::temp_dir("tp_dp_pretrain");
  // Micro-batches of 4 rows: each data-parallel pair of ranks runs the shapes one process runs.
  const std::vector<std::string> steps = {"pretrain.train.steps=6",
                                          "pretrain.train.micro_batch_size=4"};
  const test::Job one = test::launch_job(1, pretrain_args(root + "/one", steps), root + "/one");
  ASSERT_EQ(test::wait_job(one, 600), std::vector<int>{0}) << test::job_logs(one);
  std::vector<std::string> layout_steps = steps;
  layout_steps.push_back("run.tensor_parallel=2");
  const test::Job four =
      test::launch_job(4, pretrain_args(root + "/four", layout_steps), root + "/four");
  ASSERT_EQ(test::wait_job(four, 600), std::vector<int>({0, 0, 0, 0})) << test::job_logs(four);
  const std::string log0 = test::read_bytes(four.logs[0]);
  EXPECT_NE(log0.find("distributed: 2 data parallel x 2 tensor parallel"), std::string::npos)
      << log0;
  EXPECT_NE(log0.find("[pretrain] data parallel: 2 ranks x 8 rows = global batch 16 rows"),
            std::string::npos)
      << log0;

  int compared = 0;
  const double loss_difference =
      curve_difference(root + "/one/pretrain/metrics.jsonl", root + "/four/pretrain/metrics.jsonl",
                       "loss", &compared);
  EXPECT_EQ(compared, 6);
  EXPECT_LT(loss_difference, 1e-5);
  // The checkpoint of the last step: both tensor-parallel ranks' optimizer states.
  EXPECT_TRUE(
      path_exists(root + "/four/pretrain/checkpoints/step-6/optimizer.optimizer.tp1-of-2.pt"));
  std::printf("2 x 2 layout pretrain: max relative difference loss %.3g\n", loss_difference);
}
