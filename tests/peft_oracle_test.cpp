// LoRA adapters checked against Hugging Face's own `peft` and `transformers` (pinned in
// tests/oracle/requirements-peft.txt, installed into .venv by scripts/setup.sh --oracles): an
// adapter Tiller writes must load in peft.PeftModel.from_pretrained over the base Tiller saved and
// give Tiller's logits, before and after merge_and_unload(); an adapter PEFT saves must attach in
// Tiller and give PEFT's logits. A causal LM (scale alpha / r, and rsLoRA's alpha / sqrt(r)) and a
// reward model whose score head is a module to save. tests/oracle/peft_oracle.py is the Python
// side. Skips, saying what to install, where .venv or its packages are missing.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "common/io/hf_dir.h"
#include "common/io/peft_adapter.h"
#include "common/io/safetensors.h"
#include "common/model/lora.h"
#include "common/util/files.h"
#include "tests/test_util.h"
#include "tiller_build_paths.h"

using namespace tiller;

namespace {

// Logits of fp32 models that compute the same function the same way up to summation order.
constexpr double kTolerance = 1e-4;

const std::string kSetupCommand = "bash scripts/setup.sh --oracles";

// The project's .venv Python when it imports peft and transformers; otherwise "" and `missing`
// says what is absent.
std::string oracle_python(std::string* missing) {
  const std::string python = std::string(TILLER_SOURCE_DIR) + "/.venv/bin/python";
  if (!std::filesystem::exists(python)) {
    *missing = python + " (no .venv)";
    return "";
  }
  std::string out;
  if (test::run_command(test::shell_command({python, "-c", "import peft, transformers"}) + " 2>&1",
                        &out) != 0) {
    while (!out.empty() && out.back() == '\n') out.pop_back();
    *missing = "peft and transformers in " + python + " (" + out.substr(out.rfind('\n') + 1) + ")";
    return "";
  }
  return python;
}

#define TILLER_REQUIRE_PEFT(var)                                     \
  std::string var##_missing;                                         \
  const std::string var = oracle_python(&var##_missing);             \
  if (var.empty())                                                   \
  GTEST_SKIP() << "skipped: the PEFT oracle needs " << var##_missing \
               << "; install it with: " << kSetupCommand

struct PeftOutputs {
  torch::Tensor adapted;  // with the adapter: logits [B, T, V] or last-token scores [B]
  torch::Tensor base;     // the adapter disabled
  torch::Tensor merged;   // after merge_and_unload()
};

// Runs tests/oracle/peft_oracle.py MODE ("load" or "make") in `dir`; "" on success, else what
// went wrong with the script's output.
std::string run_oracle(const std::string& python, const std::string& mode, const std::string& dir,
                       bool rslora, PeftOutputs* got) {
  std::vector<std::string> args = {python,
                                   std::string(TILLER_SOURCE_DIR) + "/tests/oracle/peft_oracle.py",
                                   mode,
                                   "--base",
                                   dir + "/base",
                                   "--adapter",
                                   dir + "/adapter",
                                   "--inputs",
                                   dir + "/inputs.safetensors",
                                   "--out",
                                   dir + "/peft.safetensors",
                                   "--seed",
                                   "7"};
  if (rslora) args.push_back("--rslora");
  std::string out;
  if (test::run_command(test::shell_command(args) + " 2>&1", &out) != 0)
    return "peft_oracle.py " + mode + " failed:\n" + out;
  auto tensors = read_safetensors(dir + "/peft.safetensors");
  got->adapted = tensors.at("outputs");
  got->base = tensors.at("base_outputs");
  got->merged = tensors.at("merged_outputs");
  return "";
}

struct Inputs {
  torch::Tensor input_ids;       // [B, T] int64, ids >= 3 (0 pads)
  torch::Tensor attention_mask;  // [B, T] int64
};

// Random tokens; with `lengths`, row i keeps lengths[i] real tokens and is right-padded with 0.
Inputs write_inputs(const std::string& dir, int64_t vocab, int64_t rows, int64_t length,
                    const std::vector<int64_t>& lengths = {}) {
  torch::manual_seed(3);
  Inputs inputs{torch::randint(3, vocab, {rows, length}, torch::kLong),
                torch::ones({rows, length}, torch::kLong)};
  for (size_t row = 0; row < lengths.size(); ++row) {
    inputs.input_ids[row].slice(0, lengths[row]).fill_(0);
    inputs.attention_mask[row].slice(0, lengths[row]).fill_(0);
  }
  write_safetensors(dir + "/inputs.safetensors",
                    {{"input_ids", inputs.input_ids}, {"attention_mask", inputs.attention_mask}});
  return inputs;
}

// What the model puts out for `inputs`: logits [B, T, V] of an LM, last-token scores [B] of a
// reward model.
torch::Tensor outputs_of(TransformerImpl& model, const Inputs& inputs) {
  torch::NoGradGuard no_grad;
  return model.config.num_labels > 0
             ? model.sequence_scores(inputs.input_ids, inputs.attention_mask)
             : model.forward(inputs.input_ids, inputs.attention_mask);
}

double largest_difference(const torch::Tensor& got, const torch::Tensor& want) {
  const auto a = got.to(torch::kDouble), b = want.to(torch::kDouble).reshape(got.sizes());
  return (a - b).abs().max().item<double>();
}

ModelConfig small_llama(int64_t num_labels) {
  ModelConfig config = test::llama_config(96, 32, 64, 2, 4, 2, 64);
  config.num_labels = num_labels;
  if (num_labels > 0) config.pad_token_id = 0;  // transformers finds the last real token by it
  return config;
}

// A random model (N(0, 0.02) weights: logits of order 1) saved as DIR/base.
Transformer saved_base(const ModelConfig& config, const std::string& dir) {
  Transformer model(config);
  model->init_weights(21);
  model->eval();
  save_hf_model(*model, dir + "/base");
  return model;
}

LoraOptions all_seven(bool rslora, bool reward) {
  LoraOptions options;
  options.rank = 4;
  options.alpha = 8;
  options.targets = lora_target_names();
  options.rslora = rslora;
  if (reward) options.modules_to_save = {"score"};
  return options;
}

// Fresh adapters as training would leave them: B no longer zero, the score head moved.
void attach_trained_adapters(TransformerImpl& model, const LoraOptions& options) {
  attach_lora(model, options, /*seed=*/5, "peft_oracle_test");
  torch::NoGradGuard no_grad;
  torch::manual_seed(9);
  for (auto& [name, adapter] : model.lora->adapters) adapter->b.normal_(0, 0.05);
  if (model.config.num_labels > 0) model.score->weight.add_(torch::randn_like(model.score->weight));
}

// Tiller's adapter, written, loaded by PEFT over the base Tiller saved.
void check_tiller_adapter_in_peft(const std::string& python, const std::string& name,
                                  int64_t num_labels, bool rslora) {
  SCOPED_TRACE(name);
  const std::string dir = test::temp_dir("peft_oracle_" + name);
  const ModelConfig config = small_llama(num_labels);
  Transformer model = saved_base(config, dir);
  const Inputs inputs = num_labels > 0 ? write_inputs(dir, config.vocab_size, 3, 12, {7, 12, 10})
                                       : write_inputs(dir, config.vocab_size, 2, 12);
  torch::Tensor tiller_base = outputs_of(*model, inputs);
  attach_trained_adapters(*model, all_seven(rslora, num_labels > 0));
  write_peft_adapter(*model, dir + "/adapter");
  const torch::Tensor tiller = outputs_of(*model, inputs);

  PeftOutputs peft;
  ASSERT_EQ(run_oracle(python, "load", dir, rslora, &peft), "");
  const double adapted = largest_difference(tiller, peft.adapted);
  const double merged = largest_difference(tiller, peft.merged);
  const double base = largest_difference(tiller_base, peft.base);
  const double effect = largest_difference(tiller, tiller_base);
  std::printf(
      "Tiller adapter -> PEFT (%s): max |diff| adapted %.2e, merge_and_unload %.2e, base %.2e; "
      "the adapter moves the outputs by up to %.2e\n",
      name.c_str(), adapted, merged, base, effect);
  EXPECT_LT(adapted, kTolerance);
  EXPECT_LT(merged, kTolerance);
  EXPECT_LT(base, kTolerance);
  // The adapter matters: without it the outputs would be far outside the tolerance.
  EXPECT_GT(effect, 100 * kTolerance);
}

// PEFT's adapter (get_peft_model, random B, save_pretrained) attached by Tiller.
void check_peft_adapter_in_tiller(const std::string& python, const std::string& name,
                                  int64_t num_labels, bool rslora) {
  SCOPED_TRACE(name);
  const std::string dir = test::temp_dir("peft_oracle_from_peft_" + name);
  const ModelConfig config = small_llama(num_labels);
  saved_base(config, dir);
  const Inputs inputs = num_labels > 0 ? write_inputs(dir, config.vocab_size, 3, 12, {7, 12, 10})
                                       : write_inputs(dir, config.vocab_size, 2, 12);
  PeftOutputs peft;
  ASSERT_EQ(run_oracle(python, "make", dir, rslora, &peft), "");

  Transformer model = load_hf_model(dir + "/base");
  model->eval();
  attach_peft_adapter(*model, dir + "/adapter");
  const LoraOptions& read = model->lora->options;
  EXPECT_EQ(read.rank, 4);
  EXPECT_EQ(read.alpha, 8);
  EXPECT_EQ(read.rslora, rslora);
  EXPECT_EQ(read.targets.size(), 7u);
  EXPECT_EQ(read.modules_to_save,
            num_labels > 0 ? std::vector<std::string>{"score"} : std::vector<std::string>{});
  const torch::Tensor tiller = outputs_of(*model, inputs);
  torch::Tensor tiller_base;
  {
    LoraSwitchedOff off(*model);
    tiller_base = outputs_of(*model, inputs);
  }
  const double adapted = largest_difference(tiller, peft.adapted);
  const double merged = largest_difference(tiller, peft.merged);
  const double effect = largest_difference(tiller, peft.base);
  std::printf(
      "PEFT adapter -> Tiller (%s): max |diff| adapted %.2e (PEFT merged %.2e); the adapter "
      "moves the outputs by up to %.2e\n",
      name.c_str(), adapted, merged, effect);
  EXPECT_LT(adapted, kTolerance);
  EXPECT_LT(merged, kTolerance);
  EXPECT_GT(effect, 100 * kTolerance);
  // Tiller's adapters switched off give PEFT's disabled adapter, except where a reward model's
  // score head was trained whole (switching off covers the adapters only).
  if (num_labels == 0) {
    EXPECT_LT(largest_difference(tiller_base, peft.base), kTolerance);
  }
}

}  // namespace

TEST(PeftOracle, ATillerAdapterGivesTillersLogitsInPeftAndAfterMergeAndUnload) {
  TILLER_REQUIRE_PEFT(python);
  check_tiller_adapter_in_peft(python, "lm", 0, /*rslora=*/false);
  check_tiller_adapter_in_peft(python, "lm_rslora", 0, /*rslora=*/true);
}

TEST(PeftOracle, AnAdapterSavedByPeftAttachedByTillerGivesPeftsLogits) {
  TILLER_REQUIRE_PEFT(python);
  check_peft_adapter_in_tiller(python, "lm", 0, /*rslora=*/false);
  check_peft_adapter_in_tiller(python, "lm_rslora", 0, /*rslora=*/true);
}

TEST(PeftOracle, ARewardModelAdapterWithItsScoreHeadCrossesBothWays) {
  TILLER_REQUIRE_PEFT(python);
  check_tiller_adapter_in_peft(python, "reward", 1, /*rslora=*/false);
  check_peft_adapter_in_tiller(python, "reward", 1, /*rslora=*/false);
}

// No Python needed: the config PEFT 0.11 saves for a SEQ_CLS adapter whose user named "score".
TEST(PeftAdapterConfig, ASeqClsModulesToSaveSkipsPeftsClassifierEntryAndDuplicates) {
  const std::string dir = test::temp_dir("peft_seq_cls_config");
  write_file_atomic(dir + "/adapter_config.json", R"({
    "peft_type": "LORA", "task_type": "SEQ_CLS", "r": 4, "lora_alpha": 8,
    "target_modules": ["v_proj", "q_proj"], "modules_to_save": ["score", "classifier", "score"],
    "bias": "none", "use_dora": false, "rank_pattern": {}, "alpha_pattern": {}
  })");
  const LoraOptions options = read_peft_adapter_config(dir);
  EXPECT_EQ(options.modules_to_save, std::vector<std::string>{"score"});
  EXPECT_EQ(options.targets, (std::vector<std::string>{"v_proj", "q_proj"}));
}
