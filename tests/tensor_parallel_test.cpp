// Tensor parallelism on real 2-rank Gloo jobs: the sharded model's logits and gradients match the
// unsharded model's (tiller_tp_probe).
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

struct Job {
  std::vector<int> pids;
  std::vector<std::string> logs;
};

// `world` processes of args (args[0] the binary), as torchrun starts them when world > 1.
Job launch(int world, const std::vector<std::string>& args, const std::string& log_prefix) {
  Job job;
  const int port = test::free_port();
  for (int rank = 0; rank < world; ++rank) {
    std::vector<std::string> env = {"OMP_WAIT_POLICY=passive"};
    if (world > 1)
      env.insert(env.end(), {"RANK=" + std::to_string(rank), "LOCAL_RANK=" + std::to_string(rank),
                             "WORLD_SIZE=" + std::to_string(world), "MASTER_ADDR=127.0.0.1",
                             "MASTER_PORT=" + std::to_string(port)});
    job.logs.push_back(log_prefix + ".rank" + std::to_string(rank) + ".log");
    job.pids.push_back(test::spawn_logged(args, job.logs.back(), env));
  }
  return job;
}

// Every process's exit status; one still running after `seconds` is killed and reads -1.
std::vector<int> wait_all(const Job& job, double seconds) {
  std::vector<int> codes;
  for (int pid : job.pids) {
    const int code = test::wait_exit(pid, seconds);
    if (code == -1) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    codes.push_back(code);
  }
  return codes;
}

std::string logs_of(const Job& job) {
  std::string out;
  for (const auto& log : job.logs) out += "---- " + log + "\n" + test::read_bytes(log);
  return out;
}

// max |a - b| / max |b|: the difference relative to the reference's scale.
double relative_max_difference(const torch::Tensor& a, const torch::Tensor& b) {
  const double scale = b.abs().max().item<double>();
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>() /
         std::max(scale, 1e-12);
}

}  // namespace

TEST(TensorParallel, TwoRanksMatchOneOnLogitsAndGradients) {
  const std::string root = test::temp_dir("tp_probe");
  const std::string out = root + "/probe.safetensors";
  const Job job = launch(2, {TILLER_TP_PROBE, out}, root + "/probe");
  ASSERT_EQ(wait_all(job, 120), std::vector<int>({0, 0})) << logs_of(job);

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
  const Job job = launch(2, {TILLER_TP_PROBE, root + "/never.safetensors", "3"}, root + "/probe");
  const auto codes = wait_all(job, 120);
  for (size_t rank = 0; rank < 2; ++rank) {
    EXPECT_EQ(codes[rank], 1) << logs_of(job);
    EXPECT_NE(test::read_bytes(job.logs[rank])
                  .find("tensor parallel over 2 ranks: the model's num_attention_heads 3 is not "
                        "divisible by 2"),
              std::string::npos)
        << logs_of(job);
  }
  EXPECT_FALSE(path_exists(root + "/never.safetensors"));
}
