// DPO on real data: stories260K and sentences of the real TinyStories, with rule-labelled pairs.
// Each pair shares a sentence's stem up to its first " a"; the chosen side continues with the
// word "happy" before the rest of the sentence, the rejected side with the rest alone. After
// training, the implicit rewards rank held-out pairs (validation accuracy >= 0.95), and sampled
// from the held-out stems the trained policy says "happy" right after the stem at least 30 points
// more often than the reference does; the KL to the reference is reported, and how often a free
// 48-token continuation says "happy" later on (printed: measured, not asserted). The RPO term
// (sft_weight 1) keeps the continuation a story: pure DPO collapsed into "happy" everywhere.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "common/data/prompt_data.h"
#include "common/io/hf_dir.h"
#include "common/io/llama2c.h"
#include "common/recipe/recipe.h"
#include "common/recipe/stage_io.h"
#include "common/rollout/generator.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/files.h"
#include "dpo/dpo_stage.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

struct StemPair {
  std::string stem, rest;
};

std::vector<std::string> words_of(const std::string& sentence) {
  std::istringstream in(sentence);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

bool plain_word(const std::string& w) {
  if (w.empty()) return false;
  for (char ch : w)
    if (!std::islower(static_cast<unsigned char>(ch))) return false;
  return true;
}

// Sentences (split at ". ", "! ", "? " and line ends, quotes left out) with a " a WORD" after at
// least two words: the stem ends with that "a", the rest is WORD and what follows.
std::vector<StemPair> stem_pairs(const std::string& corpus_path, size_t limit) {
  std::ifstream in(corpus_path);
  std::vector<StemPair> out;
  std::string line;
  while (out.size() < limit && std::getline(in, line)) {
    std::string sentence;
    for (size_t i = 0; i < line.size() && out.size() < limit; ++i) {
      sentence += line[i];
      const bool end = (line[i] == '.' || line[i] == '!' || line[i] == '?') &&
                       (i + 1 == line.size() || line[i + 1] == ' ');
      if (!end) continue;
      const auto words = words_of(sentence);
      sentence.clear();
      if (std::any_of(words.begin(), words.end(),
                      [](const std::string& w) { return w.find('"') != std::string::npos; }))
        continue;
      for (size_t k = 2; k + 2 < words.size(); ++k) {
        if (words[k] != "a" || !plain_word(words[k + 1]) || words[k + 1] == "happy") continue;
        StemPair p;
        for (size_t j = 0; j <= k; ++j) p.stem += (j ? " " : "") + words[j];
        for (size_t j = k + 1; j < words.size(); ++j) p.rest += (j > k + 1 ? " " : "") + words[j];
        out.push_back(p);
        break;
      }
    }
  }
  return out;
}

void write_pairs(const std::string& path, const std::vector<StemPair>& pairs, size_t begin,
                 size_t end) {
  std::ofstream out(path);
  for (size_t i = begin; i < end; ++i)
    out << nlohmann::json{{"prompt", pairs[i].stem},
                          {"chosen", "happy " + pairs[i].rest},
                          {"rejected", pairs[i].rest}}
               .dump()
        << "\n";
}

void write_prompts(const std::string& path, const std::vector<StemPair>& pairs, size_t begin,
                   size_t end) {
  std::ofstream out(path);
  for (size_t i = begin; i < end; ++i)
    out << nlohmann::json{{"prompt", pairs[i].stem}}.dump() << "\n";
}

// The fraction of 48-token continuations of the stems that say "happy" after their first word:
// the free continuation, away from the one position the pairs reward.
double happy_later_rate(const std::string& model_dir, const std::string& stems) {
  Transformer model = load_hf_model(model_dir);
  model->eval();
  Tokenizer tok(tokenizer_path_in(model_dir));
  PromptDataOptions o;
  o.path = stems;
  o.format = "prompt";
  o.template_name = "plain";
  PromptStats stats;
  const auto prompts = load_prompts(o, tok, &stats);
  SamplingOptions sampling;
  sampling.max_new_tokens = 48;
  sampling.eos_id = tok.eos_id();
  for (size_t i = 0; i < prompts.size(); ++i) sampling.row_seeds.push_back(1000 + i);
  const GenerationBatch g = generate(*model, prompts, sampling);
  int hits = 0;
  for (int64_t b = 0; b < g.batch(); ++b) {
    const auto words = words_of(tok.decode(g.response(b)));
    hits += std::find(words.begin() + std::min<size_t>(1, words.size()), words.end(), "happy") !=
                    words.end()
                ? 1
                : 0;
  }
  return static_cast<double>(hits) / static_cast<double>(g.batch());
}

}  // namespace

TEST(DpoEndToEnd, Stories260KLearnsToSayTheRewardedWordAfterTheStem) {
  TILLER_REQUIRE_SHARED(bin, "models/stories260K/stories260K.bin");
  TILLER_REQUIRE_SHARED(tok, "models/stories260K/tok512.model");
  TILLER_REQUIRE_SHARED(corpus, "corpus/tinystories_head.txt");
  const std::string dir = test::temp_dir("dpo_e2e");
  SaveOptions options;
  options.tokenizer_path = tok;
  save_hf_model(*import_llama2c(bin), dir + "/base", options);
  const auto pairs = stem_pairs(corpus, 1200);
  ASSERT_EQ(pairs.size(), 1200u) << "the corpus has too few sentences with \" a \"";
  write_pairs(dir + "/train.jsonl", pairs, 0, 1000);
  write_pairs(dir + "/val.jsonl", pairs, 1000, 1200);
  write_prompts(dir + "/stems.jsonl", pairs, 1000, 1200);

  std::ofstream(dir + "/recipe.json") << R"({
    "run": {"name": "dpo_e2e", "dir": ")" + dir +
                                             R"(/run", "seed": 7, "threads": 2},
    "base": {"hf": ")" + dir + R"(/base"},
    "stages": [{"name": "dpo", "type": "dpo", "init": "@base",
      "data": {"train": ")" + dir + R"(/train.jsonl", "val": ")" +
                                             dir + R"(/val.jsonl",
               "template": "plain"},
      "loss": {"type": "sigmoid", "beta": 0.1, "sft_weight": 1.0},
      "train": {"steps": 120, "batch_size": 8, "lr": 0.0005, "warmup_steps": 10,
                "schedule": "constant", "max_seq_len": 64, "log_every": 20},
      "eval": {"prompts": ")" + dir + R"(/stems.jsonl", "format": "prompt", "count": 200,
               "max_new_tokens": 3},
      "ground_truth": {"rule": "regex", "pattern": "^\\s*happy\\b"}}]})";
  ConfigErrors errors;
  const Recipe recipe = load_recipe(dir + "/recipe.json", {}, errors);
  const DpoStageConfig config = parse_dpo_stage(recipe.stages.at(0), errors);
  errors.throw_if_any(dir + "/recipe.json");
  const nlohmann::json summary = run_dpo_stage(recipe, config);
  std::printf("summary: %s\n", summary.dump().c_str());

  EXPECT_GE(summary["eval_rewards/accuracies"].get<double>(), 0.95);
  const double before = summary["ground_truth_initial"].get<double>();
  const double after = summary["ground_truth_final"].get<double>();
  EXPECT_GE(after - before, 0.30) << "before " << before << ", after " << after;
  EXPECT_GT(summary["kl_final"].get<double>(), 0.0);
  // Measured, not asserted: how much "happy" later in a free continuation moved.
  std::printf(
      "\"happy\" after the first word of 48-token continuations: reference %.3f, "
      "trained %.3f\n",
      happy_later_rate(dir + "/base", dir + "/stems.jsonl"),
      happy_later_rate(stage_output_dir(recipe, "dpo"), dir + "/stems.jsonl"));
}
