// Token shards (common/data/shards.h): documents written through ShardWriter come back the same
// through TokenShards, across shards and in both token widths; damaged or foreign shards are
// refused with one line naming the file; pretraining from shards equals pretraining from the
// same text through the old path, and resumes exactly after a kill.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>

#include "common/data/batching.h"
#include "common/data/sft_data.h"
#include "common/data/shards.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

constexpr uint64_t kFingerprint = 0x1234abcd5678ef01ull;

// Documents of varied lengths (one empty) with ids below `vocab`.
std::vector<std::vector<int64_t>> some_documents(int64_t vocab, int count) {
  std::vector<std::vector<int64_t>> docs;
  uint64_t state = 7;
  for (int d = 0; d < count; ++d) {
    std::vector<int64_t> ids(static_cast<size_t>(d == 3 ? 0 : 1 + splitmix64(state) % 40));
    for (auto& id : ids)
      id = static_cast<int64_t>(splitmix64(state) % static_cast<uint64_t>(vocab));
    if (!ids.empty()) ids[0] = vocab - 1;  // the largest id survives the round trip
    docs.push_back(ids);
  }
  return docs;
}

std::vector<ShardFile> write_split(const std::string& dir, const std::string& split,
                                   const std::vector<std::vector<int64_t>>& docs, int64_t vocab,
                                   int64_t max_shard_tokens, uint64_t fingerprint = kFingerprint) {
  ShardWriter writer(dir, split, shard_token_bytes(vocab), fingerprint, vocab, max_shard_tokens);
  for (const auto& d : docs) writer.add_document(d);
  return writer.finish();
}

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

void round_trip(int64_t vocab, uint32_t want_bytes) {
  const std::string dir = test::temp_dir("shards_round_trip_" + std::to_string(vocab));
  const auto docs = some_documents(vocab, 60);
  ASSERT_EQ(shard_token_bytes(vocab), want_bytes);
  const auto written = write_split(dir, "train", docs, vocab, /*max_shard_tokens=*/200);
  ASSERT_GE(written.size(), 3u);
  int64_t documents = 0, tokens = 0;
  for (size_t i = 0; i < written.size(); ++i) {
    EXPECT_EQ(written[i].bin, shard_stem("train", static_cast<int64_t>(i)) + ".bin");
    EXPECT_EQ(std::filesystem::file_size(dir + "/" + written[i].bin),
              static_cast<uint64_t>(64 + written[i].tokens * want_bytes));
    // A shard ends at the first document boundary at or past the limit.
    if (i + 1 < written.size()) {
      EXPECT_GE(written[i].tokens, 200);
    }
    documents += written[i].documents;
    tokens += written[i].tokens;
  }
  EXPECT_EQ(documents, 60);
  EXPECT_EQ(read_shard_header(dir + "/train-00000.bin").token_bytes, want_bytes);

  const TokenShards shards(dir, "train", kFingerprint, vocab);
  ASSERT_EQ(shards.document_count(), 60);
  ASSERT_EQ(shards.token_count(), tokens);
  std::vector<int64_t> stream;
  for (int64_t d = 0; d < 60; ++d) {
    EXPECT_EQ(shards.document(d), docs[static_cast<size_t>(d)]) << "document " << d;
    stream.insert(stream.end(), docs[static_cast<size_t>(d)].begin(),
                  docs[static_cast<size_t>(d)].end());
  }
  // One read across every shard boundary equals the documents concatenated.
  std::vector<int64_t> all(static_cast<size_t>(tokens));
  shards.read(0, tokens, all.data());
  EXPECT_EQ(all, stream);
  // Chunks: the stream cut into max_seq_len pieces, the first token of each untrained.
  const ShardChunks chunks(std::make_shared<const TokenShards>(dir, "train", kFingerprint, vocab),
                           16);
  ASSERT_EQ(chunks.size(), tokens / 16);
  const Example last = chunks.at(chunks.size() - 1);
  EXPECT_EQ(last.tokens, std::vector<int64_t>(stream.begin() + (chunks.size() - 1) * 16,
                                              stream.begin() + chunks.size() * 16));
  EXPECT_EQ(last.trainable[0], 0);
  EXPECT_EQ(last.trainable[15], 1);
  // No temporary is left.
  for (const auto& name : files_in(dir)) EXPECT_EQ(name.find(".tmp"), std::string::npos) << name;
}

}  // namespace

TEST(Shards, DocumentsRoundTripAcrossShardsInTwoByteTokens) {
  round_trip(400, 2);
}

TEST(Shards, DocumentsRoundTripAcrossShardsInFourByteTokens) {
  round_trip(100000, 4);
}

// A second write of a split with fewer shards leaves none of the first one's behind, and a
// writer abandoned before finish() (an error on the way) leaves no file at all.
TEST(Shards, AnAbandonedWriterLeavesNothingAndARewriteNoStaleShard) {
  const std::string dir = test::temp_dir("shards_abandoned");
  {
    ShardWriter writer(dir, "train", 2, kFingerprint, 400, 50);
    for (const auto& d : some_documents(400, 30)) writer.add_document(d);
    EXPECT_NE(test::error_of([&] {
                writer.add_document({1, 2, 70000});
              }).find("does not fit"),
              std::string::npos);
  }
  EXPECT_TRUE(files_in(dir).empty()) << files_in(dir).size() << " files left";

  write_split(dir, "train", some_documents(400, 30), 400, 50);
  const size_t first = files_in(dir).size();
  ASSERT_GT(first, 4u);
  write_split(dir, "train", some_documents(400, 30), 400, 100000);
  EXPECT_EQ(files_in(dir), (std::vector<std::string>{"train-00000.bin", "train-00000.idx"}));
  EXPECT_EQ(TokenShards(dir, "train", kFingerprint, 400).document_count(), 30);

  const std::string msg = test::error_of([&] {
    ShardWriter writer(dir, "val", 4, kFingerprint, 400, 50);
    writer.add_document({5, 400});
  });
  EXPECT_NE(msg.find("outside the vocabulary of 400"), std::string::npos) << msg;
}

namespace {

// A fresh copy of a good two-shard split, for one kind of damage.
std::string good_split(const std::string& name) {
  const std::string dir = test::temp_dir("shards_hostile_" + name);
  write_split(dir, "train", some_documents(400, 20), 400, 150);
  return dir;
}

void truncate_file(const std::string& path, uint64_t size) {
  std::filesystem::resize_file(path, size);
}

void patch(const std::string& path, size_t at, const std::string& bytes) {
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  file.seekp(static_cast<std::streamoff>(at));
  file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string open_error(const std::string& dir, uint64_t fingerprint = kFingerprint) {
  return test::error_of([&] { TokenShards shards(dir, "train", fingerprint, 400); });
}

#define EXPECT_HAS(text, part) EXPECT_NE((text).find(part), std::string::npos) << (text)

}  // namespace

TEST(Shards, DamagedOrForeignShardsAreRefusedNamingTheFile) {
  {
    const std::string dir = good_split("bin");
    const std::string bin = dir + "/train-00001.bin";
    const auto size = std::filesystem::file_size(bin);
    truncate_file(bin, size - 3);
    const std::string msg = open_error(dir);
    EXPECT_HAS(msg, bin + " is truncated: " + std::to_string(size - 3) + " bytes");
    EXPECT_HAS(msg, "need " + std::to_string(size));
    truncate_file(bin, 10);
    EXPECT_HAS(open_error(dir), bin + " is truncated: 10 bytes, shorter than the 64-byte");
  }
  {
    const std::string dir = good_split("idx");
    const std::string idx = dir + "/train-00000.idx";
    truncate_file(idx, std::filesystem::file_size(idx) - 8);
    EXPECT_HAS(open_error(dir), idx + " is truncated");
  }
  {
    const std::string dir = good_split("magic");
    patch(dir + "/train-00000.bin", 0, "TLRSHARX");
    EXPECT_HAS(open_error(dir), dir + "/train-00000.bin is not a token shard");
    const std::string dir2 = good_split("index_magic");
    patch(dir2 + "/train-00001.idx", 0, "NOTINDEX");
    EXPECT_HAS(open_error(dir2), dir2 + "/train-00001.idx is not a shard index");
  }
  {
    // The index of another shard: its token count disagrees.
    const std::string dir = good_split("swapped");
    std::filesystem::copy_file(dir + "/train-00000.idx", dir + "/train-00001.idx",
                               std::filesystem::copy_options::overwrite_existing);
    EXPECT_HAS(open_error(dir), dir + "/train-00001.idx indexes ");
    EXPECT_HAS(open_error(dir), "train-00001.bin holds");
  }
  {
    // A forged token count whose size would wrap around 2^64 to the header's 64 bytes.
    const std::string dir = good_split("wrap");
    const std::string bin = dir + "/train-00000.bin";
    const uint64_t wraps = uint64_t{1} << 63;  // x 2 bytes = 2^64 = 0
    patch(bin, 16, std::string(reinterpret_cast<const char*>(&wraps), 8));
    truncate_file(bin, 64);
    EXPECT_HAS(open_error(dir), bin + ": implausible token_count");
  }
  {
    // Offsets that go backwards.
    const std::string dir = good_split("offsets");
    const uint64_t big = 100;
    patch(dir + "/train-00000.idx", 64 + 8, std::string(reinterpret_cast<const char*>(&big), 8));
    EXPECT_HAS(open_error(dir), dir + "/train-00000.idx: document 1 ends at");
  }
  {
    const std::string dir = good_split("tokenizer");
    const std::string msg = open_error(dir, 0xfeedull);
    EXPECT_HAS(msg, dir +
                        "/train-00000.bin was made with another tokenizer (fingerprint "
                        "1234abcd5678ef01, this tokenizer's 000000000000feed)");
  }
  {
    // A gap in the numbering, and a missing index.
    const std::string dir = good_split("gap");
    std::filesystem::rename(dir + "/train-00001.bin", dir + "/train-00004.bin");
    EXPECT_HAS(open_error(dir), dir + "/train-00001.bin is missing");
    const std::string dir2 = good_split("noindex");
    std::filesystem::remove(dir2 + "/train-00001.idx");
    EXPECT_HAS(open_error(dir2), dir2 + "/train-00001.idx is missing");
    EXPECT_HAS(open_error(test::temp_dir("shards_empty")), "has no train-00000.bin");
  }
  {
    // Every error is one line.
    const std::string dir = good_split("oneline");
    truncate_file(dir + "/train-00000.bin", 70);
    EXPECT_EQ(open_error(dir).find('\n'), std::string::npos);
  }
}

// The chunk source and its subsets plan and batch exactly as the same examples in a vector do.
TEST(Shards, ChunksBatchExactlyAsTheTextPathsExamples) {
  const std::string dir = test::temp_dir("shards_batching");
  const auto docs = some_documents(400, 80);
  write_split(dir, "train", docs, 400, 300);
  auto shards = std::make_shared<const TokenShards>(dir, "train", kFingerprint, 400);
  auto chunks = std::make_shared<const ShardChunks>(shards, 12);
  // The text path's examples of the same stream.
  std::vector<Example> all;
  for (int64_t i = 0; i < chunks->size(); ++i) all.push_back(chunks->at(i));
  std::vector<Example> train, val;
  std::vector<Example> copy = all;
  split_validation(copy, 0.1, 99, &train, &val);
  const ValidationSplit split = split_validation(chunks->size(), 0.1, 99);
  const ExampleSubset train_view(chunks, split.train), val_view(chunks, split.validation);
  ASSERT_EQ(train_view.size(), static_cast<int64_t>(train.size()));
  ASSERT_EQ(val_view.size(), static_cast<int64_t>(val.size()));
  BatchingOptions options;
  options.max_seq_len = 12;
  options.seed = 5;
  options.rows_per_batch = 4;
  for (int64_t epoch = 0; epoch < 2; ++epoch) {
    const auto rows = plan_epoch(train_view, options, epoch);
    ASSERT_EQ(rows, plan_epoch(train, options, epoch));
    const auto a = make_batch(train_view, rows, 4, 4, options, 0);
    const auto b = make_batch(train, rows, 4, 4, options, 0);
    EXPECT_TRUE(a.input_ids.equal(b.input_ids));
    EXPECT_TRUE(a.targets.equal(b.targets));
    EXPECT_EQ(a.target_count, b.target_count);
  }
  EXPECT_EQ(plan_in_order(val_view, options), plan_in_order(val, options));
}

// ---------------------------------------------------------------------------------------------
// Pretraining from shards

namespace {

const char* kSteps = "pretrain.train.steps=12";
const char* kCheckpoints = "pretrain.train.checkpoint_every=4";

// The quickstart's pretraining run on its text (once for every test here), and its corpus
// prepared as shards by `tiller data prepare` with the tokenizer that run trained and no step:
// one document a non-empty line, encoded with BOS, as the text path reads it.
struct TextRun {
  std::string root, run, tokenizer, shards, failure;
};

const TextRun& text_run() {
  static const TextRun run = [] {
    TextRun r;
    r.root = test::temp_dir("shards_pretrain");
    r.run = r.root + "/text";
    std::string out;
    if (test::run_command(
            test::shell_command(test::quickstart_pretrain_args(r.run, {kSteps, kCheckpoints})),
            &out) != 0) {
      r.failure = out;
      return r;
    }
    r.tokenizer = r.run + "/pretrain/tokenizer/tokenizer.model";
    r.shards = r.root + "/prepared";
    const std::string config = r.root + "/prepare.json";
    write_file_atomic(config, nlohmann::json{{"inputs", r.run + "/data/corpus.txt"},
                                             {"tokenizer", r.tokenizer},
                                             {"output", r.shards},
                                             {"shard_tokens", 20000}}
                                  .dump());
    if (test::run_command(test::shell_command({test::tiller_binary(), "data", "prepare", config}),
                          &out) != 0) {
      r.failure = out;
      return r;
    }
    const int64_t written =
        read_json_file(r.shards + "/stats.json")["output"]["train"]["shards"].size();
    if (written < 2) r.failure = "expected several shards, got " + std::to_string(written);
    return r;
  }();
  return run;
}

std::vector<std::string> shards_args(const std::string& dir) {
  const TextRun& r = text_run();
  return test::quickstart_pretrain_args(
      dir, {kSteps, kCheckpoints, "pretrain.data.format=shards", "pretrain.data.train=" + r.shards,
            "pretrain.tokenizer=" + r.tokenizer});
}

void expect_same_run(const std::string& want, const std::string& got) {
  const auto a = test::metrics_by_step(want + "/pretrain/metrics.jsonl");
  const auto b = test::metrics_by_step(got + "/pretrain/metrics.jsonl");
  ASSERT_EQ(a.size(), b.size());
  int64_t compared = 0;
  for (const auto& [step, record] : a) {
    if (!record.contains("loss")) continue;
    ASSERT_TRUE(b.count(step)) << step;
    EXPECT_EQ(record["loss"].get<double>(), b.at(step)["loss"].get<double>()) << "step " << step;
    ++compared;
  }
  EXPECT_EQ(compared, 12);
  const std::string weights = read_file(want + "/pretrain/final/model.safetensors");
  EXPECT_TRUE(weights == read_file(got + "/pretrain/final/model.safetensors"))
      << "final weights differ";
}

}  // namespace

TEST(Shards, PretrainingFromShardsEqualsPretrainingFromTheText) {
  const TextRun& r = text_run();
  ASSERT_TRUE(r.failure.empty()) << r.failure;
  const std::string dir = r.root + "/shards";
  std::string out;
  ASSERT_EQ(test::run_command(test::shell_command(shards_args(dir)), &out), 0) << out;
  EXPECT_NE(out.find("data: shards " + r.shards), std::string::npos) << out;
  expect_same_run(r.run, dir);
  // The resolved recipe states the format and runs again as it is.
  const auto recipe = read_json_file(dir + "/recipe.json");
  for (const auto& stage : recipe["stages"])
    if (stage["name"] == "pretrain") {
      EXPECT_EQ(stage["data"]["format"], "shards");
      EXPECT_FALSE(stage["data"].contains("skip_bad_lines"));
    }
  ASSERT_EQ(test::run_command(test::tiller_binary() + " run --check " + dir + "/recipe.json", &out),
            0)
      << out;
}

TEST(Shards, AKilledShardsRunResumesToTheSameWeightsAndLosses) {
  const TextRun& r = text_run();
  ASSERT_TRUE(r.failure.empty()) << r.failure;
  const std::string dir = r.root + "/killed";
  const auto args = shards_args(dir);
  // Killed after step 6 (before its checkpoint; the last one is step 4's), then resumed.
  const int pid = test::spawn_logged(args, dir + ".log", {"TILLER_CRASH_AFTER_STEP=pretrain:6"});
  ASSERT_GT(pid, 0);
  ASSERT_EQ(test::wait_exit(pid, 300), 128 + SIGKILL) << read_file(dir + ".log");
  EXPECT_EQ(test::last_logged_step(dir + "/pretrain/metrics.jsonl"), 6);
  std::string out;
  ASSERT_EQ(test::run_command(test::shell_command(args), &out), 0) << out;
  // The uninterrupted shards run equals the text run (previous test); so must this one.
  expect_same_run(r.run, dir);
}

// Recipe checks: the tokenizer must be the shards' one, data.val is refused, and a directory with
// a val split takes no val_fraction.
TEST(Shards, RecipeChecksNameTheKeyAndTheReason) {
  const TextRun& r = text_run();
  ASSERT_TRUE(r.failure.empty()) << r.failure;
  const std::string root = r.root + "/checks";
  make_directories(root);
  auto check_output = [&](const std::string& name, std::vector<std::string> extra) {
    auto args = shards_args(root + "/" + name);
    args.insert(args.begin() + 2, "--check");  // tiller pretrain --check RECIPE ...
    args.insert(args.end(), extra.begin(), extra.end());
    std::string out;
    EXPECT_NE(test::run_command(test::shell_command(args), &out), 0) << out;
    return out;
  };
  // Shards made with another vocabulary.
  const std::string other = root + "-other";
  write_split(other, "train", some_documents(400, 5), 400, 1000);
  std::string out = check_output("tokenizer", {"pretrain.data.train=" + other});
  EXPECT_HAS(out, other +
                      "/train-00000.bin was made with another tokenizer (fingerprint "
                      "1234abcd5678ef01, " +
                      r.tokenizer + "'s ");
  out = check_output("val", {"pretrain.data.val=" + r.run + "/data/corpus.txt"});
  EXPECT_HAS(out, "data.val");
  EXPECT_HAS(out, "does not apply to format shards");
  out = check_output("file", {"pretrain.data.train=" + r.run + "/data/corpus.txt"});
  EXPECT_HAS(out, "format shards reads a prepared directory");
  // A val split: val_fraction is refused (the quickstart recipe gives 0.05).
  std::filesystem::copy(r.shards, root + "-withval");
  std::filesystem::copy_file(r.shards + "/train-00000.bin", root + "-withval/val-00000.bin");
  std::filesystem::copy_file(r.shards + "/train-00000.idx", root + "-withval/val-00000.idx");
  out = check_output("withval", {"pretrain.data.train=" + root + "-withval"});
  EXPECT_HAS(out, "data.val_fraction");
  EXPECT_HAS(out, "has a val split");
}

// A prepared directory's val split is the validation set: its chunks are evaluated, no fraction
// of train is held out.
TEST(Shards, AValSplitIsTheValidationSet) {
  const TextRun& r = text_run();
  ASSERT_TRUE(r.failure.empty()) << r.failure;
  const std::string prepared = r.root + "/with_val", dir = r.root + "/with_val_run";
  std::filesystem::copy(r.shards, prepared);
  const Tokenizer tokenizer(r.tokenizer);
  {
    ShardWriter writer(prepared, "val", shard_token_bytes(tokenizer.vocab_size()),
                       tokenizer_fingerprint(tokenizer), tokenizer.vocab_size(), 1 << 20);
    const auto docs = read_text_documents(r.run + "/data/corpus.txt", false, nullptr);
    for (size_t i = 0; i < 20; ++i) writer.add_document(tokenizer.encode(docs[i], true));
    writer.finish();
  }
  auto args = shards_args(dir);
  args.insert(args.end(), {"pretrain.data.train=" + prepared, "pretrain.data.val_fraction=0",
                           "pretrain.train.steps=2", "pretrain.train.eval_every=2"});
  std::string out;
  ASSERT_EQ(test::run_command(test::shell_command(args), &out), 0) << out;
  EXPECT_HAS(out, "-> 164 train / ");
  EXPECT_HAS(out, "validation chunks (validation: the val split's ");
  const auto metrics = test::metrics_by_step(dir + "/pretrain/metrics.jsonl");
  ASSERT_TRUE(metrics.count(2));
  EXPECT_TRUE(metrics.at(2).contains("val_loss")) << metrics.at(2).dump();
}
