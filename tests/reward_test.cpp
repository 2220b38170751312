// The reward-model stage: preference data (formats, HH dialogues, EOS, drops, bad input), the
// Bradley-Terry loss, scoring at the last real token, normalisation, export, exact resume, and the
// end-to-end check that stories260K learns a preference rule (validation accuracy >= 0.95).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <random>

#include "common/data/preference_data.h"
#include "common/io/hf_dir.h"
#include "common/io/llama2c.h"
#include "common/io/reward_model_dir.h"
#include "common/model/reward_model.h"
#include "common/recipe/recipe.h"
#include "common/recipe/stage_io.h"
#include "common/tokenizer/tokenizer.h"
#include "common/train/pairwise_reward.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "reward/reward_stage.h"
#include "tests/test_util.h"
#include "tiller_build_paths.h"  // TILLER_SOURCE_DIR

using namespace tiller;

namespace {

// The message of the tiller::Error `fn` throws, or "" when it throws none.
template <typename Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

ModelConfig tiny_reward_config() {
  ModelConfig c = test::llama_config(40, 16, 32, 2, 2, 2, 64);
  c.num_labels = 1;
  c.pad_token_id = 0;
  return c;
}

// A generated preference set with a rule: the chosen story ends with "happy", the rejected one
// (a different story) with another feeling.
void write_story_pairs(const std::string& path, int count, uint32_t seed) {
  const char* names[] = {"Tom", "Lily", "Ben", "Mia", "Sam", "Anna"};
  const char* things[] = {"ball", "cat", "tree", "boat", "cake", "kite", "dog"};
  const char* colors[] = {"red", "blue", "green", "big", "small", "little"};
  const char* bad[] = {"sad", "angry", "tired", "scared", "bored"};
  std::mt19937 rng(seed);
  std::ofstream out(path);
  auto story = [&](const std::string& name, const std::string& feeling) {
    return name + " had a " + colors[rng() % 6] + " " + things[rng() % 7] + ". " + name + " was " +
           feeling + ".";
  };
  for (int i = 0; i < count; ++i) {
    const std::string name = names[rng() % 6];
    const std::string chosen = story(name, "happy");
    const std::string rejected = story(name, bad[rng() % 5]);
    // The preferred side is sometimes first in the file, and the prompt is a message list half the
    // time.
    nlohmann::json record = {{"chosen", chosen}, {"rejected", rejected}};
    if (i % 2) {
      record["prompt"] = "Tell me a story about " + name + ".";
    } else {
      record["prompt"] =
          nlohmann::json::array({{{"role", "user"}, {"content", "A story about " + name + "?"}}});
    }
    out << record.dump() << "\n";
  }
}

// A generated ranking set with a graded rule: each of a prompt's four stories has three feeling
// sentences, of which 3, 2, 1 or 0 say "happy"; more "happy" ranks higher. Half the records list
// the responses best first, half shuffled with explicit "ranks".
void write_story_rankings(const std::string& path, int count, uint32_t seed) {
  const char* names[] = {"Tom", "Lily", "Ben", "Mia", "Sam", "Anna"};
  const char* things[] = {"ball", "cat", "tree", "boat", "cake", "kite", "dog"};
  const char* bad[] = {"sad", "angry", "tired", "scared", "bored"};
  std::mt19937 rng(seed);
  std::ofstream out(path);
  for (int i = 0; i < count; ++i) {
    const std::string name = names[rng() % 6];
    std::vector<std::string> responses;
    for (int happy = 3; happy >= 0; --happy) {
      std::vector<std::string> feelings;
      for (int f = 0; f < 3; ++f) feelings.push_back(f < happy ? "happy" : bad[rng() % 5]);
      std::shuffle(feelings.begin(), feelings.end(), rng);
      std::string story = name + " had a " + things[rng() % 7] + ".";
      for (const auto& feeling : feelings) story += " " + name + " was " + feeling + ".";
      responses.push_back(story);
    }
    nlohmann::json record = {{"prompt", "Tell me a story about " + name + "."}};
    if (i % 2) {
      record["responses"] = responses;
    } else {
      std::vector<int> order = {0, 1, 2, 3};
      std::shuffle(order.begin(), order.end(), rng);
      for (int k : order) {
        record["responses"].push_back(responses[static_cast<size_t>(k)]);
        record["ranks"].push_back(k);
      }
    }
    out << record.dump() << "\n";
  }
}

// stories260K converted to an HF directory (once per test binary run).
std::string stories_hf_dir(const std::string& bin, const std::string& tok) {
  static std::string dir;
  if (dir.empty()) {
    dir = test::temp_dir("reward_stories260k") + "/hf";
    auto model = import_llama2c(bin);
    SaveOptions options;
    options.tokenizer_path = tok;
    save_hf_model(*model, dir, options);
  }
  return dir;
}

// A one-stage recipe in DIR whose base is the HF directory `base`.
Recipe reward_recipe(const std::string& dir, const std::string& base, const std::string& stage_json,
                     RewardStageConfig* config) {
  const std::string path = dir + "/recipe.json";
  test::write_file(path, R"({"run": {"name": "rm", "dir": ")" + dir +
                             R"(/run", "seed": 3, "threads": 2},
                       "base": {"hf": ")" +
                             base + R"("}, "stages": [)" + stage_json + "]}");
  ConfigErrors errors;
  Recipe recipe = load_recipe(path, {}, errors);
  *config = parse_reward_stage(recipe.stages.at(0), errors);
  errors.throw_if_any(path);
  return recipe;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Loss

TEST(RewardLoss, EqualsAHandComputationOnATwoPairBatch) {
  auto chosen = torch::tensor({1.0f, -0.5f}, torch::requires_grad());
  auto rejected = torch::tensor({0.2f, 0.5f}, torch::requires_grad());
  auto margin = torch::tensor({0.0f, 0.3f});
  const double coef = 0.1;
  auto loss = pairwise_loss_sum(chosen, rejected, margin, coef);
  auto log_sigmoid = [](double x) { return -std::log1p(std::exp(-x)); };
  const double expected = -log_sigmoid(1.0 - 0.2 - 0.0) - log_sigmoid(-0.5 - 0.5 - 0.3) +
                          coef * (std::pow(1.0 + 0.2, 2) + std::pow(-0.5 + 0.5, 2));
  EXPECT_NEAR(loss.item<double>(), expected, 1e-6);
  // d/dc of -log sigmoid(c - r - m) is -(1 - sigmoid(c - r - m)); the centering term adds 2k(c +
  // r).
  loss.backward();
  auto sigmoid = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
  EXPECT_NEAR(chosen.grad()[0].item<double>(), -(1 - sigmoid(0.8)) + 2 * coef * 1.2, 1e-6);
  EXPECT_NEAR(chosen.grad()[1].item<double>(), -(1 - sigmoid(-1.3)) + 0.0, 1e-6);
  EXPECT_NEAR(rejected.grad()[1].item<double>(), (1 - sigmoid(-1.3)) + 0.0, 1e-6);
  // Without margin and centering it is TRL's -logsigmoid(r_c - r_r).
  auto plain = pairwise_loss_sum(chosen.detach(), rejected.detach(), torch::zeros({2}), 0.0);
  EXPECT_NEAR(plain.item<double>(), -log_sigmoid(0.8) - log_sigmoid(-1.0), 1e-6);
}

// ---------------------------------------------------------------------------------------------
// Scoring

TEST(RewardModel, ScoreIsReadAtTheLastRealTokenWhateverThePaddingSide) {
  Transformer model(tiny_reward_config());
  model->init_weights(7);
  model->eval();
  const std::vector<std::vector<int64_t>> seqs = {
      {1, 5, 9}, {1, 7, 3, 8, 12, 30, 2}, {1, 4, 4, 2, 6}};
  std::vector<double> alone;
  {
    torch::NoGradGuard no_grad;
    for (const auto& s : seqs) {
      // Unpadded: the score of the hidden state at the last position.
      auto ids = torch::tensor(s, torch::kLong).unsqueeze(0);
      auto h = model->hidden(
          ids, torch::arange(static_cast<int64_t>(s.size())).unsqueeze(0),
          torch::ones({1, 1, static_cast<int64_t>(s.size()), static_cast<int64_t>(s.size())},
                      torch::kBool)
              .tril());
      alone.push_back(model->scores(h)[0][static_cast<int64_t>(s.size()) - 1][0].item<double>());
    }
  }
  std::vector<const std::vector<int64_t>*> rows = {&seqs[0], &seqs[1], &seqs[2]};
  torch::NoGradGuard no_grad;
  for (bool left : {false, true}) {
    for (int64_t pad : {0, 2, 39}) {  // whatever the pad id, even EOS
      auto batch = make_score_batch(rows, pad, left);
      ASSERT_EQ(batch.input_ids.size(1), 7);
      auto scores = raw_scores(*model, batch);
      for (size_t i = 0; i < seqs.size(); ++i)
        EXPECT_NEAR(scores[static_cast<int64_t>(i)].item<double>(), alone[i], 1e-5)
            << (left ? "left" : "right") << " padding, pad " << pad << ", row " << i;
    }
  }
  // And not at another token: dropping the last token changes the score.
  std::vector<int64_t> shorter(seqs[1].begin(), seqs[1].end() - 1);
  auto other = raw_scores(*model, make_score_batch({&shorter}, 0));
  EXPECT_GT(std::abs(other[0].item<double>() - alone[1]), 1e-4);
  // score_sequences subtracts the offset.
  auto rewards = score_sequences(*model, seqs, 0, 2, /*offset=*/0.25);
  for (size_t i = 0; i < seqs.size(); ++i) EXPECT_NEAR(rewards[i], alone[i] - 0.25, 1e-5);
}

TEST(RewardModel, ExportedDirectoryReloadsToIdenticalScores) {
  const std::string dir = test::temp_dir("reward_export");
  Transformer model(tiny_reward_config());
  model->init_weights(11);
  save_hf_model(*model, dir + "/rm");
  write_reward_metadata(dir + "/rm", {0.75, "plain", 48});

  auto config = read_json_file(dir + "/rm/config.json");
  EXPECT_EQ(config["architectures"][0], "LlamaForSequenceClassification");
  EXPECT_EQ(config["num_labels"], 1);
  EXPECT_EQ(config["pad_token_id"], 0);
  EXPECT_EQ(config["tiller_reward_offset"], 0.75);
  EXPECT_EQ(config["tiller_chat_template"], "plain");
  auto weights = read_hf_weights(dir + "/rm");
  ASSERT_TRUE(weights.count("score.weight"));
  EXPECT_EQ(weights["score.weight"].sizes(), (std::vector<int64_t>{1, 16}));
  EXPECT_FALSE(weights.count("score.bias"));  // HF's score head has no bias
  EXPECT_FALSE(weights.count("lm_head.weight"));

  RewardModel loaded = load_reward_model(dir + "/rm");
  EXPECT_EQ(loaded.metadata.offset, 0.75);
  EXPECT_EQ(loaded.metadata.template_name, "plain");
  EXPECT_EQ(loaded.metadata.max_seq_len, 48);
  const std::vector<std::vector<int64_t>> seqs = {{1, 5, 9, 2}, {1, 7, 3, 8, 12, 30, 2}};
  auto before = score_sequences(*model, seqs, 0, 2);
  auto after = score_sequences(*loaded.model, seqs, 0, 2, loaded.metadata.offset);
  for (size_t i = 0; i < seqs.size(); ++i)
    EXPECT_EQ(after[i], before[i] - 0.75) << i;  // bit for bit

  // An LM directory is not a reward model.
  ModelConfig lm = tiny_reward_config();
  lm.num_labels = 0;
  Transformer lm_model(lm);
  save_hf_model(*lm_model, dir + "/lm");
  EXPECT_NE(error_of([&] { load_reward_model(dir + "/lm"); }).find("not a reward model"),
            std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Data

TEST(RewardData, HhDialogueSplitsIntoPromptTurnsAndFinalReplies) {
  const std::string chosen =
      "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: What is 2+2?"
      "\n\nAssistant: It is 4.";
  const std::string rejected =
      "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: What is 2+2?"
      "\n\nAssistant: Go away.";
  auto c = preference_from_record({{"chosen", chosen}, {"rejected", rejected}}, "hh", "f.jsonl:1");
  ASSERT_EQ(c.prompt.size(), 3u);
  EXPECT_EQ(c.prompt[0].role, "user");
  EXPECT_EQ(c.prompt[0].content, "Hi there");
  EXPECT_EQ(c.prompt[1].role, "assistant");
  EXPECT_EQ(c.prompt[1].content, "Hello! How can I help?");
  EXPECT_EQ(c.prompt[2].role, "user");
  EXPECT_EQ(c.prompt[2].content, "What is 2+2?");
  ASSERT_EQ(c.chosen.size(), 1u);
  EXPECT_EQ(c.chosen[0].role, "assistant");
  EXPECT_EQ(c.chosen[0].content, "It is 4.");
  EXPECT_EQ(c.rejected[0].content, "Go away.");
  EXPECT_EQ(c.margin, 0.0);

  // Replies that share their first words split at the same turn.
  auto d = preference_from_record(
      {{"chosen", chosen}, {"rejected", chosen.substr(0, chosen.size() - 2) + "5."}}, "hh",
      "f.jsonl:2");
  EXPECT_EQ(d.prompt.size(), 3u);
  EXPECT_EQ(d.chosen[0].content, "It is 4.");
  EXPECT_EQ(d.rejected[0].content, "It is 5.");

  // Dialogues that share no turn, or have no turns, are errors naming where.
  auto msg = error_of([&] {
    preference_from_record({{"chosen", chosen}, {"rejected", "\n\nHuman: Other\n\nAssistant: x"}},
                           "hh", "f.jsonl:7");
  });
  EXPECT_NE(msg.find("f.jsonl:7"), std::string::npos) << msg;
  msg = error_of([&] { parse_hh_dialogue("just text", "f.jsonl:8"); });
  EXPECT_NE(msg.find("f.jsonl:8"), std::string::npos) << msg;
}

TEST(RewardData, PreferenceLayoutsAndMargins) {
  // Prompt as text, sides as text, with a margin.
  auto a = preference_from_record(
      {{"prompt", "Q?"}, {"chosen", "yes"}, {"rejected", "no"}, {"margin", 1.5}}, "preference",
      "w");
  ASSERT_EQ(a.prompt.size(), 1u);
  EXPECT_EQ(a.prompt[0].role, "user");
  EXPECT_EQ(a.chosen[0].role, "assistant");
  EXPECT_EQ(a.margin, 1.5);
  // Sides as message lists that repeat the prompt, and an implicit prompt (shared leading turns).
  nlohmann::json user = {{"role", "user"}, {"content", "Q?"}};
  nlohmann::json yes = {{"role", "assistant"}, {"content", "yes"}},
                 no = {{"role", "assistant"}, {"content", "no"}};
  auto b = preference_from_record({{"prompt", {user}}, {"chosen", {user, yes}}, {"rejected", {no}}},
                                  "preference", "w");
  ASSERT_EQ(b.chosen.size(), 1u);
  EXPECT_EQ(b.chosen[0].content, "yes");
  auto c = preference_from_record({{"chosen", {user, yes}}, {"rejected", {user, no}}}, "preference",
                                  "w");
  ASSERT_EQ(c.prompt.size(), 1u);
  EXPECT_EQ(c.prompt[0].content, "Q?");
  EXPECT_EQ(c.rejected[0].content, "no");
  // A margin that is not a number is an error.
  EXPECT_NE(error_of([&] {
              preference_from_record(
                  {{"prompt", "Q"}, {"chosen", "a"}, {"rejected", "b"}, {"margin", "x"}},
                  "preference", "w:3");
            }).find("w:3: field \"margin\""),
            std::string::npos);
}

TEST(RewardData, EosHandlingIsIdenticalInTrainingEvaluationAndScoring) {
  TILLER_REQUIRE_SHARED(tok_path, test::kStoriesTok);
  Tokenizer tok(tok_path);
  const std::string dir = test::temp_dir("reward_eos");
  const std::string path = test::write_file(
      dir + "/p.jsonl",
      R"({"prompt": "Tell me a story.", "chosen": "Tom was happy.", "rejected": "Tom was sad."})"
      "\n");
  for (const std::string tmpl : {"chatml", "plain", "llama2", "alpaca"}) {
    PreferenceDataOptions o;
    o.path = path;
    o.template_name = tmpl;
    o.max_seq_len = 128;
    auto pairs = load_preference_pairs(o, tok, nullptr);
    ASSERT_EQ(pairs.size(), 1u);
    const auto prompt_ids = tokenize_prompt(tok, tmpl, {{"user", "Tell me a story."}});
    auto expected = prompt_ids;
    for (int64_t id : tok.encode("Tom was happy.")) expected.push_back(id);
    expected.push_back(tok.eos_id());
    EXPECT_EQ(pairs[0].chosen, expected) << tmpl;
    // Exactly one EOS, at the end (SFT's tokenization of the same conversation, which the scorer
    // sees).
    EXPECT_EQ(std::count(pairs[0].chosen.begin(), pairs[0].chosen.end(), tok.eos_id()), 1) << tmpl;
    EXPECT_EQ(pairs[0].chosen,
              tokenize_conversation(tok, tmpl,
                                    {{"user", "Tell me a story."}, {"assistant", "Tom was happy."}})
                  .tokens);
    // PPO scoring of generated tokens: a finished generation (ending with EOS) is not given a
    // second EOS; one cut before EOS gets it appended. Both are the training sequence.
    auto generated = tok.encode("Tom was happy.");
    EXPECT_EQ(reward_sequence(prompt_ids, generated, tok.eos_id(), 128).tokens, expected) << tmpl;
    generated.push_back(tok.eos_id());
    EXPECT_EQ(reward_sequence(prompt_ids, generated, tok.eos_id(), 128).tokens, expected) << tmpl;
  }
  // Evaluation tokenizes with the template and length the model recorded: the same sequences.
  // (The end-to-end test checks that evaluate_reward_model reproduces the stage's validation
  // figures.)
}

TEST(RewardData, TruncationKeepsBosAndEosAndDropsOverlongPrompts) {
  const std::vector<int64_t> prompt = {1, 10, 11, 12, 13, 14};
  auto s = reward_sequence(prompt, {20, 21}, 2, 7);  // the oldest prompt tokens after BOS go
  EXPECT_TRUE(s.truncated);
  EXPECT_EQ(s.tokens, (std::vector<int64_t>{1, 12, 13, 14, 20, 21, 2}));
  s = reward_sequence(prompt, {20, 21, 22, 23}, 2, 7);
  EXPECT_EQ(s.tokens, (std::vector<int64_t>{1, 14, 20, 21, 22, 23, 2}));
  s = reward_sequence({1, 10}, {20, 21, 22, 23, 24, 25, 26, 27}, 2,
                      5);  // response tail cut, EOS kept
  EXPECT_EQ(s.tokens, (std::vector<int64_t>{1, 20, 21, 22, 2}));
  s = reward_sequence({1, 10}, {20}, 2, 5);
  EXPECT_FALSE(s.truncated);
  EXPECT_EQ(s.tokens, (std::vector<int64_t>{1, 10, 20, 2}));
  EXPECT_NE(error_of([&] { reward_sequence(prompt, {20}, 2, 5); }).find("exceeds max_seq_len"),
            std::string::npos);
}

TEST(RewardData, APairsResponsesShareOnePromptCut) {
  const std::vector<int64_t> prompt = {1, 10, 11, 12, 13, 14};
  // Alone, the short response would keep 11..14 and the long one only 14; together both keep 14,
  // so that they are compared after the same context and begin with the same tokens.
  const auto pair = reward_sequences(prompt, {{20}, {30, 31, 32, 33}}, 2, 7);
  ASSERT_EQ(pair.size(), 2u);
  EXPECT_EQ(pair[0].tokens, (std::vector<int64_t>{1, 14, 20, 2}));
  EXPECT_EQ(pair[1].tokens, (std::vector<int64_t>{1, 14, 30, 31, 32, 33, 2}));
  EXPECT_EQ(pair[0].prompt_tokens, 2);
  EXPECT_EQ(pair[1].prompt_tokens, 2);
  EXPECT_TRUE(pair[0].truncated);  // it lost prompt tokens it alone would have kept
  EXPECT_EQ(reward_sequence(prompt, {20}, 2, 7).tokens,
            (std::vector<int64_t>{1, 11, 12, 13, 14, 20, 2}));
  // A response that does not fit after BOS alone still loses its tail, keeping EOS; the other
  // keeps the whole of what fits beside the same cut.
  const auto long_pair = reward_sequences({1, 10}, {{20, 21, 22, 23, 24, 25}, {40}}, 2, 5);
  EXPECT_EQ(long_pair[0].tokens, (std::vector<int64_t>{1, 20, 21, 22, 2}));
  EXPECT_EQ(long_pair[1].tokens, (std::vector<int64_t>{1, 40, 2}));
  // Nothing to cut: each as reward_sequence makes it.
  const auto short_pair = reward_sequences({1, 10}, {{20}, {21, 2}}, 2, 8);
  EXPECT_FALSE(short_pair[0].truncated);
  EXPECT_FALSE(short_pair[1].truncated);
  EXPECT_EQ(short_pair[0].tokens, (std::vector<int64_t>{1, 10, 20, 2}));
  EXPECT_EQ(short_pair[1].tokens, (std::vector<int64_t>{1, 10, 21, 2}));
}

TEST(RewardData, BadInputIsAClearErrorOrACountedDrop) {
  TILLER_REQUIRE_SHARED(tok_path, test::kStoriesTok);
  Tokenizer tok(tok_path);
  const std::string dir = test::temp_dir("reward_bad");
  const std::string good = R"({"prompt": "Q", "chosen": "yes", "rejected": "no"})";
  PreferenceDataOptions o;
  o.template_name = "plain";
  o.max_seq_len = 64;

  // Missing "rejected": an error naming file:line.
  o.path = test::write_file(dir + "/missing.jsonl",
                            good + "\n" + R"({"prompt": "Q", "chosen": "yes"})" + "\n");
  auto msg = error_of([&] { load_preference_pairs(o, tok, nullptr); });
  EXPECT_NE(msg.find(o.path + ":2: missing field \"rejected\""), std::string::npos) << msg;

  // Bad JSON: an error naming file:line; with skip_bad_lines, a counted skip (both kinds).
  o.path = test::write_file(dir + "/badjson.jsonl", good + "\n\n" +
                                                        R"({"prompt": "Q", "chosen": )" + "\n" +
                                                        R"({"prompt": "Q", "chosen": "y"})" + "\n");
  msg = error_of([&] { load_preference_pairs(o, tok, nullptr); });
  EXPECT_NE(msg.find(o.path + ":3"), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
  o.skip_bad_lines = true;
  PreferenceStats stats;
  auto pairs = load_preference_pairs(o, tok, &stats);
  EXPECT_EQ(pairs.size(), 1u);
  EXPECT_EQ(stats.skipped, 2);
  o.skip_bad_lines = false;

  // Identical sides and prompts over max_seq_len: dropped and counted.
  const std::string long_prompt(400, 'x');
  o.path = test::write_file(
      dir + "/drops.jsonl",
      good + "\n" + R"({"prompt": "Q", "chosen": "same", "rejected": "same"})" + "\n" +
          R"({"prompt": ")" + long_prompt + R"(", "chosen": "a", "rejected": "b"})" + "\n");
  pairs = load_preference_pairs(o, tok, &stats);
  EXPECT_EQ(pairs.size(), 1u);
  EXPECT_EQ(stats.records, 3);
  EXPECT_EQ(stats.identical, 1);
  EXPECT_EQ(stats.prompt_too_long, 1);

  // Nothing usable left: one error saying why.
  o.path = test::write_file(dir + "/none.jsonl",
                            R"({"prompt": "Q", "chosen": "same", "rejected": "same"})"
                            "\n");
  msg = error_of([&] { load_preference_pairs(o, tok, nullptr); });
  EXPECT_NE(msg.find("no usable preference pairs (1 records: 1 identical"), std::string::npos)
      << msg;
}

TEST(RewardStageConfig, MistakesAreReportedWithPaths) {
  const std::string dir = test::temp_dir("reward_config");
  const std::string path = test::write_file(dir + "/r.json", R"({
    "run": {"name": "x", "dir": ")" + dir + R"(/run"}, "base": {"hf": "m"},
    "stages": [{"name": "rm", "type": "reward",
                "data": {"train": "nope.jsonl", "format": "pairs", "val_fraction": 0},
                "loss": {"center_coef": -1, "beta": 2},
                "normalize": {"reference": "val_chosen"},
                "train": {"steps": 0}}]})");
  ConfigErrors errors;
  Recipe recipe = load_recipe(path, {}, errors);
  parse_reward_stage(recipe.stages.at(0), errors);
  std::string all;
  for (const auto& e : errors.list()) all += e + "\n";
  for (const char* expected :
       {"stages[0].init: ", "stages[0].data.train: file nope.jsonl does not exist",
        "stages[0].data.format: ", "stages[0].loss.center_coef: ", "stages[0].loss.beta: ",
        "stages[0].normalize.reference: ", "stages[0].train.steps: "})
    EXPECT_NE(all.find(expected), std::string::npos) << expected << " not in:\n" << all;
}

// ---------------------------------------------------------------------------------------------
// End to end (stories260K)

TEST(RewardStage, Stories260kLearnsAPreferenceRuleAndEvaluationAgrees) {
  TILLER_REQUIRE_SHARED(bin, test::kStoriesBin);
  TILLER_REQUIRE_SHARED(tok, test::kStoriesTok);
  const std::string dir = test::temp_dir("reward_e2e");
  const std::string init = stories_hf_dir(bin, tok);
  write_story_pairs(dir + "/train.jsonl", 320, 1);
  write_story_pairs(dir + "/val.jsonl", 80, 2);
  RewardStageConfig config;
  Recipe recipe = reward_recipe(dir, init,
                                R"({"name": "rm", "type": "reward", "init": "@base",
      "data": {"train": ")" + dir + R"(/train.jsonl", "val": ")" +
                                    dir + R"(/val.jsonl", "template": "plain"},
      "train": {"steps": 60, "batch_size": 16, "micro_batch_size": 8, "lr": 0.003, "warmup_steps": 5,
                "max_seq_len": 64, "eval_every": 30, "log_every": 10}})",
                                &config);
  auto summary = run_reward_stage(recipe, config);
  EXPECT_GE(summary["val_accuracy"].get<double>(), 0.95) << summary.dump();
  EXPECT_LT(summary["initial_val_accuracy"].get<double>(), 0.9) << summary.dump();
  EXPECT_GT(summary["val_margin"].get<double>(), 0.0);
  EXPECT_TRUE(stage_complete(recipe, "rm"));

  // metrics.jsonl: the reward figures at each logged step, validation figures at evaluations.
  std::ifstream metrics(dir + "/run/rm/metrics.jsonl");
  std::string line;
  int evals = 0, logged = 0;
  while (std::getline(metrics, line)) {
    auto j = nlohmann::json::parse(line);
    if (j["step"].get<int64_t>() > 0) {
      ++logged;
      for (const char* key :
           {"loss", "accuracy", "margin", "chosen_reward", "rejected_reward", "lr"})
        EXPECT_TRUE(j.contains(key)) << key << " missing in " << line;
      // A pair's stories differ in their last word only: share_prefixes (on by default) packs
      // every micro-batch.
      EXPECT_EQ(j.value("shared_prefix_batches", -1.0), 1.0) << line;
    }
    if (j.contains("val_accuracy")) {
      ++evals;
      EXPECT_TRUE(j.contains("val_loss") && j.contains("val_margin")) << line;
    }
  }
  EXPECT_EQ(logged, 6);
  EXPECT_EQ(evals, 3);  // steps 0, 30, 60

  // The exported directory: a sequence classifier with a pad id distinct from EOS and the offset.
  const std::string final_dir = stage_output_dir(recipe, "rm");
  auto hf = read_json_file(final_dir + "/config.json");
  EXPECT_EQ(hf["architectures"][0], "LlamaForSequenceClassification");
  EXPECT_NE(hf["pad_token_id"], hf["eos_token_id"]);
  EXPECT_EQ(hf["tiller_reward_offset"].get<double>(), summary["reward_offset"].get<double>());
  EXPECT_TRUE(path_exists(final_dir + "/tokenizer.model"));

  // `tiller eval reward`'s function, on the validation file: the same pairs, the same scores and
  // offset as the stage's own final validation (so the same tokenization and EOS), and the
  // reference set (the validation chosen responses) has mean reward 0 after normalisation.
  auto eval = evaluate_reward_model(final_dir, dir + "/val.jsonl");
  EXPECT_EQ(eval.pairs, summary["val_pairs"].get<int64_t>());
  EXPECT_DOUBLE_EQ(eval.accuracy, summary["val_accuracy"].get<double>());
  EXPECT_NEAR(eval.margin, summary["val_margin"].get<double>(), 1e-5);
  EXPECT_NEAR(eval.chosen_reward, 0.0, 1e-5);
  EXPECT_NEAR(summary["val_chosen_reward"].get<double>(), 0.0, 1e-5);
  EXPECT_LT(eval.rejected_reward, -0.1);

  // The command line: `tiller eval reward` prints the same figures; bad data is one error line.
  std::string out;
  ASSERT_EQ(test::run_command(test::tiller_binary() + " eval reward --model " + final_dir +
                                  " --data " + dir + "/val.jsonl --json",
                              &out),
            0)
      << out;
  auto printed = nlohmann::json::parse(out.substr(out.find('{')));
  EXPECT_DOUBLE_EQ(printed["accuracy"].get<double>(), eval.accuracy);
  EXPECT_NEAR(printed["margin"].get<double>(), eval.margin, 1e-4);  // 2 threads vs the test's
  EXPECT_EQ(printed["pairs"], eval.pairs);
  test::write_file(dir + "/bad.jsonl", R"({"prompt": "Q", "chosen": "a", "rejected": "b"})"
                                       "\n"
                                       R"({"prompt": "Q", "chosen": "a"})"
                                       "\n");
  EXPECT_EQ(test::run_command(test::tiller_binary() + " eval reward --model " + final_dir +
                                  " --data " + dir + "/bad.jsonl",
                              &out),
            1);
  EXPECT_NE(out.find("tiller: error: " + dir + "/bad.jsonl:2: missing field \"rejected\""),
            std::string::npos)
      << out;
}

TEST(RewardStage, ShippedRecipeAndCommandLineChecks) {
  TILLER_REQUIRE_SHARED(hh, "preference/hh_rlhf_harmless_base_test.jsonl.gz");
  TILLER_REQUIRE_SHARED(bin, test::kStoriesBin);
  std::string out;
  const std::string cd = std::string("cd ") + TILLER_SOURCE_DIR + " && ";
  EXPECT_EQ(
      test::run_command(
          cd + test::tiller_binary() + " reward recipes/stories260k_hh_reward.json --check", &out),
      0)
      << out;
  EXPECT_NE(out.find("OK (1 stages)"), std::string::npos) << out;
  // A recipe mistake in a reward stage is reported with its path.
  EXPECT_EQ(test::run_command(
                cd + test::tiller_binary() +
                    " reward recipes/stories260k_hh_reward.json reward.data.format=pairs --check",
                &out),
            1);
  EXPECT_NE(out.find("stages[0].data.format"), std::string::npos) << out;
}

TEST(RewardStage, ResumeEndsBitIdenticalToAnUninterruptedRun) {
  TILLER_REQUIRE_SHARED(bin, test::kStoriesBin);
  TILLER_REQUIRE_SHARED(tok, test::kStoriesTok);
  const std::string init = stories_hf_dir(bin, tok);
  // Pairs, and rankings trained with InstructGPT's loss (whose forward count resumes too).
  for (const std::string format : {"preference", "ranking"}) {
    SCOPED_TRACE(format);
    const std::string data = test::temp_dir("reward_resume_data") + "/train.jsonl";
    // batches of 6 examples cross epoch boundaries mid-step
    if (format == "preference")
      write_story_pairs(data, 21, 5);
    else
      write_story_rankings(data, 21, 5);
    auto stage = [&](int steps) {
      return R"({"name": "rm", "type": "reward", "init": "@base",
        "data": {"train": ")" +
             data + R"(", "format": ")" + format + R"(", "template": "plain", "val_fraction": 0.1},
        "loss": {"center_coef": 0.01},
        "train": {"steps": )" +
             std::to_string(steps) + R"(, "batch_size": 6, "micro_batch_size": 3, "lr": 0.003,
                  "schedule": "constant", "max_seq_len": 48, "checkpoint_every": 2}})";
    };
    RewardStageConfig config;
    const std::string straight = test::temp_dir("reward_resume_a"),
                      resumed = test::temp_dir("reward_resume_b");
    Recipe a = reward_recipe(straight, init, stage(7), &config);
    const auto straight_summary = run_reward_stage(a, config);
    Recipe b = reward_recipe(resumed, init, stage(4), &config);
    run_reward_stage(b, config);  // stops after step 4 (a checkpoint), as a killed run would have
    remove_all(stage_output_dir(b, "rm"));
    b = reward_recipe(resumed, init, stage(7), &config);
    auto summary = run_reward_stage(b, config);  // resumes at step 4
    EXPECT_EQ(summary["steps"], 7);
    EXPECT_EQ(straight_summary["responses_scored"], 7 * 6 * (format == "preference" ? 2 : 4));
    EXPECT_EQ(summary["responses_scored"], straight_summary["responses_scored"]);
    EXPECT_EQ(read_file(stage_output_dir(a, "rm") + "/model.safetensors"),
              read_file(stage_output_dir(b, "rm") + "/model.safetensors"));
    EXPECT_EQ(read_file(stage_output_dir(a, "rm") + "/config.json"),
              read_file(stage_output_dir(b, "rm") + "/config.json"));
  }
}

// ---------------------------------------------------------------------------------------------
// Rankings (InstructGPT's loss)

namespace {

// (training forwards so far, validation accuracy) at each evaluation of a run.
std::vector<std::pair<int64_t, double>> accuracy_by_forwards(const std::string& metrics_path) {
  std::vector<std::pair<int64_t, double>> out;
  for (const auto& [step, record] : test::metrics_by_step(metrics_path))
    if (record.contains("val_accuracy"))
      out.push_back(
          {record.at("responses_scored").get<int64_t>(), record.at("val_accuracy").get<double>()});
  return out;
}

// The forwards a run took to first reach `accuracy` on validation (-1: never).
int64_t forwards_to_reach(const std::vector<std::pair<int64_t, double>>& curve, double accuracy) {
  for (const auto& [forwards, value] : curve)
    if (value >= accuracy) return forwards;
  return -1;
}

}  // namespace

TEST(RankingRewardStage, OneForwardPerResponseReachesThePairwiseAccuracyWithFewerForwards) {
  TILLER_REQUIRE_SHARED(bin, test::kStoriesBin);
  TILLER_REQUIRE_SHARED(tok, test::kStoriesTok);
  const std::string dir = test::temp_dir("reward_rankings");
  const std::string init = stories_hf_dir(bin, tok);
  write_story_rankings(dir + "/train.jsonl", 240, 11);
  write_story_rankings(dir + "/val.jsonl", 40, 12);
  // Both runs take the same rankings and see the same comparisons per step: 8 rankings of K=4
  // (48 comparisons from 32 forwards) against their 48 pairs (96 forwards).
  const std::string listwise_dir = test::temp_dir("reward_rankings_listwise"),
                    pairs_dir = test::temp_dir("reward_rankings_pairs");
  auto run = [&](const std::string& run_dir, const std::string& rankings, int batch, int steps) {
    RewardStageConfig config;
    Recipe recipe = reward_recipe(run_dir, init,
                                  R"({"name": "rm", "type": "reward", "init": "@base",
        "data": {"train": ")" + dir + R"(/train.jsonl", "val": ")" +
                                      dir +
                                      R"(/val.jsonl", "format": "ranking", "template": "plain"},
        "loss": {"rankings": ")" + rankings +
                                      R"("},
        "train": {"steps": )" + std::to_string(steps) +
                                      R"(, "batch_size": )" + std::to_string(batch) +
                                      R"(, "micro_batch_size": )" + std::to_string(batch / 2) +
                                      R"(, "lr": 0.0005, "warmup_steps": 5, "max_seq_len": 64,
                  "eval_every": 3, "log_every": 3}})",
                                  &config);
    return run_reward_stage(recipe, config);
  };
  const int steps = 30;
  const auto listwise = run(listwise_dir, "instructgpt", 8, steps);
  const auto pairs = run(pairs_dir, "pairs", 48, steps);

  // One forward per response: 4 a ranking, against 2 for each of its 6 pairs.
  EXPECT_EQ(listwise["responses_scored"].get<int64_t>(), steps * 8 * 4);
  EXPECT_EQ(pairs["responses_scored"].get<int64_t>(), steps * 48 * 2);
  EXPECT_EQ(listwise["train_rankings"], 240);
  EXPECT_EQ(listwise["train_comparisons"], 240 * 6);
  EXPECT_EQ(listwise["val_comparisons"], 40 * 6);
  EXPECT_EQ(pairs["val_comparisons"], 40 * 6);
  EXPECT_EQ(listwise["ranking_loss"], "instructgpt");

  const auto listwise_curve = accuracy_by_forwards(listwise_dir + "/run/rm/metrics.jsonl");
  const auto pairs_curve = accuracy_by_forwards(pairs_dir + "/run/rm/metrics.jsonl");
  for (const auto& [label, curve] :
       {std::make_pair("instructgpt", listwise_curve), std::make_pair("pairs", pairs_curve)}) {
    std::string line = std::string("[ rankings ] ") + label + " (forwards: val accuracy):";
    for (const auto& [forwards, accuracy] : curve)
      line += " " + std::to_string(forwards) + ":" + std::to_string(accuracy).substr(0, 5);
    std::printf("%s\n", line.c_str());
  }
  const double target = pairs["val_accuracy"].get<double>();
  EXPECT_GE(target, 0.9) << pairs.dump();
  const int64_t listwise_forwards = forwards_to_reach(listwise_curve, target - 0.02);
  const int64_t pairs_forwards = forwards_to_reach(pairs_curve, target - 0.02);
  ASSERT_GT(listwise_forwards, 0) << listwise.dump();
  EXPECT_LT(listwise_forwards, pairs_forwards);

  // `tiller eval reward --format ranking` scores the validation rankings' comparisons as the
  // stage's final validation did.
  const auto eval =
      evaluate_reward_model(listwise_dir + "/run/rm/final", dir + "/val.jsonl", "ranking");
  EXPECT_EQ(eval.pairs, 40 * 6);
  EXPECT_DOUBLE_EQ(eval.accuracy, listwise["val_accuracy"].get<double>());
  EXPECT_NEAR(eval.margin, listwise["val_margin"].get<double>(), 1e-5);
}

TEST(RankingRewardStage, RankingOptionsAreRefusedWherePairsAreRead) {
  const std::string dir = test::temp_dir("reward_rankings_config");
  test::write_file(dir + "/p.jsonl", R"({"prompt": "Q", "chosen": "a", "rejected": "b"})"
                                     "\n");
  const std::string path = test::write_file(dir + "/r.json", R"({
    "run": {"name": "x", "dir": ")" + dir + R"(/run"}, "base": {"hf": "m"},
    "stages": [{"name": "rm", "type": "reward", "init": "@base",
                "data": {"train": ")" + dir + R"(/p.jsonl", "format": "preference"},
                "loss": {"rankings": "pairs"}},
               {"name": "rm2", "type": "reward", "init": "@base",
                "data": {"train": ")" + dir + R"(/p.jsonl", "format": "oasst"},
                "loss": {"rankings": "listwise"}}]})");
  ConfigErrors errors;
  Recipe recipe = load_recipe(path, {}, errors);
  parse_reward_stage(recipe.stages.at(0), errors);
  const auto oasst = parse_reward_stage(recipe.stages.at(1), errors);
  std::string all;
  for (const auto& e : errors.list()) all += e + "\n";
  EXPECT_NE(all.find("stages[0].loss.rankings: applies to the ranking formats"), std::string::npos)
      << all;
  EXPECT_NE(all.find("stages[1].loss.rankings: "), std::string::npos) << all;
  EXPECT_EQ(all.find("stages[1].data.format"), std::string::npos) << all;
  EXPECT_EQ(oasst.data.format, "oasst");
}
