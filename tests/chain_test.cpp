// The quickstart chain (pretrain -> SFT -> reward -> PPO, then DPO, on the project's synthetic
// data), shrunk: `tiller run` killed during the reward stage and run again skips the finished
// stages, resumes the reward stage, runs PPO and DPO, and ends with the models of an
// uninterrupted run; a changed config is refused instead of reusing stale outputs; the
// quickstart's closing table is written.
#include <gtest/gtest.h>
#include <signal.h>

#include "common/util/files.h"
#include "tests/test_util.h"
#include "tiller_build_paths.h"

using namespace tiller;

namespace {

const std::vector<std::string> kSmall = {"synthetic_data.corpus_stories=600",
                                         "synthetic_data.sft_examples=200",
                                         "synthetic_data.preference_pairs=200",
                                         "synthetic_data.prompts=60",
                                         "pretrain.train.steps=20",
                                         "pretrain.train.eval_every=10",
                                         "pretrain.train.checkpoint_every=10",
                                         "sft.train.steps=10",
                                         "sft.train.eval_every=5",
                                         "sft.train.checkpoint_every=5",
                                         "reward.train.steps=30",
                                         "reward.train.eval_every=0",
                                         "reward.train.checkpoint_every=2",
                                         "reward.train.log_every=1",
                                         "ppo.train.iterations=2",
                                         "ppo.rollout.batch_size=16",
                                         "ppo.eval.prompts=8",
                                         "ppo.eval.every=0",
                                         "dpo.train.steps=4",
                                         "dpo.train.eval_every=0",
                                         "dpo.eval.count=8",
                                         "dpo.eval.max_new_tokens=16",
                                         "grpo.train.iterations=2",
                                         "grpo.eval.prompts=8",
                                         "grpo.eval.every=0"};

std::vector<std::string> command(const std::string& recipe) {
  std::vector<std::string> args = {test::tiller_binary(), "run", recipe};
  args.insert(args.end(), kSmall.begin(), kSmall.end());
  return args;
}

}  // namespace

TEST(Chain, KilledDuringRewardResumesAndEndsWithTheUninterruptedActor) {
  const std::string root = test::temp_dir("chain");
  const std::string straight = root + "/straight", killed = root + "/killed";
  std::string out;
  ASSERT_EQ(
      test::run_command(test::shell_command(command(test::quickstart_recipe_in(straight))), &out),
      0)
      << out;
  EXPECT_TRUE(path_exists(straight + "/summary.json")) << out;
  EXPECT_NE(out.find("ground-truth rate, after ppo"), std::string::npos) << out;
  EXPECT_NE(out.find("ground-truth rate, after dpo"), std::string::npos) << out;

  // Killed (SIGKILL, by TILLER_CRASH_AFTER_STEP) once the reward stage has logged step 11 and
  // before anything after it: its last checkpoint is step 10 (checkpoints every 2 steps).
  const auto args = command(test::quickstart_recipe_in(killed));
  const int pid = test::spawn_logged(args, killed + ".log", {"TILLER_CRASH_AFTER_STEP=reward:11"});
  ASSERT_GT(pid, 0);
  ASSERT_EQ(test::wait_exit(pid, 600), 128 + SIGKILL) << test::read_bytes(killed + ".log");
  EXPECT_EQ(test::last_logged_step(killed + "/reward/metrics.jsonl"), 11);
  ASSERT_FALSE(path_exists(killed + "/reward/complete.json"));
  ASSERT_FALSE(path_exists(killed + "/ppo"));

  ASSERT_EQ(test::run_command(test::shell_command(args), &out), 0) << out;
  EXPECT_NE(out.find("[pretrain] already complete"), std::string::npos) << out;
  EXPECT_NE(out.find("[sft] already complete"), std::string::npos) << out;
  EXPECT_NE(out.find("[reward] resumed from "), std::string::npos) << out;
  EXPECT_NE(out.find("/reward/checkpoints/step-10\n"), std::string::npos) << out;
  EXPECT_NE(out.find("[ppo] done"), std::string::npos) << out;
  EXPECT_NE(out.find("[dpo] done"), std::string::npos) << out;
  EXPECT_NE(out.find("[grpo] done"), std::string::npos) << out;
  for (const std::string stage : {"reward", "ppo", "dpo", "grpo"}) {
    const std::string a = test::read_bytes(straight + "/" + stage + "/final/model.safetensors");
    ASSERT_FALSE(a.empty());
    EXPECT_EQ(a, test::read_bytes(killed + "/" + stage + "/final/model.safetensors")) << stage;
  }

  // A changed SFT config: the completed SFT (and what was built on it) is not reused.
  auto changed = args;
  changed.push_back("sft.train.lr=0.001");
  EXPECT_EQ(test::run_command(test::shell_command(changed), &out), 1) << out;
  EXPECT_NE(out.find("stage 'sft'"), std::string::npos) << out;
  EXPECT_NE(out.find("different config or different inputs"), std::string::npos) << out;
  // The same config again: everything is complete and reused.
  ASSERT_EQ(test::run_command(test::shell_command(args), &out), 0) << out;
  EXPECT_NE(out.find("[grpo] already complete"), std::string::npos) << out;
}
