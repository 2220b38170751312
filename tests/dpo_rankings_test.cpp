// The dpo stage on rankings: a ranking of K responses is trained as its C(K,2) pairs (ties
// skipped), each with the prompt length DPO scores after, and a short run on rankings trains.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "common/io/hf_dir.h"
#include "common/io/llama2c.h"
#include "common/recipe/recipe.h"
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/tokenizer.h"
#include "dpo/dpo_stage.h"
#include "tests/test_util.h"

using namespace tiller;
using json = nlohmann::json;

namespace {

// prompt_ids, then the response's tokens and EOS: the sequence the plain template gives.
std::vector<int64_t> sequence(const Tokenizer& tok, const std::vector<int64_t>& prompt_ids,
                              const std::string& response) {
  std::vector<int64_t> out = prompt_ids;
  for (int64_t id : tok.encode(response)) out.push_back(id);
  out.push_back(tok.eos_id());
  return out;
}

// Rankings of three stories, best first: happy, then tired, then sad.
void write_story_rankings(const std::string& path, int count) {
  const char* names[] = {"Tom", "Lily", "Ben", "Mia", "Sam", "Anna"};
  std::ofstream out(path);
  for (int i = 0; i < count; ++i) {
    const std::string name = names[i % 6];
    const std::string story = name + " had a ball " + std::to_string(i) + ". " + name + " was ";
    out << json{{"prompt", "A story about " + name + "."},
                {"responses", {story + "happy.", story + "tired.", story + "sad."}}}
               .dump()
        << "\n";
  }
}

}  // namespace

TEST(DpoRankings, AK3RankingGivesItsThreePairsWithTheirPromptLengths) {
  TILLER_REQUIRE_SHARED(tok_path, test::kStoriesTok);
  const Tokenizer tok(tok_path);
  const std::string dir = test::temp_dir("dpo_rankings_pairs");
  std::ofstream(dir + "/rankings.jsonl")
      << json{{"prompt", "Tell me a story."},
              {"responses", {"Tom was happy.", "Tom was tired.", "Tom was sad."}}}
             .dump()
      << "\n"
      // A tie: responses 1 and 2 share a rank, so only (0,1) and (0,2) are pairs.
      << json{{"prompt", "A story about Lily."},
              {"responses", {"Lily ran.", "Lily sat.", "Lily slept."}},
              {"ranks", {0, 1, 1}}}
             .dump()
      << "\n";
  DpoStageConfig config;
  config.name = "dpo";
  config.data.path = dir + "/rankings.jsonl";
  config.data.format = "ranking";
  config.data.template_name = "plain";
  config.data.max_seq_len = 64;
  config.val_fraction = 0;
  const DpoData data = load_dpo_data(Recipe(), config, tok);
  ASSERT_EQ(data.train.size(), 3u + 2u);
  EXPECT_TRUE(data.val.empty());
  EXPECT_EQ(data.stats.records, 2);

  const auto prompt = tokenize_prompt(tok, "plain", {{"user", "Tell me a story."}});
  const auto happy = sequence(tok, prompt, "Tom was happy.");
  const auto tired = sequence(tok, prompt, "Tom was tired.");
  const auto sad = sequence(tok, prompt, "Tom was sad.");
  const std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>> expected = {
      {happy, tired}, {happy, sad}, {tired, sad}};
  for (size_t i = 0; i < expected.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(data.train[i].chosen, expected[i].first);
    EXPECT_EQ(data.train[i].rejected, expected[i].second);
    EXPECT_EQ(data.train[i].chosen_prompt_tokens, static_cast<int64_t>(prompt.size()));
    EXPECT_EQ(data.train[i].rejected_prompt_tokens, static_cast<int64_t>(prompt.size()));
  }
  const auto lily = tokenize_prompt(tok, "plain", {{"user", "A story about Lily."}});
  EXPECT_EQ(data.train[3].chosen, sequence(tok, lily, "Lily ran."));
  EXPECT_EQ(data.train[3].rejected, sequence(tok, lily, "Lily sat."));
  EXPECT_EQ(data.train[4].rejected, sequence(tok, lily, "Lily slept."));
  EXPECT_EQ(data.train[4].chosen_prompt_tokens, static_cast<int64_t>(lily.size()));
}

// 12 rankings of 3: 3 held out (9 validation pairs), 27 training pairs. At step 0 the policy is
// its reference (every margin 0, the loss log 2); training moves the held-out pairs' margins up.
TEST(DpoRankings, AShortRunOnRankingsTrains) {
  TILLER_REQUIRE_SHARED(bin, test::kStoriesBin);
  TILLER_REQUIRE_SHARED(tok, test::kStoriesTok);
  const std::string dir = test::temp_dir("dpo_rankings_run");
  {
    SaveOptions options;
    options.tokenizer_path = tok;
    save_hf_model(*import_llama2c(bin), dir + "/init", options);
  }
  write_story_rankings(dir + "/rankings.jsonl", 12);
  std::ofstream(dir + "/recipe.json")
      << json{{"run", {{"name", "dpo"}, {"dir", dir + "/run"}, {"seed", 5}, {"threads", 2}}},
              {"base", {{"hf", dir + "/init"}}},
              {"stages",
               {{{"name", "dpo"},
                 {"type", "dpo"},
                 {"init", "@base"},
                 {"data",
                  {{"train", dir + "/rankings.jsonl"},
                   {"format", "ranking"},
                   {"template", "plain"},
                   {"val_fraction", 0.25}}},
                 {"train",
                  {{"steps", 8},
                   {"batch_size", 4},
                   {"micro_batch_size", 2},
                   {"lr", 0.002},
                   {"schedule", "constant"},
                   {"max_seq_len", 48}}}}}}};
  ConfigErrors errors;
  const Recipe recipe = load_recipe(dir + "/recipe.json", {}, errors);
  const DpoStageConfig config = parse_dpo_stage(recipe.stages.at(0), errors);
  ASSERT_TRUE(errors.empty()) << errors.list()[0];
  const json summary = run_dpo_stage(recipe, config);
  EXPECT_EQ(summary["train_pairs"], 27);
  EXPECT_EQ(summary["val_pairs"], 9);
  EXPECT_GT(summary["eval_rewards/accuracies"].get<double>(), 0.5) << summary.dump();
  EXPECT_LT(summary["eval_loss"].get<double>(), std::log(2.0)) << summary.dump();
}
