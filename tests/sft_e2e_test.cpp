// End to end through the `tiller` binary: tokenizer training, pretraining from scratch, SFT, and
// exact resume after SIGKILLs (the final weights equal an uninterrupted run's, byte for byte).
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "common/io/hf_dir.h"
#include "common/io/safetensors.h"
#include "common/util/files.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

// A small deterministic corpus: simple sentences over a fixed vocabulary.
void write_corpus(const std::string& path, const std::string& sft_path) {
  const char* names[] = {"Tom", "Lily", "Ben", "Mia", "Sam"};
  const char* things[] = {"ball", "cat", "tree", "boat", "cake", "kite"};
  const char* colors[] = {"red", "blue", "green", "big", "small"};
  std::mt19937 rng(7);
  std::ofstream corpus(path), sft(sft_path);
  for (int i = 0; i < 1500; ++i) {
    const char* n = names[rng() % 5];
    const char* t = things[rng() % 6];
    const char* c = colors[rng() % 5];
    corpus << n << " saw a " << c << " " << t << ". " << n << " liked the " << t << " very much.\n";
  }
  for (int i = 0; i < 200; ++i) {
    const char* t = things[rng() % 6];
    const char* c = colors[rng() % 5];
    sft << R"({"prompt": "What color is the )" << t << R"(?", "completion": "The )" << t << " is "
        << c << R"(."})"
        << "\n";
  }
}

using test::last_logged_step;
using test::read_bytes;

}  // namespace

// Outside the anonymous namespace, as its TEST_F classes are (GCC's -Wsubobject-linkage, once a
// unity build includes this file).
class SftEndToEnd : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(test::temp_dir("sft_e2e"));
    write_corpus(*dir_ + "/corpus.txt", *dir_ + "/sft.jsonl");
    std::string out;
    ASSERT_EQ(test::run_command(test::tiller_binary() + " tokenizer train --input " + *dir_ +
                                    "/corpus.txt --vocab-size 300 --out " + *dir_ + "/tok",
                                &out),
              0)
        << out;
    std::ofstream(*dir_ + "/recipe.json") << R"({
      "run": {"name": "e2e", "seed": 5, "threads": 1},
      "base": "@pretrain",
      "stages": [
        {"name": "pretrain", "type": "pretrain",
         "model": {"shape": "stories260k", "hidden_size": 32, "intermediate_size": 64,
                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "max_position_embeddings": 64},
         "tokenizer": ")" << *dir_ << R"(/tok/tokenizer.model",
         "data": {"train": ")" << *dir_ << R"(/corpus.txt", "val_fraction": 0.05},
         "train": {"steps": 30, "batch_size": 8, "micro_batch_size": 4, "lr": 0.003,
                   "warmup_steps": 3, "max_seq_len": 64, "checkpoint_every": 2, "eval_every": 10}},
        {"name": "sft", "type": "sft", "init": "@pretrain",
         "data": {"train": ")" << *dir_ << R"(/sft.jsonl", "format": "prompt_completion",
                  "template": "plain", "val_fraction": 0.1, "packing": false},
         "train": {"steps": 30, "batch_size": 8, "micro_batch_size": 2, "lr": 0.003,
                   "max_seq_len": 64, "checkpoint_every": 1, "eval_every": 10}}
      ]})";
  }
  static void TearDownTestSuite() { delete dir_; }

  static std::string recipe() { return *dir_ + "/recipe.json"; }
  static std::string* dir_;
};
std::string* SftEndToEnd::dir_ = nullptr;

TEST_F(SftEndToEnd, PretrainThenSftLowersLossAndResumesExactlyAfterKills) {
  const std::string straight = *dir_ + "/straight", killed = *dir_ + "/killed";
  std::string out;
  ASSERT_EQ(
      test::run_command(test::tiller_binary() + " run " + recipe() + " run.dir=" + straight, &out),
      0)
      << out;
  // Validation loss fell in both stages.
  for (const std::string stage : {"pretrain", "sft"}) {
    auto summary = read_json_file(straight + "/" + stage + "/complete.json");
    EXPECT_LT(summary["final_val_loss"].get<double>(), summary["initial_val_loss"].get<double>())
        << stage;
    EXPECT_TRUE(path_exists(straight + "/" + stage + "/final/model.safetensors"));
  }
  // A second run skips both finished stages.
  ASSERT_EQ(
      test::run_command(test::tiller_binary() + " run " + recipe() + " run.dir=" + straight, &out),
      0);
  EXPECT_NE(out.find("[sft] already complete"), std::string::npos) << out;

  // Killed (SIGKILL, by TILLER_CRASH_AFTER_STEP) after given steps of each stage, before their
  // checkpoints, and resumed each time: before the first checkpoint, between checkpoints (every 2
  // steps in pretraining, every step in SFT), and after each stage's last step, before its final
  // checkpoint and final/. (Kills at random instants, inside checkpoint writes too, are
  // tests/kill_torture.sh's.)
  const std::vector<std::string> args = {test::tiller_binary(), "run", recipe(),
                                         "run.dir=" + killed};
  const std::vector<std::pair<std::string, int64_t>> crashes = {
      {"pretrain", 1}, {"pretrain", 4}, {"pretrain", 17}, {"pretrain", 25}, {"pretrain", 30},
      {"sft", 1},      {"sft", 4},      {"sft", 21},      {"sft", 30}};
  for (const auto& [stage, at_step] : crashes) {
    SCOPED_TRACE(stage + " step " + std::to_string(at_step));
    const std::string at = "TILLER_CRASH_AFTER_STEP=" + stage + ":" + std::to_string(at_step);
    const pid_t pid = test::spawn_logged(args, killed + ".log", {at});
    ASSERT_GT(pid, 0);
    ASSERT_EQ(test::wait_exit(pid, 300), 128 + SIGKILL) << read_bytes(killed + ".log");
    EXPECT_EQ(last_logged_step(killed + "/" + stage + "/metrics.jsonl"), at_step);
    EXPECT_FALSE(path_exists(killed + "/" + stage + "/complete.json"));
  }
  ASSERT_EQ(test::run_command(args[0] + " run " + recipe() + " run.dir=" + killed, &out), 0) << out;
  for (const std::string stage : {"pretrain", "sft"}) {
    const std::string a = read_bytes(straight + "/" + stage + "/final/model.safetensors");
    const std::string b = read_bytes(killed + "/" + stage + "/final/model.safetensors");
    ASSERT_FALSE(a.empty());
    EXPECT_TRUE(a == b) << stage << ": resumed weights differ from the uninterrupted run's";
  }
  // Each logged step appears once in the resumed run's metrics.
  std::ifstream in(killed + "/sft/metrics.jsonl");
  std::string line;
  std::set<int64_t> steps;
  int64_t lines = 0;
  while (std::getline(in, line)) {
    steps.insert(nlohmann::json::parse(line)["step"].get<int64_t>());
    ++lines;
  }
  EXPECT_EQ(static_cast<int64_t>(steps.size()), lines);
  EXPECT_EQ(*steps.rbegin(), 30);
}

TEST_F(SftEndToEnd, RecipeErrorsAreReportedBeforeAnythingRuns) {
  const std::string run_dir = *dir_ + "/never";
  std::string out;
  int rc =
      test::run_command(test::tiller_binary() + " run " + recipe() + " run.dir=" + run_dir +
                            " sft.train.stepz=3 sft.data.template=nope pretrain.train.batch_size=7",
                        &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("stages[1].train.stepz: unknown key"), std::string::npos) << out;
  EXPECT_NE(out.find("stages[1].data.template: 'nope' is not one of"), std::string::npos) << out;
  EXPECT_NE(out.find("stages[0].train.batch_size: batch_size 7 is not divisible"),
            std::string::npos)
      << out;
  EXPECT_FALSE(path_exists(run_dir));
  EXPECT_EQ(test::run_command(test::tiller_binary() + " run --check " + recipe(), &out), 0) << out;
}

TEST_F(SftEndToEnd, NonFiniteStepsAreSkippedThenTheRunStops) {
  // A base whose embedding holds NaN: every loss is NaN.
  const std::string base = *dir_ + "/nan_base";
  {
    ModelConfig c = test::llama_config(300, 16, 32, 1, 2, 2, 64);
    Transformer m(c);
    m->init_weights(1);
    torch::NoGradGuard no_grad;
    m->model->embed_tokens->weight.fill_(std::nan(""));
    SaveOptions options;
    options.tokenizer_path = *dir_ + "/tok/tokenizer.model";
    save_hf_model(*m, base, options);
  }
  const std::string run_dir = *dir_ + "/nan_run";
  std::string out;
  int rc =
      test::run_command(test::tiller_binary() + " sft " + recipe() + " run.dir=" + run_dir +
                            " base=null" + " sft.init=" + base + " sft.train.max_nonfinite_steps=3",
                        &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("3 non-finite steps in a row at step 3"), std::string::npos) << out;
  EXPECT_NE(out.find("step skipped"), std::string::npos) << out;
  EXPECT_FALSE(path_exists(run_dir + "/sft/final"));
  EXPECT_FALSE(path_exists(run_dir + "/sft/complete.json"));
}

TEST_F(SftEndToEnd, SigintFinishesTheStepSavesAndExitsZero) {
  const std::string dir = *dir_ + "/interrupted";
  const std::vector<std::string> args = {test::tiller_binary(), "run", recipe(), "run.dir=" + dir,
                                         "pretrain.train.checkpoint_every=100"};
  const int pid = test::spawn_logged(args, dir + ".log");
  ASSERT_GT(pid, 0);
  const std::string metrics = dir + "/pretrain/metrics.jsonl";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (test::last_logged_step(metrics) < 3 && std::chrono::steady_clock::now() < deadline &&
         waitpid(pid, nullptr, WNOHANG) == 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ASSERT_EQ(kill(pid, SIGINT), 0);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << "killed by the signal instead of stopping";
  EXPECT_EQ(WEXITSTATUS(status), 0);
  const std::string log = read_bytes(dir + ".log");
  EXPECT_NE(log.find("tiller: interrupted: stage pretrain stopped after step"), std::string::npos)
      << log;
  // The checkpoint is at the last step logged (checkpoint_every alone would not have saved).
  const int64_t last = test::last_logged_step(metrics);
  EXPECT_TRUE(std::filesystem::exists(dir + "/pretrain/checkpoints/step-" + std::to_string(last)))
      << log;
  EXPECT_FALSE(std::filesystem::exists(dir + "/pretrain/complete.json"));
  std::string out;
  ASSERT_EQ(test::run_command(test::shell_command(args), &out), 0) << out;
  EXPECT_NE(out.find("resumed from"), std::string::npos) << out;
}

// SFT with a lora section, from the pretrained base: only the adapters train (the checkpoints
// hold them and their optimizer state, not the base), validation loss falls, final/ holds the
// merged weights and the PEFT adapter, and a run killed mid-stage resumes to the same bytes.
TEST_F(SftEndToEnd, LoraSftTrainsAdaptersOnlyAndResumesExactlyAfterKills) {
  const std::string straight = *dir_ + "/lora_straight", killed = *dir_ + "/lora_killed";
  const std::string lora = " sft.lora.rank=4 sft.lora.alpha=8 sft.train.lr=0.01";
  std::string out;
  ASSERT_EQ(test::run_command(
                test::tiller_binary() + " run " + recipe() + " run.dir=" + straight + lora, &out),
            0)
      << out;
  EXPECT_NE(out.find("[sft] LoRA rank 4 on 7 projections per layer"), std::string::npos) << out;
  const auto summary = read_json_file(straight + "/sft/complete.json");
  EXPECT_LT(summary["final_val_loss"].get<double>(), summary["initial_val_loss"].get<double>());
  const auto resolved = read_json_file(straight + "/recipe.json");
  EXPECT_EQ(resolved["stages"][1]["lora"]["rank"], 4) << resolved.dump();
  EXPECT_EQ(resolved["stages"][1]["lora"]["targets"], "all-linear");

  // The checkpoint's model part is the adapters alone (A and B of 7 projections in 2 layers).
  const std::string ckpt = straight + "/sft/checkpoints/step-30";
  ASSERT_TRUE(path_exists(ckpt)) << "no final checkpoint";
  for (const auto& entry : std::filesystem::directory_iterator(ckpt)) {
    if (entry.path().extension() != ".safetensors") continue;
    const auto tensors = read_safetensors(entry.path().string());
    if (tensors.count("model.embed_tokens.weight") > 0 || tensors.count("lm_head.weight") > 0)
      ADD_FAILURE() << entry.path() << " holds base weights";
  }
  // final/: merged weights that differ from the base, and the adapter in PEFT's layout.
  EXPECT_TRUE(path_exists(straight + "/sft/final/adapter/adapter_config.json"));
  const auto base = read_safetensors(straight + "/pretrain/final/model.safetensors");
  const auto merged = read_safetensors(straight + "/sft/final/model.safetensors");
  EXPECT_TRUE(
      torch::equal(base.at("model.embed_tokens.weight"), merged.at("model.embed_tokens.weight")));
  EXPECT_FALSE(torch::equal(base.at("model.layers.0.self_attn.q_proj.weight"),
                            merged.at("model.layers.0.self_attn.q_proj.weight")));

  const std::vector<std::string> args = {test::tiller_binary(),
                                         "run",
                                         recipe(),
                                         "run.dir=" + killed,
                                         "sft.lora.rank=4",
                                         "sft.lora.alpha=8",
                                         "sft.train.lr=0.01"};
  for (const int64_t at_step : {3, 17}) {
    SCOPED_TRACE("sft step " + std::to_string(at_step));
    const pid_t pid = test::spawn_logged(
        args, killed + ".log", {"TILLER_CRASH_AFTER_STEP=sft:" + std::to_string(at_step)});
    ASSERT_GT(pid, 0);
    ASSERT_EQ(test::wait_exit(pid, 300), 128 + SIGKILL) << read_bytes(killed + ".log");
  }
  ASSERT_EQ(test::run_command(test::shell_command(args), &out), 0) << out;
  for (const std::string file : {"model.safetensors", "adapter/adapter_model.safetensors"}) {
    const std::string a = read_bytes(straight + "/sft/final/" + file);
    ASSERT_FALSE(a.empty()) << file;
    EXPECT_TRUE(a == read_bytes(killed + "/sft/final/" + file))
        << file << ": the resumed run differs from the uninterrupted one";
  }
}
