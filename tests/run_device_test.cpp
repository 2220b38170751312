// run.device checked against the build and the machine before anything is written: the rules on
// made-up machines, and the real binary asked for CUDA where there is none.
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <filesystem>
#include <map>
#include <sstream>

#include "common/dist/launch.h"
#include "common/util/device.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

CudaMachine machine(bool built_with_cuda, int gpus) {
  return {built_with_cuda, gpus, "9.9.9"};
}

// `tiller ARGS` with `environment` ("NAME=value ...") before it.
test::CliResult tiller_with(const std::string& environment, const std::vector<std::string>& args) {
  static int counter = 0;
  const std::string dir = test::temp_dir("run_device_" + std::to_string(counter++));
  std::vector<std::string> argv = {test::tiller_binary()};
  argv.insert(argv.end(), args.begin(), args.end());
  test::CliResult r;
  std::string ignored;
  r.code =
      test::run_command("( env OMP_WAIT_POLICY=passive " + environment + " " +
                            test::shell_command(argv) + " >" + dir + "/out 2>" + dir + "/err )",
                        &ignored);
  r.out = test::read_bytes(dir + "/out");
  r.err = test::read_bytes(dir + "/err");
  return r;
}

// A refusal: a non-zero exit and one line on stderr naming run.device and `value`, then nothing
// under `dir` (no run directory, no synthetic data).
void expect_refused_leaving_nothing(const test::CliResult& r, const std::string& value,
                                    const std::string& dir) {
  EXPECT_NE(r.code, 0) << r.out << r.err;
  const auto lines = test::lines_of(r.err);
  ASSERT_EQ(lines.size(), 1u) << r.err;
  EXPECT_EQ(lines[0].rfind("tiller: error: ", 0), 0u) << lines[0];
  EXPECT_NE(lines[0].find("run.device"), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("'" + value + "'"), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("set run.device="), std::string::npos) << "what to do: " << lines[0];
  EXPECT_FALSE(std::filesystem::exists(dir)) << dir << " was written";
}

}  // namespace

TEST(RunDevice, DeviceNamesAreCpuCudaOrCudaWithAnIndex) {
  for (const char* good : {"cpu", "cuda", "cuda:0", "cuda:7", "cuda:15"})
    EXPECT_TRUE(is_device_name(good)) << good;
  for (const char* bad : {"", "gpu", "CUDA", "cuda:", "cuda:-1", "cuda:1:2", "cudax", "cuda0",
                          "cuda: 1", "cpu:0", "cuda:123456789"})
    EXPECT_FALSE(is_device_name(bad)) << bad;
}

TEST(RunDevice, CpuAndDevicesThatExistAreAccepted) {
  EXPECT_EQ(device_problem("cpu", 1, machine(false, 0)), "");
  EXPECT_EQ(device_problem("cpu", 64, machine(true, 0)), "");
  EXPECT_EQ(device_problem("cuda", 1, machine(true, 1)), "");
  EXPECT_EQ(device_problem("cuda:1", 1, machine(true, 2)), "");
  EXPECT_EQ(device_problem("cuda", 8, machine(true, 8)), "");  // one GPU per local rank
  EXPECT_EQ(device_problem("cuda", 2, machine(true, 8)), "");
}

TEST(RunDevice, EachImpossibleDeviceIsOneLineSayingWhatToDo) {
  struct Case {
    std::string device;
    int local_processes;
    CudaMachine machine;
    std::vector<std::string> said;
  };
  const std::vector<Case> cases = {
      {"cuda", 1, machine(false, 0), {"'cuda'", "9.9.9", "--cuda", "run.device=cpu"}},
      {"cuda:0", 1, machine(false, 0), {"'cuda:0'", "CPU only", "run.device=cpu"}},
      {"cuda", 1, machine(true, 0), {"'cuda'", "no GPU", "run.device=cpu"}},
      {"cuda:2", 1, machine(true, 2), {"'cuda:2'", "2 GPUs (cuda:0 to cuda:1)", "run.device=cuda"}},
      {"cuda:1", 1, machine(true, 1), {"'cuda:1'", "1 GPU (cuda:0)"}},
      {"cuda", 3, machine(true, 2), {"'cuda'", "up to cuda:2", "2 GPUs", "at most 2"}},
      {"cuda:0", 2, machine(true, 4), {"'cuda:0'", "all 2 processes", "set run.device=cuda"}},
      {"tpu", 1, machine(true, 1), {"'tpu'", "cpu, cuda or cuda:N"}},
  };
  for (const Case& c : cases) {
    const std::string what = c.device + " x" + std::to_string(c.local_processes) + " on " +
                             std::to_string(c.machine.gpus) + " GPUs" +
                             (c.machine.built_with_cuda ? "" : ", CPU build");
    const std::string problem = device_problem(c.device, c.local_processes, c.machine);
    ASSERT_FALSE(problem.empty()) << what;
    EXPECT_EQ(problem.find('\n'), std::string::npos) << what << ": " << problem;
    for (const std::string& part : c.said)
      EXPECT_NE(problem.find(part), std::string::npos)
          << what << ": '" << part << "' in " << problem;
  }
}

TEST(RunDevice, TheProcessesOfAMachineComeFromEachLauncher) {
  auto from = [](std::map<std::string, std::string> env) {
    return dist::launch_from_environment([env](const char* name) -> const char* {
      auto it = env.find(name);
      return it == env.end() ? nullptr : it->second.c_str();
    });
  };
  EXPECT_EQ(from({}).local_processes(), 1);
  const std::map<std::string, std::string> torchrun = {
      {"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "h"}};
  auto with = [&](std::map<std::string, std::string> env, const char* name, const char* value) {
    env[name] = value;
    return env;
  };
  EXPECT_EQ(from(with(torchrun, "LOCAL_WORLD_SIZE", "4")).local_processes(), 4);
  // Unsaid: at least up to this process's local rank.
  EXPECT_EQ(from(torchrun).local_world_size, 0);
  EXPECT_EQ(from(torchrun).local_processes(), 2);
  EXPECT_EQ(from({{"OMPI_COMM_WORLD_RANK", "0"},
                  {"OMPI_COMM_WORLD_SIZE", "6"},
                  {"OMPI_COMM_WORLD_LOCAL_RANK", "0"},
                  {"OMPI_COMM_WORLD_LOCAL_SIZE", "3"}})
                .local_processes(),
            3);
  EXPECT_EQ(from({{"SLURM_PROCID", "2"},
                  {"SLURM_NTASKS", "4"},
                  {"SLURM_LOCALID", "0"},
                  {"SLURM_NTASKS_PER_NODE", "2"}})
                .local_processes(),
            2);
  EXPECT_NE(test::error_of([&] {
              from(with(torchrun, "LOCAL_WORLD_SIZE", "1"));
            }).find("LOCAL_RANK=1 is not below LOCAL_WORLD_SIZE=1"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] {
              from(with(torchrun, "LOCAL_WORLD_SIZE", "two"));
            }).find("LOCAL_WORLD_SIZE='two'"),
            std::string::npos);
}

TEST(RunDevice, CudaWithoutAGpuStopsTheRunWithOneLineAndWritesNothing) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "skipped: this machine has a GPU";
  const std::string dir = test::temp_dir("run_device_cuda") + "/run";
  const std::string recipe = test::quickstart_recipe_in(dir);
  for (const std::string& device : {std::string("cuda"), std::string("cuda:0")}) {
    SCOPED_TRACE(device);
    expect_refused_leaving_nothing(test::run_tiller_cli({"run", recipe, "run.device=" + device}),
                                   device, dir);
    // --check refuses what the run would refuse.
    expect_refused_leaving_nothing(
        test::run_tiller_cli({"run", "--check", recipe, "run.device=" + device}), device, dir);
    // A stage run by its type goes through the same check.
    expect_refused_leaving_nothing(test::run_tiller_cli({"sft", recipe, "run.device=" + device}),
                                   device, dir);
  }
}

TEST(RunDevice, AGpuBeyondTheMachinesIsRefusedOnEveryMachine) {
  const std::string dir = test::temp_dir("run_device_beyond") + "/run";
  const std::string recipe = test::quickstart_recipe_in(dir);
  const std::string device = "cuda:" + std::to_string(torch::cuda::device_count());
  expect_refused_leaving_nothing(test::run_tiller_cli({"run", recipe, "run.device=" + device}),
                                 device, dir);
}

TEST(RunDevice, AMultiProcessJobIsRefusedBeforeItsRendezvous) {
  // Rank 0 of a two-process job whose rank 1 never comes: the refusal must come before the
  // rendezvous, which would otherwise wait for it (run.dist_timeout_s bounds a regression).
  const std::string dir = test::temp_dir("run_device_job") + "/run";
  const std::string recipe = test::quickstart_recipe_in(dir);
  const std::string device = "cuda:" + std::to_string(torch::cuda::device_count());
  const auto r = tiller_with(
      "RANK=0 WORLD_SIZE=2 LOCAL_RANK=0 LOCAL_WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" +
          std::to_string(test::free_port()),
      {"run", recipe, "run.device=" + device, "run.dist_timeout_s=20"});
  expect_refused_leaving_nothing(r, device, dir);
  EXPECT_EQ(r.out.find("distributed:"), std::string::npos) << "joined the job first:\n" << r.out;
}

TEST(RunDevice, AMisspelledDeviceIsARecipeError) {
  const std::string dir = test::temp_dir("run_device_typo") + "/run";
  const std::string recipe = test::quickstart_recipe_in(dir);
  const auto r = test::run_tiller_cli({"run", "--check", recipe, "run.device=cuda1"});
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("run.device"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("must be cpu, cuda or cuda:N, got 'cuda1'"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir));
}
