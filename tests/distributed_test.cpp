// Multi-process runs on real c10d process groups: `tiller` processes started the way torchrun
// starts them (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), Gloo over 127.0.0.1. Data parallel
// matches one process on the same global batch, ZeRO-1 matches plain data parallel, a checkpoint
// written by 2 ranks resumes on 1, and a lost rank ends the job with its name instead of a hang.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/dist/launch.h"
#include "common/dist/process_group.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "tests/test_util.h"
#include "tiller_build_paths.h"

using namespace tiller;

namespace {

// The quickstart chain shrunk to seconds; micro-batches of half the global batch, so one process
// and each of two ranks run forward passes of the same shapes.
const std::vector<std::string> kSmallChain = {"synthetic_data.corpus_stories=400",
                                              "synthetic_data.sft_examples=120",
                                              "synthetic_data.preference_pairs=120",
                                              "synthetic_data.prompts=48",
                                              "run.threads=1",
                                              "pretrain.train.steps=8",
                                              "pretrain.train.micro_batch_size=8",
                                              "pretrain.train.log_every=1",
                                              "pretrain.train.eval_every=4",
                                              "pretrain.train.checkpoint_every=4",
                                              "sft.train.steps=6",
                                              "sft.train.micro_batch_size=8",
                                              "sft.train.log_every=1",
                                              "sft.train.eval_every=3",
                                              "reward.train.steps=6",
                                              "reward.train.micro_batch_size=8",
                                              "reward.train.log_every=1",
                                              "reward.train.eval_every=3",
                                              "ppo.train.iterations=2",
                                              "ppo.rollout.batch_size=16",
                                              "ppo.rollout.max_new_tokens=24",
                                              "ppo.ppo.mini_batch_size=8",
                                              "ppo.ppo.micro_batch_size=4",
                                              "ppo.ppo.epochs=2",
                                              "ppo.eval.prompts=8",
                                              "ppo.eval.every=0",
                                              "ppo.eval.baselines=[]",
                                              "ppo.samples.every=1",
                                              "ppo.samples.count=16",
                                              "dpo.train.steps=3",
                                              "dpo.train.micro_batch_size=8",
                                              "dpo.train.log_every=1",
                                              "dpo.train.eval_every=0",
                                              "dpo.eval.count=8",
                                              "dpo.eval.max_new_tokens=16",
                                              "grpo.train.iterations=2",
                                              "grpo.train.log_every=1",
                                              "grpo.rollout.prompts_per_iteration=4",
                                              "grpo.rollout.max_new_tokens=24",
                                              "grpo.eval.prompts=6",
                                              "grpo.eval.every=2",
                                              "grpo.samples.every=1",
                                              "grpo.samples.count=16"};

std::vector<nlohmann::json> jsonl(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

double relative_difference(double a, double b) {
  return std::abs(a - b) / std::max({std::abs(a), std::abs(b), 1e-12});
}

// Every `key` logged in both runs agrees to `tolerance` (relative); returns how many were compared.
int expect_same_curve(const std::string& one, const std::string& two, const std::string& key,
                      double tolerance) {
  const auto a = test::metrics_by_step(one), b = test::metrics_by_step(two);
  int compared = 0;
  for (const auto& [step, record] : a) {
    if (!record.contains(key)) continue;
    EXPECT_TRUE(b.count(step) && b.at(step).contains(key)) << key << " at step " << step;
    if (!b.count(step) || !b.at(step).contains(key)) continue;
    const double x = record[key].get<double>(), y = b.at(step)[key].get<double>();
    EXPECT_LT(relative_difference(x, y), tolerance)
        << key << " at step " << step << ": " << x << " vs " << y << " (" << one << ")";
    ++compared;
  }
  return compared;
}

// The samples two runs logged (samples.jsonl): as many (at least 32), the same responses, and
// `score` within `tolerance`.
void expect_same_samples(const std::string& one, const std::string& two, const std::string& score,
                         double tolerance) {
  const auto a = jsonl(one), b = jsonl(two);
  ASSERT_GE(a.size(), 32u) << one;
  ASSERT_EQ(b.size(), a.size()) << two;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i]["response"], b[i]["response"]) << one << " sample " << i;
    EXPECT_NEAR(a[i][score].get<double>(), b[i][score].get<double>(), tolerance)
        << one << " sample " << i;
  }
}

// A 2-rank job its stage refuses when it starts: both ranks exit non-zero, rank 0's log says
// `message`.
void expect_refused_at_start(const std::vector<std::string>& args, const std::string& dir,
                             const std::string& message) {
  const test::Job job = test::launch_job(2, args, dir);
  const std::vector<int> codes = test::wait_job(job, 300);
  ASSERT_EQ(codes.size(), 2u);
  EXPECT_NE(codes[0], 0);
  EXPECT_NE(codes[1], 0);
  const std::string log = test::read_bytes(job.logs[0]);
  EXPECT_NE(log.find(message), std::string::npos) << log;
}

}  // namespace

TEST(Launch, ReadsTorchrunSlurmAndOpenMpiVariables) {
  auto from = [](std::map<std::string, std::string> env) {
    return dist::launch_from_environment([env](const char* name) -> const char* {
      auto it = env.find(name);
      return it == env.end() ? nullptr : it->second.c_str();
    });
  };
  const auto none = from({});
  EXPECT_TRUE(none.single());
  EXPECT_EQ(none.launcher, "none");

  const auto torchrun = from({{"RANK", "3"},
                              {"WORLD_SIZE", "4"},
                              {"LOCAL_RANK", "1"},
                              {"MASTER_ADDR", "10.0.0.2"},
                              {"MASTER_PORT", "29400"},
                              {"TORCHELASTIC_USE_AGENT_STORE", "True"}});
  EXPECT_EQ(torchrun.launcher, "torchrun");
  EXPECT_EQ(torchrun.rank, 3);
  EXPECT_EQ(torchrun.world_size, 4);
  EXPECT_EQ(torchrun.local_rank, 1);
  EXPECT_EQ(torchrun.master_addr, "10.0.0.2");
  EXPECT_EQ(torchrun.master_port, 29400);
  EXPECT_TRUE(torchrun.agent_store);

  const auto slurm = from({{"SLURM_PROCID", "5"},
                           {"SLURM_NTASKS", "8"},
                           {"SLURM_LOCALID", "1"},
                           {"SLURM_NODELIST", "gpu[03-04,07]"},
                           {"MASTER_PORT", "12345"}});
  EXPECT_EQ(slurm.launcher, "slurm");
  EXPECT_EQ(slurm.rank, 5);
  EXPECT_EQ(slurm.world_size, 8);
  EXPECT_EQ(slurm.local_rank, 1);
  EXPECT_EQ(slurm.master_addr, "gpu03");
  EXPECT_FALSE(slurm.agent_store);

  const auto mpi = from({{"OMPI_COMM_WORLD_RANK", "1"},
                         {"OMPI_COMM_WORLD_SIZE", "2"},
                         {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}});
  EXPECT_EQ(mpi.launcher, "openmpi");
  EXPECT_EQ(mpi.rank, 1);
  EXPECT_EQ(mpi.master_addr, "127.0.0.1");
  EXPECT_EQ(mpi.master_port, 29500);

  EXPECT_NE(test::error_of([&] {
              from({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}});
            }).find("RANK=2 is not below WORLD_SIZE=2"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] {
              from({{"RANK", "x"}, {"WORLD_SIZE", "2"}});
            }).find("RANK='x'"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] {
              from({{"RANK", "0"}});
            }).find("WORLD_SIZE is missing"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] {
              from({{"RANK", "1"}, {"WORLD_SIZE", "2"}});
            }).find("MASTER_ADDR"),
            std::string::npos);
  EXPECT_NE(
      test::error_of([&] {
        from({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}});
      }).find("MASTER_PORT"),
      std::string::npos);
}

TEST(Launch, ShardsCoverEveryItemOnce) {
  for (int64_t n : {0, 1, 7, 16}) {
    for (int size : {1, 2, 3, 5}) {
      int64_t next = 0;
      for (int rank = 0; rank < size; ++rank) {
        const auto s = dist::shard_of(n, rank, size);
        EXPECT_EQ(s.begin, next) << n << " over " << size;
        EXPECT_LE(s.count, n / size + 1);
        EXPECT_GE(s.count, n / size);
        next = s.begin + s.count;
      }
      EXPECT_EQ(next, n);
    }
  }
}

TEST(DataParallel, TwoRanksMatchOneRankOnTheQuickstartChain) {
  const std::string root = test::temp_dir("dp_chain");
  auto args_for = [&](const std::string& dir) {
    std::vector<std::string> args = {test::tiller_binary(), "run", test::quickstart_recipe_in(dir)};
    args.insert(args.end(), kSmallChain.begin(), kSmallChain.end());
    return args;
  };
  const test::Job one = test::launch_job(1, args_for(root + "/one"), root + "/one");
  ASSERT_EQ(test::wait_job(one, 600), std::vector<int>{0}) << test::job_logs(one);
  const test::Job two = test::launch_job(2, args_for(root + "/two"), root + "/two");
  ASSERT_EQ(test::wait_job(two, 600), std::vector<int>({0, 0})) << test::job_logs(two);
  const std::string rank0 = test::read_bytes(two.logs[0]);
  EXPECT_NE(rank0.find("distributed: 2 ranks via torchrun"), std::string::npos) << rank0;
  EXPECT_NE(rank0.find("[sft] data parallel: 2 ranks x 8 rows = global batch 16 rows"),
            std::string::npos)
      << rank0;
  // The resolved recipe states the global batches, in comments that keep it a valid recipe.
  const std::string resolved = test::read_bytes(root + "/two/recipe.json");
  EXPECT_NE(resolved.find("// stage sft: global batch 16 rows = 2 ranks x 8"), std::string::npos)
      << resolved.substr(0, 400);
  std::string out;
  EXPECT_EQ(test::run_command(test::shell_command({test::tiller_binary(), "run", "--check",
                                                   root + "/two/recipe.json"}),
                              &out),
            0)
      << out;
  // Rank 1 writes nothing to stdout; rank 0 writes the job's files.
  EXPECT_EQ(test::read_bytes(two.logs[1]).find("[sft] step"), std::string::npos);

  // Losses per step: under 1e-5 relative (the same micro-batches; only the order of the sums
  // differs). Validation losses too.
  for (const std::string stage : {"pretrain", "sft", "reward"}) {
    const std::string a = root + "/one/" + stage + "/metrics.jsonl",
                      b = root + "/two/" + stage + "/metrics.jsonl";
    EXPECT_GE(expect_same_curve(a, b, "loss", 1e-5), 6) << stage;
    EXPECT_GE(expect_same_curve(a, b, "val_loss", 1e-5), 2) << stage;
  }
  EXPECT_GE(expect_same_curve(root + "/one/reward/metrics.jsonl",
                              root + "/two/reward/metrics.jsonl", "accuracy", 1e-9),
            6);

  // DPO: the same pairs in the same micro-batches, and the cache every rank reads.
  EXPECT_EQ(expect_same_curve(root + "/one/dpo/metrics.jsonl", root + "/two/dpo/metrics.jsonl",
                              "loss", 1e-5),
            3);

  // PPO: episode i is seeded by i, not by the rank that generates it: the same responses, the
  // same scores, and the same updates.
  expect_same_samples(root + "/one/ppo/samples.jsonl", root + "/two/ppo/samples.jsonl", "score",
                      1e-5);
  for (const auto& [key, tolerance] : std::vector<std::pair<std::string, double>>{
           {"response_length", 1e-12}, {"rm_score", 1e-5}, {"kl_k1", 1e-4}, {"value_loss", 1e-4}})
    EXPECT_EQ(expect_same_curve(root + "/one/ppo/metrics.jsonl", root + "/two/ppo/metrics.jsonl",
                                key, tolerance),
              2)
        << key;

  // Fewer evaluation prompts than ranks: refused when the stage starts, before any rollout,
  // naming the setting (not at the first evaluation, iterations later).
  std::filesystem::remove_all(root + "/two/ppo");
  std::vector<std::string> args = args_for(root + "/two");
  args.push_back("ppo.eval.prompts=1");
  expect_refused_at_start(
      args, root + "/few",
      "1 evaluation prompts (eval.prompts 1) cannot be shared by 2 data-parallel");
  EXPECT_FALSE(path_exists(root + "/two/ppo/metrics.jsonl"));

  // GRPO: each rank samples and scores whole groups (3 evaluation prompts each, 2 training
  // groups of 4), every row seeded by its place in the round: the same responses and rewards,
  // and the same updates.
  expect_same_samples(root + "/one/grpo/samples.jsonl", root + "/two/grpo/samples.jsonl", "reward",
                      0.0);
  for (const auto& [key, tolerance] :
       std::vector<std::pair<std::string, double>>{{"response_length", 1e-12},
                                                   {"reward_total", 1e-12},
                                                   {"policy_loss", 1e-4},
                                                   {"grad_norm", 1e-4},
                                                   {"entropy", 1e-5},
                                                   {"eval_reward", 1e-12}})
    EXPECT_EQ(expect_same_curve(root + "/one/grpo/metrics.jsonl", root + "/two/grpo/metrics.jsonl",
                                key, tolerance),
              2)
        << key;
  EXPECT_NE(rank0.find("[grpo] data parallel: 2 ranks share each round of 4 groups of 4"),
            std::string::npos)
      << rank0;
  EXPECT_NE(resolved.find("// stage grpo: rounds of 4 groups of 4 shared by 2 ranks"),
            std::string::npos)
      << resolved.substr(0, 600);

  // A chain whose batches two ranks cannot share: every such stage named in one line before the
  // first stage runs (not hours later, when the pretraining is done), and nothing written.
  std::vector<std::string> unshared = args_for(root + "/unshared");
  for (const char* value : {"sft.train.batch_size=9", "sft.train.micro_batch_size=3",
                            "grpo.rollout.prompts_per_iteration=1"})
    unshared.push_back(value);
  expect_refused_at_start(unshared, root + "/unshared_logs",
                          "cannot run on 2 data-parallel ranks: stage sft: train.batch_size 9 does "
                          "not divide among 2 data-parallel ranks; stage grpo: "
                          "rollout.prompts_per_iteration 1 cannot be shared by 2 data-parallel "
                          "ranks (each samples whole groups)");
  EXPECT_FALSE(path_exists(root + "/unshared/recipe.json"));
  EXPECT_FALSE(path_exists(root + "/unshared/pretrain"));
}

TEST(DataParallel, ZeroStage1KeepsHalfTheStateAndTheSameWeights) {
  const std::string root = test::temp_dir("zero1");
  const test::Job plain = test::launch_job(
      2, test::quickstart_pretrain_args(root + "/plain", {"pretrain.train.steps=20"}),
      root + "/plain");
  ASSERT_EQ(test::wait_job(plain, 600), std::vector<int>({0, 0})) << test::job_logs(plain);
  const test::Job zero = test::launch_job(
      2,
      test::quickstart_pretrain_args(root + "/zero",
                                     {"pretrain.train.steps=20", "pretrain.train.zero_stage=1"}),
      root + "/zero");
  ASSERT_EQ(test::wait_job(zero, 600), std::vector<int>({0, 0})) << test::job_logs(zero);

  const std::string weights_plain =
      test::read_bytes(root + "/plain/pretrain/final/model.safetensors");
  ASSERT_FALSE(weights_plain.empty());
  EXPECT_TRUE(weights_plain == test::read_bytes(root + "/zero/pretrain/final/model.safetensors"))
      << "ZeRO-1 weights differ from plain data parallel after 20 steps";

  const auto state_plain =
      read_json_file(root + "/plain/pretrain/complete.json")["optimizer_state_bytes_per_rank"];
  const auto state_zero =
      read_json_file(root + "/zero/pretrain/complete.json")["optimizer_state_bytes_per_rank"];
  ASSERT_EQ(state_plain.size(), 2u);
  ASSERT_EQ(state_zero.size(), 2u);
  const double whole = state_plain[0].get<double>();
  EXPECT_EQ(state_plain[1].get<double>(), whole);
  EXPECT_EQ(state_zero[0].get<double>() + state_zero[1].get<double>(), whole);
  for (const auto& part : state_zero) {
    EXPECT_GT(part.get<double>(), 0.4 * whole);
    EXPECT_LT(part.get<double>(), 0.6 * whole);
  }
  EXPECT_NE(test::read_bytes(zero.logs[0]).find("(ZeRO-1)"), std::string::npos);
}

TEST(DataParallel, CheckpointOfTwoRanksResumesOnOneAndContinuesTheCurve) {
  const std::string root = test::temp_dir("dp_resume");
  const std::vector<std::string> steps = {"pretrain.train.steps=16",
                                          "pretrain.train.checkpoint_every=4",
                                          "pretrain.train.zero_stage=1"};
  const test::Job reference = test::launch_job(
      1, test::quickstart_pretrain_args(root + "/reference", steps), root + "/reference");
  ASSERT_EQ(test::wait_job(reference, 600), std::vector<int>{0}) << test::job_logs(reference);

  // Two ranks; SIGINT to rank 0 only once step 5 is logged: both stop at the same step with a
  // checkpoint (ZeRO-1 shards gathered into it) and exit 0.
  const std::string dir = root + "/moved";
  const test::Job two = test::launch_job(2, test::quickstart_pretrain_args(dir, steps), dir);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  while (test::last_logged_step(dir + "/pretrain/metrics.jsonl") < 5 &&
         std::chrono::steady_clock::now() < deadline && test::wait_exit(two.pids[0], 0) == -1)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_EQ(kill(two.pids[0], SIGINT), 0);
  ASSERT_EQ(test::wait_job(two, 120), std::vector<int>({0, 0})) << test::job_logs(two);
  const int64_t stopped = test::last_logged_step(dir + "/pretrain/metrics.jsonl");
  ASSERT_LT(stopped, 16) << "the run ended before the interrupt: " << test::job_logs(two);
  ASSERT_FALSE(path_exists(dir + "/pretrain/complete.json"));

  // One process resumes the two ranks' checkpoint and finishes.
  const test::Job one =
      test::launch_job(1, test::quickstart_pretrain_args(dir, steps), dir + ".resumed");
  ASSERT_EQ(test::wait_job(one, 600), std::vector<int>{0}) << test::job_logs(one);
  EXPECT_NE(test::read_bytes(one.logs[0]).find("resumed from"), std::string::npos);
  EXPECT_EQ(expect_same_curve(root + "/reference/pretrain/metrics.jsonl",
                              dir + "/pretrain/metrics.jsonl", "loss", 1e-5),
            16);
}

// The survivor ends on its own (no hang: the harness waits far longer than run.dist_timeout_s,
// so only a hang reaches its limit), with exit code 1 and an error line that names its own rank
// and the rank that was lost.
TEST(DataParallel, ALostRankEndsTheJobWithItsName) {
  const std::string root = test::temp_dir("dp_lost");
  for (int victim : {1, 0}) {
    const std::string dir = root + "/kill" + std::to_string(victim);
    const test::Job job =
        test::launch_job(2,
                         test::quickstart_pretrain_args(
                             dir, {"pretrain.train.steps=100000",
                                   "pretrain.train.checkpoint_every=0", "run.dist_timeout_s=30"}),
                         dir);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
    while (test::last_logged_step(dir + "/pretrain/metrics.jsonl") < 3 &&
           std::chrono::steady_clock::now() < deadline && test::wait_exit(job.pids[0], 0) == -1)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    ASSERT_EQ(kill(job.pids[static_cast<size_t>(victim)], SIGKILL), 0);
    const int survivor = 1 - victim;
    const int code = test::wait_exit(job.pids[static_cast<size_t>(survivor)], 300);
    test::wait_job(job, 1);
    const std::string log = test::read_bytes(job.logs[static_cast<size_t>(survivor)]);
    ASSERT_NE(code, -1) << "rank " << survivor << " hangs after rank " << victim
                        << " was killed (run.dist_timeout_s 30)";
    EXPECT_EQ(code, 1) << log;
    // One error line: a failed collective's ("... failed: lost rank V (its heartbeat stopped)")
    // or, when the store's host went, "distributed: lost rank 0, which hosts the ... store".
    const std::string error = "tiller: error: [rank " + std::to_string(survivor) + "] ";
    const size_t at = log.find(error);
    ASSERT_NE(at, std::string::npos) << log;
    const std::string line = log.substr(at, log.find('\n', at) - at);
    EXPECT_NE(line.find("lost rank " + std::to_string(victim)), std::string::npos) << line;
    EXPECT_EQ(log.find("terminate called"), std::string::npos) << log;
  }
}

// LibTorch 1.13's store client threads let a reset connection escape them when the store's host
// dies; the process must still end with the one line that names what was lost, and any other
// escaped exception must still abort as before.
TEST(DataParallel, AStoreThreadsConnectionErrorIsReportedAsTheLostStoreHost) {
  const std::string root = test::temp_dir("dp_store_thread");
  const test::Job reset =
      test::launch_job(2, {TILLER_TP_PROBE, "--thread-throws", "system_error"}, root + "/reset");
  const std::vector<int> codes = test::wait_job(reset, 60);
  const std::string log = test::read_bytes(reset.logs[1]);
  EXPECT_EQ(codes, std::vector<int>({0, 1})) << test::job_logs(reset);
  EXPECT_NE(log.find("tiller: error: [rank 1] distributed: lost rank 0, which hosts the "
                     "rendezvous store (a store connection failed: Connection reset by peer)"),
            std::string::npos)
      << log;
  EXPECT_EQ(log.find("terminate called"), std::string::npos) << log;

  const test::Job other =
      test::launch_job(2, {TILLER_TP_PROBE, "--thread-throws", "runtime_error"}, root + "/other");
  EXPECT_EQ(test::wait_job(other, 60), std::vector<int>({0, 128 + SIGABRT}))
      << test::job_logs(other);
  EXPECT_NE(test::read_bytes(other.logs[1]).find("not a connection error"), std::string::npos)
      << test::job_logs(other);
}

TEST(DataParallel, LaunchedByTorchrunAndMpirun) {
  const std::string root = test::temp_dir("dp_launchers");
  std::string out;
  int launchers = 0;
  // Debian 12's torchrun (1.13 under Python 3.11) dies in its own argument handling before it
  // starts any worker; such a torchrun is reported and passed over.
  const bool torchrun_works =
      test::run_command("command -v torchrun", &out) == 0 &&
      test::run_command(
          "torchrun --no_python --nnodes=1 --nproc_per_node=1 --master_addr=127.0.0.1 "
          "--master_port=" +
              std::to_string(test::free_port()) + " /bin/true",
          &out) == 0;
  if (!torchrun_works && out.find("torchrun") != std::string::npos)
    std::printf("note: torchrun is installed but cannot start a worker here: %s\n",
                out.substr(out.rfind('\n', out.size() - 2) + 1).c_str());
  if (torchrun_works) {
    ++launchers;
    const int port = test::free_port();
    std::vector<std::string> args = {"torchrun",
                                     "--no_python",
                                     "--nnodes=1",
                                     "--nproc_per_node=2",
                                     "--master_addr=127.0.0.1",
                                     "--master_port=" + std::to_string(port),
                                     test::tiller_binary()};
    const auto rest =
        test::quickstart_pretrain_args(root + "/torchrun", {"pretrain.train.steps=4"});
    args.insert(args.end(), rest.begin() + 1, rest.end());  // rest[0] is the binary
    EXPECT_EQ(test::run_command("OMP_WAIT_POLICY=passive " + test::shell_command(args), &out), 0)
        << out;
    EXPECT_NE(out.find("distributed: 2 ranks via torchrun"), std::string::npos) << out;
    EXPECT_TRUE(path_exists(root + "/torchrun/pretrain/complete.json")) << out;
  }
  if (test::run_command("command -v mpirun", &out) == 0) {
    ++launchers;
    std::vector<std::string> args = {"mpirun",
                                     "--allow-run-as-root",
                                     "--oversubscribe",
                                     "-np",
                                     "2",
                                     "-x",
                                     "MASTER_PORT=" + std::to_string(test::free_port()),
                                     "-x",
                                     "OMP_WAIT_POLICY=passive",
                                     test::tiller_binary()};
    const auto rest = test::quickstart_pretrain_args(root + "/mpirun", {"pretrain.train.steps=4"});
    args.insert(args.end(), rest.begin() + 1, rest.end());  // rest[0] is the binary
    EXPECT_EQ(test::run_command(test::shell_command(args), &out), 0) << out;
    EXPECT_NE(out.find("distributed: 2 ranks via openmpi"), std::string::npos) << out;
    EXPECT_TRUE(path_exists(root + "/mpirun/pretrain/complete.json")) << out;
  }
  if (launchers == 0) GTEST_SKIP() << "skipped: neither a working torchrun nor mpirun is installed";
}
