// Tiller against what a TRL user runs (issue 26): the first-step losses of SFT, the reward model
// and DPO equal those of TRL's SFTTrainer, RewardTrainer and DPOTrainer on the same weights and
// tokens within 1e-4 relative, and transformers' logits (and reward scores) of the models Tiller
// saves equal Tiller's within 1e-5. tests/oracle/trl_oracle.py is the Python side; it runs in
// .venv-peers (scripts/setup_peers.sh: TRL and a recent transformers) and, for the logits, also in
// .venv (the LoRA oracle's transformers 4.41). Skips, saying what to install, where neither is.
//
// The batch is one of every example, right-padded, with prompts of different lengths, so that
// padding, the prompt's masking and each loss's reduction are all exercised:
//   SFT     the sum of the completion tokens' -log p over the batch's completion tokens (Tiller:
//           lm_loss_sum / target_count; TRL: the model's loss with num_items_in_batch);
//   reward  the mean over pairs of -log sigmoid(r_chosen - r_rejected), scores read at each
//           sequence's last real token, its EOS (pad 0 differs from EOS);
//   DPO     the mean over pairs of -log sigmoid(beta h), log-probs summed over each response's
//           tokens (EOS included, the prompt excluded), the reference's precomputed.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "common/data/batching.h"
#include "common/io/hf_dir.h"
#include "common/io/safetensors.h"
#include "common/model/reward_model.h"
#include "common/train/lm_loss.h"
#include "common/train/pairwise_reward.h"
#include "common/util/files.h"
#include "dpo/dpo_loss.h"
#include "dpo/pair_log_probs.h"
#include "tests/test_util.h"
#include "tiller_build_paths.h"

using namespace tiller;

namespace {

constexpr double kLossTolerance = 1e-4;    // relative
constexpr double kLogitsTolerance = 1e-5;  // absolute, logits of order 1
constexpr int64_t kBos = 1, kEos = 2, kPad = 0, kVocab = 96;

const std::string kSetupCommand = "bash scripts/setup_peers.sh";

// The Python of VENV (".venv-peers" or ".venv") when it imports `modules`; else "" and `missing`
// says why.
std::string venv_python(const std::string& venv, const std::string& modules, std::string* missing) {
  const std::string python = std::string(TILLER_SOURCE_DIR) + "/" + venv + "/bin/python";
  if (!std::filesystem::exists(python)) {
    *missing = python + " (no " + venv + ")";
    return "";
  }
  std::string out;
  if (test::run_command(test::shell_command({python, "-c", "import " + modules}) + " 2>&1", &out) !=
      0) {
    while (!out.empty() && out.back() == '\n') out.pop_back();
    *missing = modules + " in " + python + " (" + out.substr(out.rfind('\n') + 1) + ")";
    return "";
  }
  return python;
}

// Runs trl_oracle.py MODE DIR; its stdout's last line as JSON, or a failure naming its output.
nlohmann::json run_oracle(const std::string& python, const std::string& mode,
                          const std::string& dir) {
  std::string out;
  const std::string script = std::string(TILLER_SOURCE_DIR) + "/tests/oracle/trl_oracle.py";
  const int status =
      test::run_command(test::shell_command({python, script, mode, dir}) + " 2>/dev/null", &out);
  EXPECT_EQ(status, 0) << "trl_oracle.py " << mode << " failed; run it by hand: " << python << " "
                       << script << " " << mode << " " << dir;
  if (status != 0) return nullptr;
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return nlohmann::json::parse(out.substr(out.rfind('\n') + 1));
}

// `count` random ids in [3, vocab): no BOS, EOS or pad among them.
std::vector<int64_t> random_ids(int64_t count) {
  const torch::Tensor ids = torch::randint(3, kVocab, {count}, torch::kLong).contiguous();
  return std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + count);
}

std::vector<int64_t> concat(std::vector<int64_t> a, const std::vector<int64_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The batch both sides compute on: SFT examples and preference pairs with prompts and responses
// of different lengths. Prompts start with BOS; responses end with EOS.
struct AgreementBatch {
  std::vector<Example> sft;
  std::vector<PreferencePair> pairs;
  std::vector<std::vector<int64_t>> prompts, chosen, rejected;  // the pairs' parts
};

AgreementBatch make_agreement_batch() {
  torch::manual_seed(11);
  AgreementBatch batch;
  const std::vector<std::pair<int64_t, int64_t>> sft_lengths = {{5, 10}, {9, 4}, {3, 12}, {7, 6}};
  for (const auto& [prompt, completion] : sft_lengths) {
    Example example;
    example.tokens =
        concat(concat({kBos}, random_ids(prompt - 1)), concat(random_ids(completion - 1), {kEos}));
    example.trainable.assign(static_cast<size_t>(prompt), 0);
    example.trainable.resize(static_cast<size_t>(prompt + completion), 1);
    batch.sft.push_back(example);
  }
  const std::vector<std::array<int64_t, 3>> pair_lengths = {
      {4, 8, 5}, {8, 3, 9}, {2, 11, 11}, {6, 5, 2}};
  for (const auto& lengths : pair_lengths) {
    batch.prompts.push_back(concat({kBos}, random_ids(lengths[0] - 1)));
    batch.chosen.push_back(concat(random_ids(lengths[1] - 1), {kEos}));
    batch.rejected.push_back(concat(random_ids(lengths[2] - 1), {kEos}));
    PreferencePair pair;
    pair.chosen = concat(batch.prompts.back(), batch.chosen.back());
    pair.rejected = concat(batch.prompts.back(), batch.rejected.back());
    pair.chosen_prompt_tokens = pair.rejected_prompt_tokens = lengths[0];
    batch.pairs.push_back(pair);
  }
  return batch;
}

// batch.json for trl_oracle.py: the same tokens in TRL's processed-dataset columns.
void write_batch_json(const AgreementBatch& batch, const std::string& dir) {
  nlohmann::json sft = nlohmann::json::array(), pairs = nlohmann::json::array();
  for (const Example& example : batch.sft) {
    std::vector<int64_t> mask(example.trainable.begin(), example.trainable.end());
    sft.push_back({{"input_ids", example.tokens}, {"completion_mask", mask}});
  }
  for (size_t i = 0; i < batch.pairs.size(); ++i)
    pairs.push_back({{"prompt_ids", batch.prompts[i]},
                     {"chosen_ids", batch.chosen[i]},
                     {"rejected_ids", batch.rejected[i]}});
  const nlohmann::json json = {{"bos", kBos},     {"eos", kEos}, {"pad", kPad},
                               {"vocab", kVocab}, {"sft", sft},  {"pairs", pairs}};
  write_file_atomic(dir + "/batch.json", json.dump());
}

// DIR/policy and DIR/reference (causal LMs of different weights), DIR/reward (a reward model).
struct AgreementModels {
  Transformer policy, reference, reward;
};

AgreementModels save_models(const std::string& dir) {
  ModelConfig config = test::llama_config(kVocab, 32, 64, 2, 4, 2, 64);
  config.bos_token_id = kBos;
  config.eos_token_id = kEos;
  AgreementModels models{Transformer(config), Transformer(config), nullptr};
  models.policy->init_weights(21);
  models.reference->init_weights(22);
  config.num_labels = 1;
  config.pad_token_id = kPad;  // transformers finds each row's last real token by it
  models.reward = Transformer(config);
  models.reward->init_weights(23);
  save_hf_model(*models.policy, dir + "/policy");
  save_hf_model(*models.reference, dir + "/reference");
  save_hf_model(*models.reward, dir + "/reward");
  return models;
}

// Tiller's SFT loss on the batch: the sft stage's batching (one example a row, right-padded) and
// loss (summed over the targets, divided by their count).
double tiller_sft_loss(TransformerImpl& model, const AgreementBatch& batch) {
  BatchingOptions batching;
  batching.max_seq_len = 64;
  batching.packing = false;
  batching.rows_per_batch = static_cast<int64_t>(batch.sft.size());
  const std::vector<Row> rows = plan_in_order(batch.sft, batching);
  const TokenBatch tokens =
      make_batch(batch.sft, rows, 0, static_cast<int64_t>(rows.size()), batching, kPad);
  return lm_loss_sum(model, tokens).item<double>() / static_cast<double>(tokens.target_count);
}

// The reward stage's loss: one forward of every sequence, Bradley-Terry over the pairs, divided
// by the pair count.
double tiller_reward_loss(TransformerImpl& model, const AgreementBatch& batch) {
  const ComparisonBatch comparisons = make_pair_batch(
      batch.pairs, identity_order(batch.pairs.size()), 0, batch.pairs.size(), kPad, false);
  const torch::Tensor scores = raw_scores(model, comparisons.rows);
  const torch::Tensor loss =
      pairwise_loss_sum(scores.index_select(0, comparisons.better),
                        scores.index_select(0, comparisons.worse), comparisons.margin, 0.0);
  return loss.item<double>() / static_cast<double>(batch.pairs.size());
}

// The dpo stage's sigmoid loss (beta 0.1), the reference's log-probs computed apart.
double tiller_dpo_loss(TransformerImpl& policy, TransformerImpl& reference,
                       const AgreementBatch& batch) {
  const std::vector<int64_t> order = identity_order(batch.pairs.size());
  const PairSlice slice{batch.pairs, order, 0, batch.pairs.size()};
  const SideLogProbs policy_logps = pair_log_probs(policy, slice, kPad, /*share_prefixes=*/true);
  const SideLogProbs reference_logps =
      pair_log_probs(reference, slice, kPad, /*share_prefixes=*/true);
  PairLogProbs logps{policy_logps.chosen,        policy_logps.rejected,
                     reference_logps.chosen,     reference_logps.rejected,
                     policy_logps.chosen_tokens, policy_logps.rejected_tokens};
  PreferenceLossOptions options;
  options.type = "sigmoid";
  options.beta = 0.1;
  return preference_loss(logps, options).loss.mean().item<double>();
}

void expect_relative(const std::string& what, double tiller, double trl) {
  const double relative = std::abs(tiller - trl) / std::max(std::abs(trl), 1e-12);
  std::printf("%-7s Tiller %.8f  TRL %.8f  relative difference %.2e\n", what.c_str(), tiller, trl,
              relative);
  EXPECT_LT(relative, kLossTolerance) << what;
}

// Right-padded rows of different lengths for the logits check.
struct LogitsInputs {
  torch::Tensor input_ids, attention_mask;  // [B, T] int64
};

LogitsInputs write_logits_inputs(const std::string& dir) {
  torch::manual_seed(5);
  const std::vector<int64_t> lengths = {16, 9, 13};
  LogitsInputs inputs{torch::randint(3, kVocab, {3, 16}, torch::kLong),
                      torch::ones({3, 16}, torch::kLong)};
  for (size_t row = 0; row < lengths.size(); ++row) {
    inputs.input_ids[static_cast<int64_t>(row)].slice(0, lengths[row]).fill_(kPad);
    inputs.attention_mask[static_cast<int64_t>(row)].slice(0, lengths[row]).fill_(0);
  }
  inputs.input_ids.select(1, 0).fill_(kBos);
  write_safetensors(dir + "/inputs.safetensors",
                    {{"input_ids", inputs.input_ids}, {"attention_mask", inputs.attention_mask}});
  return inputs;
}

// transformers' logits and reward scores (from `python`) against Tiller's, at the real tokens.
void check_logits(const std::string& python, const std::string& dir, AgreementModels& models,
                  const LogitsInputs& inputs) {
  const nlohmann::json versions = run_oracle(python, "logits", dir);
  if (versions.is_null()) return;
  const std::string version = versions.at("transformers").get<std::string>();
  const auto theirs = read_safetensors(dir + "/logits-" + version + ".safetensors");
  torch::NoGradGuard no_grad;
  models.policy->eval();
  models.reward->eval();
  const torch::Tensor logits = models.policy->forward(inputs.input_ids, inputs.attention_mask);
  const torch::Tensor scores =
      models.reward->sequence_scores(inputs.input_ids, inputs.attention_mask).reshape({-1});
  const torch::Tensor real = inputs.attention_mask.to(torch::kBool);
  const double logits_diff = (logits.index({real}).to(torch::kDouble) -
                              theirs.at("logits").index({real}).to(torch::kDouble))
                                 .abs()
                                 .max()
                                 .item<double>();
  const double scores_diff = (scores.to(torch::kDouble) - theirs.at("scores").to(torch::kDouble))
                                 .abs()
                                 .max()
                                 .item<double>();
  std::printf(
      "transformers %s (torch %s): max |logits diff| %.2e over %lld real positions, max "
      "|reward score diff| %.2e\n",
      version.c_str(), versions.at("torch").get<std::string>().c_str(), logits_diff,
      (long long)real.sum().item<int64_t>(), scores_diff);
  EXPECT_LT(logits_diff, kLogitsTolerance) << "transformers " << version;
  EXPECT_LT(scores_diff, kLogitsTolerance) << "transformers " << version;
}

}  // namespace

TEST(TrlAgreement, FirstStepLossesOfSftRewardAndDpoEqualTrlsOnTheSameBatch) {
  std::string missing;
  const std::string python = venv_python(".venv-peers", "trl, transformers, datasets", &missing);
  if (python.empty())
    GTEST_SKIP() << "skipped: the TRL oracle needs " << missing
                 << "; install it with: " << kSetupCommand;
  const std::string dir = test::temp_dir("trl_agreement_losses");
  AgreementModels models = save_models(dir);
  const AgreementBatch batch = make_agreement_batch();
  write_batch_json(batch, dir);
  const nlohmann::json trl = run_oracle(python, "losses", dir);
  ASSERT_FALSE(trl.is_null());
  std::printf("TRL %s, transformers %s, torch %s\n", trl.at("trl").get<std::string>().c_str(),
              trl.at("transformers").get<std::string>().c_str(),
              trl.at("torch").get<std::string>().c_str());
  models.policy->train();
  models.reward->train();
  torch::NoGradGuard no_grad;
  expect_relative("sft", tiller_sft_loss(*models.policy, batch), trl.at("sft").get<double>());
  expect_relative("reward", tiller_reward_loss(*models.reward, batch),
                  trl.at("reward").get<double>());
  expect_relative("dpo", tiller_dpo_loss(*models.policy, *models.reference, batch),
                  trl.at("dpo").get<double>());
}

TEST(TrlAgreement, TransformersLogitsOfTillersSavedModelsEqualTillers) {
  std::vector<std::string> pythons, missing_all;
  for (const char* venv : {".venv-peers", ".venv"}) {
    std::string missing;
    const std::string python = venv_python(venv, "transformers, safetensors", &missing);
    if (python.empty())
      missing_all.push_back(missing);
    else
      pythons.push_back(python);
  }
  if (pythons.empty())
    GTEST_SKIP() << "skipped: needs transformers in .venv-peers or .venv (" << missing_all[0]
                 << "; " << missing_all[1] << "); install with: " << kSetupCommand;
  const std::string dir = test::temp_dir("trl_agreement_logits");
  AgreementModels models = save_models(dir);
  const LogitsInputs inputs = write_logits_inputs(dir);
  for (const std::string& python : pythons) check_logits(python, dir, models, inputs);
}
