// Training machinery: packed loss, gradient accumulation, activation checkpointing, schedule,
// checkpoints, TensorBoard framing, recipe validation.
#include <gtest/gtest.h>

#include <limits>

#include <filesystem>
#include <fstream>

#include <cstring>
#include "common/data/batching.h"
#include "common/recipe/recipe.h"
#include "common/torch_compat.h"
#include "common/train/checkpoint.h"
#include "common/train/lm_loss.h"
#include "common/train/metrics.h"
#include "common/train/optimizer.h"
#include "common/train/precision.h"
#include "common/train/schedule.h"
#include "common/train/train_config.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "sft/sft_stage.h"
#include "stages/stage_types.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

ModelConfig tiny_config() {
  ModelConfig c = test::llama_config(64, 32, 48, 2, 4, 2, 64);
  c.tie_word_embeddings = false;
  return c;
}

Transformer tiny_model(uint64_t seed) {
  Transformer m(tiny_config());
  m->init_weights(seed);
  return m;
}

std::vector<Example> random_examples(int n, uint64_t seed) {
  std::vector<Example> out;
  auto g = torch::make_generator<at::CPUGeneratorImpl>(seed);
  for (int i = 0; i < n; ++i) {
    const int64_t len = 4 + (i * 5) % 9;
    auto ids = torch::randint(3, 64, {len}, g, torch::kLong);
    Example e;
    for (int64_t t = 0; t < len; ++t) {
      e.tokens.push_back(ids[t].item<int64_t>());
      e.trainable.push_back(t >= len / 2 ? 1 : 0);  // a "prompt" half and a "response" half
    }
    e.tokens[0] = 1;
    out.push_back(e);
  }
  return out;
}

std::vector<torch::Tensor> gradients(TransformerImpl& m) {
  std::vector<torch::Tensor> out;
  for (auto& p : m.parameters()) out.push_back(p.grad().clone());
  return out;
}

double max_relative_difference(const std::vector<torch::Tensor>& a,
                               const std::vector<torch::Tensor>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double scale = std::max(a[i].abs().max().item<double>(), 1e-12);
    worst = std::max(worst, (a[i] - b[i]).abs().max().item<double>() / scale);
  }
  return worst;
}

}  // namespace

TEST(SftTrain, PackedLossEqualsExamplesOneByOne) {
  auto model = tiny_model(1);
  model->eval();
  torch::NoGradGuard no_grad;
  auto examples = random_examples(5, 2);
  BatchingOptions packed;
  packed.max_seq_len = 64;
  auto rows = plan_in_order(examples, packed);
  ASSERT_EQ(rows.size(), 1u);  // all five in one row
  const double packed_loss =
      lm_loss_sum(*model, make_batch(examples, rows, 0, 1, packed, 0)).item<double>();
  double separate = 0;
  BatchingOptions single;
  single.packing = false;
  single.max_seq_len = 64;
  for (size_t i = 0; i < examples.size(); ++i) {
    std::vector<Example> one = {examples[i]};
    separate += lm_loss_sum(*model, make_batch(one, plan_in_order(one, single), 0, 1, single, 0))
                    .item<double>();
  }
  EXPECT_NEAR(packed_loss, separate, 1e-4 * std::abs(separate));
}

TEST(SftTrain, GradientAccumulationMatchesOneLargeBatch) {
  auto examples = random_examples(8, 3);
  BatchingOptions o;
  o.packing = false;
  o.max_seq_len = 64;
  auto rows = plan_in_order(examples, o);
  auto batch = make_batch(examples, rows, 0, 8, o, 0);
  const double total = static_cast<double>(batch.target_count);

  // Adam's eps at 1e-6, not 1e-8: an element whose gradient is near eps has an update of
  // g / (|g| + eps), which turns the float rounding of a different summation order (one batch vs
  // four, one fused GEMM vs three) into a visible update difference; the gradients themselves are
  // checked to 1e-6 below.
  const OptimizerOptions adam{1e-2, 0.1, 0.9, 0.95, 1e-6};
  auto one = tiny_model(4);
  auto opt_one = make_adamw(*one, adam);
  opt_one->zero_grad();
  (lm_loss_sum(*one, batch) / total).backward();
  auto grads_one = gradients(*one);
  opt_one->step();

  auto four = tiny_model(4);
  auto opt_four = make_adamw(*four, adam);
  opt_four->zero_grad();
  for (int64_t begin = 0; begin < 8; begin += 2)
    (lm_loss_sum(*four, batch.slice(begin, 2)) / total).backward();
  auto grads_four = gradients(*four);
  opt_four->step();

  EXPECT_LT(max_relative_difference(grads_one, grads_four), 1e-6);
  // The AdamW updates agree too, element by element, as far as those gradients allow: the first
  // update is lr * g / (|g| + eps) (the decay is the same in both), which a gradient differing by
  // dg moves by up to lr * eps * dg / (|g| + eps)^2, so near |g| = eps rounding becomes visible
  // (a fixed bound on the updates' difference passed or failed with the data's seed). Twice that,
  // plus float rounding of the step and of the subtraction that measures it (a few ulps of the
  // weight and of lr, the largest update).
  auto start = tiny_model(4)->parameters();
  auto p_one = one->parameters(), p_four = four->parameters();
  const double lr = adam.lr, eps = adam.eps;
  double worst = 0, norm = 0;
  for (size_t i = 0; i < start.size(); ++i) {
    auto u1 = p_one[i].detach() - start[i].detach(), u4 = p_four[i].detach() - start[i].detach();
    const auto g_small = torch::minimum(grads_one[i].abs(), grads_four[i].abs());
    const auto allowed =
        2 * lr * eps * (grads_one[i] - grads_four[i]).abs() / (g_small + eps).pow(2) +
        4 * std::numeric_limits<float>::epsilon() * (start[i].detach().abs() + lr);
    worst = std::max(worst, ((u1 - u4).abs() / allowed).max().item<double>());
    norm += u1.pow(2).sum().item<double>();
  }
  EXPECT_GT(norm, 0);
  EXPECT_LE(worst, 1.0) << "largest update difference over what the gradients allow";
}

TEST(SftTrain, ActivationCheckpointingGivesTheSameGradients) {
  auto examples = random_examples(4, 5);
  BatchingOptions o;
  o.max_seq_len = 64;
  auto batch = make_batch(examples, plan_in_order(examples, o), 0, 1, o, 0);
  auto plain = tiny_model(6);
  lm_loss_sum(*plain, batch).backward();
  auto recomputed = tiny_model(6);
  recomputed->model->activation_checkpointing = true;
  lm_loss_sum(*recomputed, batch).backward();
  EXPECT_LT(max_relative_difference(gradients(*plain), gradients(*recomputed)), 1e-5);
}

TEST(SftTrain, ScheduleWarmsUpThenDecays) {
  ScheduleOptions s{1.0, 0.1, 10, 110, "cosine"};
  EXPECT_DOUBLE_EQ(learning_rate(s, 0), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(s, 9), 1.0);
  EXPECT_NEAR(learning_rate(s, 60), 0.55, 1e-12);  // half way through the cosine
  EXPECT_NEAR(learning_rate(s, 110), 0.1, 1e-12);
  s.kind = "linear";
  EXPECT_NEAR(learning_rate(s, 60), 0.55, 1e-12);
  EXPECT_NEAR(learning_rate(s, 35), 1.0 - 0.9 * 0.25, 1e-12);
  s.kind = "constant";
  EXPECT_DOUBLE_EQ(learning_rate(s, 100), 1.0);
}

TEST(SftTrain, CheckpointRoundTripAndInterruptedSaveIsIgnored) {
  const std::string dir = test::temp_dir("ckpt");
  auto model = tiny_model(7);
  auto opt = std::make_unique<ParallelAdamW>(*model, OptimizerOptions{1e-2, 0.0, 0.9, 0.95, 1e-8},
                                             dist::Group());
  auto examples = random_examples(2, 8);
  BatchingOptions o;
  o.max_seq_len = 64;
  auto batch = make_batch(examples, plan_in_order(examples, o), 0, 1, o, 0);
  lm_loss_sum(*model, batch).backward();
  opt->step();
  save_checkpoint(dir, {{{"model", model.get()}}, {{"optimizer", opt.get()}}},
                  {{"step", 3}, {"row", 5}}, 2);
  // A save that died half way: a .tmp directory with garbage, never read.
  std::filesystem::create_directories(dir + "/step-4.tmp");
  std::ofstream(dir + "/step-4.tmp/model.safetensors") << "garbage";

  auto restored = tiny_model(99);
  auto restored_opt = std::make_unique<ParallelAdamW>(
      *restored, OptimizerOptions{1e-2, 0.0, 0.9, 0.95, 1e-8}, dist::Group());
  auto state = load_latest_checkpoint(
      dir, {{{"model", restored.get()}}, {{"optimizer", restored_opt.get()}}});
  EXPECT_EQ(state["step"], 3);
  EXPECT_EQ(state["row"], 5);
  auto a = model->named_weights(), b = restored->named_weights();
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
  // The same next step from both: optimizer state was restored exactly.
  opt->zero_grad();
  restored_opt->zero_grad();
  lm_loss_sum(*model, batch).backward();
  lm_loss_sum(*restored, batch).backward();
  opt->step();
  restored_opt->step();
  a = model->named_weights(), b = restored->named_weights();
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;

  // keep: only the newest two survive.
  for (int step : {5, 6, 7})
    save_checkpoint(dir, {{{"model", model.get()}}, {}}, {{"step", step}}, 2);
  EXPECT_FALSE(std::filesystem::exists(dir + "/step-5"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/step-6"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/step-7"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/step-4.tmp"));

  // A later step left by an abandoned attempt (killed between renaming its directory and writing
  // `latest`) is discarded, and keep-N never prunes the checkpoint just written.
  save_checkpoint(dir, {{{"model", model.get()}}, {}}, {{"step", 20}}, 2);
  write_file_atomic(dir + "/latest", "step-7\n");
  save_checkpoint(dir, {{{"model", model.get()}}, {}}, {{"step", 9}}, 1);
  EXPECT_TRUE(std::filesystem::exists(dir + "/step-9"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/step-20"));
  EXPECT_EQ(verify_checkpoints(dir), (std::vector<int64_t>{9}));
}

TEST(SftTrain, CheckpointVerifyReadsEveryCheckpointAndNamesABadFile) {
  const std::string dir = test::temp_dir("verify");
  auto model = tiny_model(3);
  ParallelAdamW opt(*model, OptimizerOptions{}, dist::Group());
  for (int step : {1, 2})
    save_checkpoint(dir, {{{"model", model.get()}}, {{"optimizer", &opt}}}, {{"step", step}}, 3);
  EXPECT_EQ(verify_checkpoints(dir), (std::vector<int64_t>{1, 2}));
  // A deletion cut short leaves a step-N.old, which is never read and goes at the next save.
  std::filesystem::create_directories(dir + "/step-0.old");
  EXPECT_EQ(verify_checkpoints(dir), (std::vector<int64_t>{1, 2}));
  save_checkpoint(dir, {{{"model", model.get()}}, {{"optimizer", &opt}}}, {{"step", 2}}, 3);
  EXPECT_FALSE(std::filesystem::exists(dir + "/step-0.old"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/step-2.old"));  // the re-saved step's old copy

  // A truncated weights file in the older checkpoint (not the one `latest` names) is found.
  const std::string weights = dir + "/step-1/model.safetensors";
  const std::string bytes = test::read_bytes(weights);
  std::ofstream(weights, std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() / 2);
  EXPECT_NE(test::error_of([&] { verify_checkpoints(dir); }).find(weights), std::string::npos);
  std::ofstream(weights, std::ios::binary | std::ios::trunc) << bytes;
  EXPECT_EQ(verify_checkpoints(dir).size(), 2u);

  // A checkpoint missing a file the newest has (a deletion cut short in place) is found.
  std::filesystem::rename(dir + "/step-1/rng.safetensors", dir + "/rng.bak");
  EXPECT_NE(test::error_of([&] { verify_checkpoints(dir); }).find("step-1: no rng.safetensors"),
            std::string::npos);
  std::filesystem::rename(dir + "/rng.bak", dir + "/step-1/rng.safetensors");

  // Killed between renaming the first checkpoint and writing `latest`: finished checkpoints that
  // were never committed read in full, and a resume starts over instead of loading them.
  std::filesystem::rename(dir + "/latest", dir + "/latest.bak");
  EXPECT_EQ(verify_checkpoints(dir), (std::vector<int64_t>{1, 2}));
  EXPECT_TRUE(load_latest_checkpoint(dir, {{{"model", model.get()}}, {}}).is_null());
  std::filesystem::rename(dir + "/latest.bak", dir + "/latest");

  // A garbled optimizer archive, and a `latest` naming nothing.
  std::ofstream(dir + "/step-2/optimizer.optimizer.pt", std::ios::trunc) << "not an archive";
  EXPECT_NE(test::error_of([&] { verify_checkpoints(dir); }).find("not a readable optimizer"),
            std::string::npos);
  std::filesystem::remove_all(dir + "/step-2");
  EXPECT_NE(test::error_of([&] { verify_checkpoints(dir); }).find("which does not exist"),
            std::string::npos);
}

TEST(SftTrain, Crc32cMatchesTheStandardCheckValue) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
}

TEST(SftTrain, TensorBoardEventFileFraming) {
  const std::string dir = test::temp_dir("tb");
  std::string path;
  {
    TensorBoardWriter tb(dir);
    tb.scalar("loss", 1.5, 7);
    path = tb.path();
  }
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Two records, each: u64 length, u32 masked crc of length, data, u32 masked crc of data.
  size_t pos = 0;
  int records = 0;
  while (pos < bytes.size()) {
    uint64_t length;
    std::memcpy(&length, bytes.data() + pos, 8);
    ASSERT_LE(pos + 16 + length, bytes.size());
    uint32_t crc;
    std::memcpy(&crc, bytes.data() + pos + 12 + length, 4);
    const uint32_t raw = crc32c(bytes.data() + pos + 12, length);
    EXPECT_EQ(crc, ((raw >> 15) | (raw << 17)) + 0xa282ead8u);
    pos += 16 + length;
    ++records;
  }
  EXPECT_EQ(records, 2);
  EXPECT_NE(bytes.find("loss"), std::string::npos);
}

TEST(SftTrain, RecipeMistakesAreAllReportedWithPaths) {
  const std::string dir = test::temp_dir("recipe");
  std::ofstream(dir + "/data.jsonl") << R"({"prompt":"a","completion":"b"})"
                                     << "\n";
  std::ofstream(dir + "/r.json") << R"({
    // comments are allowed
    "run": {"name": "t", "dir": ")"
                                 << dir << R"(/run", "sed": 1},
    "base": {"hf": ")" << dir << R"("},
    "stages": [{"name": "sft", "type": "sft", "data": {"train": ")"
                                 << dir << R"(/data.jsonl",
                "format": "prompt_completion"},
                "train": {"steps": 10, "batch_size": 6, "micro_batch_size": 4, "lr": "fast"}}]
  })";
  ConfigErrors errors;
  auto recipe = load_recipe(dir + "/r.json", {"sft.train.warmup=3"}, errors);
  parse_stage(recipe.stages[0], errors);
  std::string all;
  for (const auto& e : errors.list()) all += e + "\n";
  EXPECT_NE(all.find("run.sed: unknown key"), std::string::npos) << all;
  EXPECT_NE(all.find("stages[0].train.warmup: unknown key"), std::string::npos) << all;
  EXPECT_NE(all.find("stages[0].train.lr: expected a number"), std::string::npos) << all;
  EXPECT_NE(all.find("batch_size 6 is not divisible by micro_batch_size 4"), std::string::npos)
      << all;
  EXPECT_EQ(errors.list().size(), 4u) << all;
  EXPECT_THROW(errors.throw_if_any("r.json"), Error);
}

// Keys a stage would accept and then not honour are refused: a validation file beside a split
// fraction, a record limit of 0 or -7, and for pretraining the template, train_on_prompt and
// max_records (plain text, every token trained, the whole file read). `null` is refused too.
TEST(SftTrain, KeysThatWouldBeIgnoredAreRefused) {
  const std::string dir = test::temp_dir("ignored_keys");
  std::ofstream(dir + "/data.jsonl") << R"({"prompt":"a","completion":"b"})"
                                     << "\n";
  const std::string data = dir + "/data.jsonl";
  std::ofstream(dir + "/r.json") << R"({"run": {"name": "t", "dir": ")" << dir << R"(/run"},
    "base": {"hf": ")" << dir << R"("},
    "stages": [{"name": "sft", "type": "sft",
                "data": {"train": ")"
                                 << data << R"(", "val": ")" << data << R"(",
                         "val_fraction": 0.2, "max_records": -7},
                "train": {"lr": null}},
               {"name": "pretrain", "type": "pretrain", "init": "@base",
                "data": {"train": ")"
                                 << data << R"(", "template": "plain",
                         "train_on_prompt": false, "max_records": 10}}]})";
  ConfigErrors errors;
  auto recipe = load_recipe(dir + "/r.json", {}, errors);
  for (const auto& stage : recipe.stages) parse_stage(stage, errors);
  std::string all;
  for (const auto& e : errors.list()) all += e + "\n";
  for (const char* expected :
       {"stages[0].data.val_fraction: give either data.val (a validation file) or "
        "data.val_fraction, not both",
        "stages[0].data.max_records: must be at least 1 (or -1: all)",
        "stages[0].train.lr: null is not a value here",
        "stages[1].data.template: does not apply to pretraining",
        "stages[1].data.train_on_prompt: does not apply to pretraining",
        "stages[1].data.max_records: does not apply to pretraining"})
    EXPECT_NE(all.find(expected), std::string::npos) << expected << "\n" << all;
  EXPECT_EQ(errors.list().size(), 6u) << all;
}

TEST(SftTrain, OverridesAddressStagesByName) {
  auto j = nlohmann::json::parse(
      R"({"run": {"seed": 1}, "stages": [{"name": "sft", "train": {"steps": 3}}]})");
  apply_override(j, "sft.train.steps=10");
  apply_override(j, "run.seed=7");
  apply_override(j, "stages.0.train.lr=0.5");
  apply_override(j, "sft.data.template=chatml");
  EXPECT_EQ(j["stages"][0]["train"]["steps"], 10);
  EXPECT_EQ(j["run"]["seed"], 7);
  EXPECT_EQ(j["stages"][0]["train"]["lr"], 0.5);
  EXPECT_EQ(j["stages"][0]["data"]["template"], "chatml");
  EXPECT_THROW(apply_override(j, "novalue"), Error);
  EXPECT_THROW(apply_override(j, "run.seed.x=1"), Error);
}

TEST(SftTrain, Bf16AutocastLossStaysCloseToFp32) {
  if (!bf16_supported(torch::kCPU)) GTEST_SKIP() << "skipped: this CPU has no AVX-512 BF16 / AMX";
  auto model = tiny_model(9);
  auto examples = random_examples(6, 10);
  BatchingOptions o;
  o.max_seq_len = 64;
  auto batch = make_batch(examples, plan_in_order(examples, o), 0, 1, o, 0);
  torch::NoGradGuard no_grad;
  const double fp32 = lm_loss_sum(*model, batch).item<double>();
  double bf16;
  {
    compat::AutocastGuard cast(true, torch::kCPU);
    bf16 = lm_loss_sum(*model, batch).item<double>();
  }
  EXPECT_NE(fp32, bf16);  // autocast really ran in bf16
  EXPECT_NEAR(bf16, fp32, 0.01 * fp32);
}

TEST(SftTrain, TokenizerAndModelVocabularyContradictionsAreFoundBeforeRunning) {
  const std::string dir = test::temp_dir("vocab_check");
  std::ofstream(dir + "/corpus.txt") << "some text\n";
  std::ofstream(dir + "/r.json") << R"({"run": {"name": "t", "dir": ")" << dir << R"(/run"},
    "stages": [{"name": "pretrain", "type": "pretrain",
                "tokenizer": {"train": ")"
                                 << dir << R"(/corpus.txt", "vocab_size": 300},
                "model": {"shape": "stories260k", "vocab_size": 512},
                "data": {"train": ")"
                                 << dir << R"(/corpus.txt"}}]})";
  ConfigErrors errors;
  auto recipe = load_recipe(dir + "/r.json", {}, errors);
  parse_stage(recipe.stages[0], errors);
  ASSERT_EQ(errors.list().size(), 1u);
  EXPECT_EQ(errors.list()[0],
            "stages[0].model.vocab_size: 512 contradicts the tokenizer's 300 pieces");
}
