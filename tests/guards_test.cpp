// Guards of a long run: the loss-spike filter (and its state across a resume), a full disk or an
// unwritable directory while saving (clear error, previous checkpoint intact, nothing half
// written), and configs that would allocate more than the machine has.
#include <gtest/gtest.h>
#include <sys/mount.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "common/io/hf_dir.h"
#include "common/model/kv_cache.h"
#include "common/model/transformer.h"
#include "common/train/checkpoint.h"
#include "common/train/nonfinite_guard.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "common/util/runtime.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

ModelConfig small_config() {
  return test::llama_config(64, 32, 64, 2, 4, 4, 64);
}

// A tmpfs of `megabytes` at a fresh directory, unmounted when it goes; empty when this process
// may not mount (not root, or no CAP_SYS_ADMIN in the container).
struct SmallDisk {
  std::string dir;
  explicit SmallDisk(int megabytes) {
    const std::string at = test::temp_dir("small_disk");
    const std::string options = "size=" + std::to_string(megabytes) + "m";
    if (mount("tmpfs", at.c_str(), "tmpfs", 0, options.c_str()) == 0) dir = at;
  }
  ~SmallDisk() {
    if (!dir.empty()) umount2(dir.c_str(), MNT_DETACH);
  }
  // Writes a file until the disk is full; returns its path.
  std::string fill() const {
    const std::string path = dir + "/filler";
    FILE* f = std::fopen(path.c_str(), "wb");
    std::vector<char> block(1 << 16, 'x');
    while (f != nullptr && std::fwrite(block.data(), 1, block.size(), f) == block.size()) {
    }
    if (f != nullptr) std::fclose(f);
    return path;
  }
};

}  // namespace

TEST(Guards, LossSpikesAreSkippedCountedAndStopTheRunWhenTheyPersist) {
  NonFiniteGuard guard("sft", "/nowhere", /*max_in_a_row=*/3);
  guard.set_spike_filter(/*zscore=*/4.0, /*window=*/20);
  // A noisy but steady loss: never judged a spike (the first 8 only fill the window).
  for (int step = 1; step <= 30; ++step)
    EXPECT_TRUE(guard.accept(2.0 + 0.05 * ((step * 7) % 5 - 2), 1.0, step)) << step;
  EXPECT_FALSE(guard.accept(9.0, 1.0, 31));  // a spike
  EXPECT_EQ(guard.spikes_skipped(), 1);
  EXPECT_EQ(guard.skipped(), 0);  // the non-finite count is apart
  EXPECT_TRUE(guard.accept(2.05, 1.0, 32));
  EXPECT_TRUE(guard.accept(1.2, 1.0, 33));  // a drop is no spike

  // The state travels with a checkpoint: a restored guard judges the next loss the same way.
  NonFiniteGuard restored("sft", "/nowhere", 3);
  restored.set_spike_filter(4.0, 20);
  restored.restore(guard.to_json());
  EXPECT_EQ(restored.spikes_skipped(), 1);
  EXPECT_FALSE(restored.accept(9.0, 1.0, 34));
  EXPECT_FALSE(guard.accept(9.0, 1.0, 34));

  // Spikes that persist (the loss stays where it jumped) stop the stage, naming it.
  EXPECT_FALSE(guard.accept(9.0, 1.0, 35));
  const std::string error = test::error_of([&] { guard.accept(9.0, 1.0, 36); });
  EXPECT_NE(error.find("3 loss spikes in a row at step 36"), std::string::npos) << error;

  // Off by default: any finite loss passes.
  NonFiniteGuard plain("sft", "/nowhere", 3);
  for (int step = 1; step <= 20; ++step) EXPECT_TRUE(plain.accept(2.0, 1.0, step));
  EXPECT_TRUE(plain.accept(1e6, 1.0, 21));
}

TEST(Guards, FullDiskWhileSavingLeavesThePreviousCheckpointAndNoHalfWrittenOutput) {
  SmallDisk disk(8);
  if (disk.dir.empty())
    GTEST_SKIP() << "skipped: this process may not mount a tmpfs (needs root or CAP_SYS_ADMIN)";
  Transformer model(small_config());
  model->init_weights(1);
  ParallelAdamW optimizer(*model, {}, dist::Group());
  const std::string checkpoints = disk.dir + "/checkpoints";
  const CheckpointParts parts{{{"model", model.get()}}, {{"optimizer", &optimizer}}};
  save_checkpoint(checkpoints, parts, {{"step", 1}}, 2);

  const std::string filler = disk.fill();
  const std::string error = test::error_of([&] {
    save_checkpoint(checkpoints, parts, {{"step", 2}}, 2);
  });
  EXPECT_NE(error.find("step-2"), std::string::npos) << error;
  EXPECT_NE(error.find("No space left on device"), std::string::npos) << error;
  EXPECT_EQ(verify_checkpoints(checkpoints), std::vector<int64_t>{1});
  EXPECT_FALSE(path_exists(checkpoints + "/step-2.tmp"));
  EXPECT_EQ(read_file(checkpoints + "/latest"), "step-1\n");

  // A model directory on the full disk: an error, and no directory that looks complete.
  const std::string error_hf = test::error_of([&] { save_hf_model(*model, disk.dir + "/final"); });
  EXPECT_FALSE(error_hf.empty());
  EXPECT_FALSE(path_exists(disk.dir + "/final/model.safetensors")) << error_hf;

  // Space again: the next save works and the first checkpoint still loads.
  std::filesystem::remove(filler);
  save_checkpoint(checkpoints, parts, {{"step", 2}}, 2);
  EXPECT_EQ(verify_checkpoints(checkpoints), (std::vector<int64_t>{1, 2}));
}

TEST(Guards, ReadOnlyOrBlockedDirectoryGivesOneClearError) {
  Transformer model(small_config());
  model->init_weights(1);
  ParallelAdamW optimizer(*model, {}, dist::Group());
  const CheckpointParts parts{{{"model", model.get()}}, {{"optimizer", &optimizer}}};

  // A regular file where a directory should go (what a read-only mount cannot fake for root).
  const std::string dir = test::temp_dir("blocked");
  std::ofstream(dir + "/run") << "a file, not a directory";
  const std::string error = test::error_of([&] {
    save_checkpoint(dir + "/run/checkpoints", parts, {{"step", 1}}, 2);
  });
  EXPECT_NE(error.find(dir + "/run"), std::string::npos) << error;
  EXPECT_EQ(error.find('\n'), std::string::npos) << error;

  // A read-only mount, where the process may mount one.
  SmallDisk disk(4);
  if (disk.dir.empty()) GTEST_SKIP() << "the read-only half needs a tmpfs mount, refused here";
  save_checkpoint(disk.dir + "/checkpoints", parts, {{"step", 1}}, 2);
  ASSERT_EQ(mount("tmpfs", disk.dir.c_str(), "tmpfs", MS_REMOUNT | MS_RDONLY, nullptr), 0);
  const std::string read_only = test::error_of([&] {
    save_checkpoint(disk.dir + "/checkpoints", parts, {{"step", 2}}, 2);
  });
  EXPECT_NE(read_only.find("Read-only file system"), std::string::npos) << read_only;
  EXPECT_EQ(verify_checkpoints(disk.dir + "/checkpoints"), std::vector<int64_t>{1});
}

TEST(Guards, ConfigsThatWouldOutgrowTheMachineAreRefusedBeforeAllocating) {
  // Every dimension within its own bound, the product far beyond any memory here.
  ModelConfig huge = small_config();
  huge.vocab_size = 1 << 22;
  huge.hidden_size = 1 << 16;
  huge.intermediate_size = 1 << 18;
  huge.num_attention_heads = 1024;
  huge.num_key_value_heads = 1024;
  huge.num_hidden_layers = 1024;
  const std::string error = test::error_of([&] { Transformer model(huge); });
  EXPECT_NE(error.find("parameters in fp32 needs"), std::string::npos) << error;
  EXPECT_NE(error.find("GiB of memory"), std::string::npos) << error;

  // A KV cache for a batch and length no machine here holds.
  const std::string kv = test::error_of([&] {
    KVCache cache(small_config(), /*batch=*/1 << 20, /*capacity=*/1 << 20,
                  torch::TensorOptions().dtype(torch::kFloat));
  });
  EXPECT_NE(kv.find("a KV cache of 1048576 rows"), std::string::npos) << kv;

  EXPECT_NO_THROW(check_fits_in_memory(1 << 20, "a megabyte"));
  EXPECT_GT(physical_memory_bytes(), 1 << 20);
}
