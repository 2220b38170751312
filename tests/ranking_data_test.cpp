// Ranking data: comparisons of a ranking (ties skipped), "ranking" records and their bad input,
// the Open-Assistant export (trees and flat messages) on a hand-made tree, tokenization, and the
// conversion of a ranking into its pairs.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "common/data/ranking_data.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

std::string write_lines(const std::string& path, const std::vector<std::string>& lines) {
  std::ofstream out(path);
  for (const auto& line : lines) out << line << "\n";
  return path;
}

// A ranking's comparisons as "better>worse" by the responses' last turn text, sorted (a flat
// export lists replies in no set order).
std::vector<std::string> comparisons_text(const RankingConversation& r) {
  std::vector<std::string> out;
  for (const auto& c : ranking_comparisons(r.ranks))
    out.push_back(r.responses[static_cast<size_t>(c.better)].back().content + ">" +
                  r.responses[static_cast<size_t>(c.worse)].back().content);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> contents(const std::vector<Message>& turns) {
  std::vector<std::string> out;
  for (const auto& m : turns) out.push_back(m.role + ":" + m.content);
  return out;
}

PreferenceDataOptions options(const std::string& path, const std::string& format) {
  PreferenceDataOptions o;
  o.path = path;
  o.format = format;
  o.template_name = "plain";
  o.max_seq_len = 64;
  return o;
}

// A hand-made Open-Assistant tree. P0's replies: A1 (rank 0), A2 and A3 (tied at rank 1), A4
// (deleted, with a reply of its own) and A5 (unranked). Under A1, P1's replies: A11 (rank 1), A12
// and A13 (tied at rank 0), A14 (deleted). Under the unranked A5, P2 has one ranked reply A51.
nlohmann::json oasst_message(const std::string& id, const std::string& role,
                             nlohmann::json rank = nullptr, bool deleted = false,
                             nlohmann::json replies = nlohmann::json::array()) {
  return {{"message_id", id},   {"role", role}, {"text", "text of " + id}, {"lang", "en"},
          {"deleted", deleted}, {"rank", rank}, {"replies", replies},      {"synthetic", false}};
}

nlohmann::json hand_made_tree() {
  using J = nlohmann::json;
  J p1 = oasst_message(
      "P1", "prompter", nullptr, false,
      J::array({oasst_message("A11", "assistant", 1), oasst_message("A12", "assistant", 0),
                oasst_message("A13", "assistant", 0),
                oasst_message("A14", "assistant", nullptr, true)}));
  J p2 = oasst_message("P2", "prompter", nullptr, false,
                       J::array({oasst_message("A51", "assistant", 0)}));
  J root = oasst_message(
      "P0", "prompter", nullptr, false,
      J::array({oasst_message("A1", "assistant", 0, false, J::array({p1})),
                oasst_message("A2", "assistant", 1), oasst_message("A3", "assistant", 1),
                oasst_message(
                    "A4", "assistant", nullptr, true,
                    J::array({oasst_message("P4", "prompter", nullptr, false,
                                            J::array({oasst_message("A41", "assistant", 0),
                                                      oasst_message("A42", "assistant", 1)}))})),
                oasst_message("A5", "assistant", nullptr, false, J::array({p2}))}));
  return {{"message_tree_id", "P0"}, {"tree_state", "ready_for_export"}, {"prompt", root}};
}

// The same tree as the flat messages export: one message a line with parent_id, in `order`.
std::vector<std::string> flatten(const nlohmann::json& message, const nlohmann::json& parent_id) {
  nlohmann::json flat = message;
  flat.erase("replies");
  flat["parent_id"] = parent_id;
  flat["message_tree_id"] = "P0";
  std::vector<std::string> lines = {flat.dump()};
  for (const auto& reply : message["replies"])
    for (auto& line : flatten(reply, message["message_id"])) lines.push_back(line);
  return lines;
}

void expect_hand_made_rankings(const std::vector<RankingConversation>& rankings,
                               const RankingStats& stats) {
  ASSERT_EQ(rankings.size(), 2u);
  const RankingConversation* first = &rankings[0];
  const RankingConversation* nested = &rankings[1];
  if (first->prompt.size() > nested->prompt.size()) std::swap(first, nested);
  EXPECT_EQ(contents(first->prompt), std::vector<std::string>({"user:text of P0"}));
  EXPECT_EQ(comparisons_text(*first),
            std::vector<std::string>({"text of A1>text of A2", "text of A1>text of A3"}));
  EXPECT_EQ(
      contents(nested->prompt),
      std::vector<std::string>({"user:text of P0", "assistant:text of A1", "user:text of P1"}));
  EXPECT_EQ(comparisons_text(*nested),
            std::vector<std::string>({"text of A12>text of A11", "text of A13>text of A11"}));
  EXPECT_EQ(stats.deleted_messages, 2);  // A4 (its subtree unread) and A14
  EXPECT_EQ(stats.unranked_replies, 1);  // A5 (its subtree still read)
  EXPECT_EQ(stats.no_comparison, 1);     // P2: one ranked reply
}

}  // namespace

TEST(RankingComparisons, AreAllPairsOfDifferentRanksBetterFirst) {
  std::vector<std::pair<int64_t, int64_t>> got;
  for (const auto& c : ranking_comparisons({0, 1, 1, 2})) got.push_back({c.better, c.worse});
  EXPECT_EQ(got,
            (std::vector<std::pair<int64_t, int64_t>>{{0, 1}, {0, 2}, {0, 3}, {1, 3}, {2, 3}}));
  got.clear();
  for (const auto& c : ranking_comparisons({2, 0, 1})) got.push_back({c.better, c.worse});
  EXPECT_EQ(got, (std::vector<std::pair<int64_t, int64_t>>{{1, 0}, {2, 0}, {1, 2}}));
  EXPECT_EQ(ranking_comparisons({0, 1, 2, 3}).size(), 6u);  // C(4,2)
  EXPECT_TRUE(ranking_comparisons({3, 3}).empty());
}

TEST(RankingData, RecordsGiveTheirRankingsAndPairs) {
  auto best_first = ranking_from_record(
      nlohmann::json::parse(R"({"prompt": "Q", "responses": ["best", "middle", "worst"]})"), "f:1");
  EXPECT_EQ(best_first.ranks, (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(contents(best_first.prompt), std::vector<std::string>({"user:Q"}));
  auto pairs = ranking_pairs(best_first);
  ASSERT_EQ(pairs.size(), 3u);
  std::vector<std::string> got;
  for (const auto& p : pairs) {
    EXPECT_EQ(contents(p.prompt), std::vector<std::string>({"user:Q"}));
    got.push_back(p.chosen.back().content + ">" + p.rejected.back().content);
  }
  EXPECT_EQ(got, std::vector<std::string>({"best>middle", "best>worst", "middle>worst"}));

  // Explicit ranks with a tie, a message-list prompt and a multi-turn response.
  auto ranked = ranking_from_record(nlohmann::json::parse(R"({
      "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
      "responses": ["a", [{"role": "assistant", "content": "b1"}, {"role": "user", "content": "u"},
                          {"role": "assistant", "content": "b2"}], "c"],
      "ranks": [2, 1, 1]})"),
                                    "f:2");
  EXPECT_EQ(contents(ranked.prompt), std::vector<std::string>({"system:S", "user:Q"}));
  EXPECT_EQ(ranked.responses[1].size(), 3u);
  EXPECT_EQ(comparisons_text(ranked), std::vector<std::string>({"b2>a", "c>a"}));
  EXPECT_EQ(ranking_pairs(ranked).size(), 2u);  // the tie b/c is no pair
}

TEST(RankingData, BadRecordsAreOneLineNamingFileAndLine) {
  const std::string dir = test::temp_dir("ranking_bad");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"prompt": "Q", "responses": ["only"]})",
       "a ranking needs at least two responses, got 1"},
      {R"({"prompt": "Q", "responses": ["a", "b", "a"]})",
       "responses[0] and responses[2] are the same"},
      {R"({"prompt": "Q", "responses": ["a", "b"], "ranks": [0]})",
       "\"ranks\" has 1 entries for 2 responses"},
      {R"({"prompt": "Q", "responses": ["a", "b"], "ranks": [0, 1.5]})",
       "ranks[1] must be an integer"},
      {R"({"prompt": "Q", "responses": ["a", "b"], "ranks": [0, "1"]})",
       "ranks[1] must be an integer"},
      {R"({"prompt": "Q", "responses": ["a", "b"], "ranks": [4, 4]})",
       "all responses share one rank"},
      {R"({"responses": ["a", "b"]})", "missing field \"prompt\""},
      {R"({"prompt": "Q", "chosen": "a", "rejected": "b"})", "missing field \"responses\""}};
  const std::string good = R"({"prompt": "Q", "responses": ["a", "b"]})";
  for (const auto& [line, message] : cases) {
    const std::string path = write_lines(dir + "/r.jsonl", {good, line});
    const std::string error =
        test::error_of([&] { read_ranking_conversations(options(path, "ranking"), nullptr); });
    EXPECT_EQ(error.find(path + ":2: "), 0u) << error;
    EXPECT_NE(error.find(message), std::string::npos) << error;
    EXPECT_EQ(error.find('\n'), std::string::npos) << error;
  }
  // skip_bad_lines: every bad line skipped and counted, the good one kept.
  std::vector<std::string> lines = {good};
  for (const auto& c : cases) lines.push_back(c.first);
  auto o = options(write_lines(dir + "/all.jsonl", lines), "ranking");
  o.skip_bad_lines = true;
  RankingStats stats;
  EXPECT_EQ(read_ranking_conversations(o, &stats).size(), 1u);
  EXPECT_EQ(stats.skipped, static_cast<int64_t>(cases.size()));
}

TEST(RankingData, OasstTreeGivesTheExpectedComparisons) {
  const std::string dir = test::temp_dir("ranking_oasst");
  nlohmann::json deleted_tree = hand_made_tree();
  deleted_tree["prompt"]["deleted"] = true;
  const std::string path =
      write_lines(dir + "/trees.jsonl", {hand_made_tree().dump(), deleted_tree.dump()});
  RankingStats stats;
  auto rankings = read_ranking_conversations(options(path, "oasst"), &stats);
  expect_hand_made_rankings(rankings, stats);
  EXPECT_EQ(stats.deleted_trees, 1);
  EXPECT_EQ(stats.records, 2);

  // The flat messages export of the same tree, children before parents: the same rankings.
  auto lines = flatten(hand_made_tree()["prompt"], nullptr);
  std::reverse(lines.begin(), lines.end());
  RankingStats flat_stats;
  auto flat = read_ranking_conversations(
      options(write_lines(dir + "/messages.jsonl", lines), "oasst"), &flat_stats);
  expect_hand_made_rankings(flat, flat_stats);
  EXPECT_EQ(flat_stats.records, static_cast<int64_t>(lines.size()));
}

TEST(RankingData, OasstBadTreesAreErrorsOrCountedSkips) {
  const std::string dir = test::temp_dir("ranking_oasst_bad");
  // A flat export whose message names a parent that is not in the file.
  auto lines = flatten(hand_made_tree()["prompt"], nullptr);
  nlohmann::json orphan = nlohmann::json::parse(lines[1]);
  orphan["parent_id"] = "gone";
  orphan["message_id"] = "orphan";
  lines.push_back(orphan.dump());
  const std::string flat_path = write_lines(dir + "/messages.jsonl", lines);
  std::string error =
      test::error_of([&] { read_ranking_conversations(options(flat_path, "oasst"), nullptr); });
  EXPECT_EQ(error, flat_path + ":" + std::to_string(lines.size()) +
                       ": message orphan: its parent gone is not in the file (an incomplete "
                       "messages export)");
  // A tree whose every reply is deleted.
  nlohmann::json all_deleted = hand_made_tree();
  for (auto& reply : all_deleted["prompt"]["replies"]) reply["deleted"] = true;
  // Roles that do not alternate.
  nlohmann::json two_prompters = hand_made_tree();
  two_prompters["prompt"]["replies"][1]["role"] = "prompter";
  const std::string tree_path = write_lines(
      dir + "/trees.jsonl", {hand_made_tree().dump(), all_deleted.dump(), two_prompters.dump()});
  error = test::error_of([&] { read_ranking_conversations(options(tree_path, "oasst"), nullptr); });
  EXPECT_EQ(error.find(tree_path + ":2: every reply to the initial prompt P0 is deleted"), 0u)
      << error;
  // With skip_bad_lines both bad trees (and the orphan) are skipped and counted; the good tree
  // still gives its rankings.
  auto o = options(tree_path, "oasst");
  o.skip_bad_lines = true;
  RankingStats stats;
  EXPECT_EQ(read_ranking_conversations(o, &stats).size(), 2u);
  EXPECT_EQ(stats.skipped, 2);
  o.path = flat_path;
  EXPECT_EQ(read_ranking_conversations(o, &stats).size(), 2u);
  EXPECT_EQ(stats.skipped, 1);
  // Messages whose parent_ids loop (never reached from an initial prompt).
  auto looped = flatten(hand_made_tree()["prompt"], nullptr);
  looped.push_back(R"({"message_id": "X", "parent_id": "Y", "role": "prompter", "text": "x"})");
  looped.push_back(R"({"message_id": "Y", "parent_id": "X", "role": "assistant", "text": "y"})");
  const std::string loop_path = write_lines(dir + "/loop.jsonl", looped);
  error = test::error_of([&] { read_ranking_conversations(options(loop_path, "oasst"), nullptr); });
  EXPECT_EQ(error, loop_path + ":" + std::to_string(looped.size() - 1) +
                       ": message X: its parent_id chain loops back to it");
  // A conversation nested deeper than the reader recurses.
  nlohmann::json deep = oasst_message("D0", "prompter");
  nlohmann::json* leaf = &deep;
  for (int depth = 1; depth <= 1001; ++depth) {
    (*leaf)["replies"].push_back(
        oasst_message("D" + std::to_string(depth), depth % 2 ? "assistant" : "prompter", 0));
    leaf = &(*leaf)["replies"][0];
  }
  const std::string deep_path =
      write_lines(dir + "/deep.jsonl", {nlohmann::json{{"prompt", deep}}.dump()});
  error = test::error_of([&] { read_ranking_conversations(options(deep_path, "oasst"), nullptr); });
  EXPECT_EQ(error, deep_path + ":1: message D1001 is nested deeper than 1000 turns");
  // Without skip_bad_lines, the non-alternating tree alone.
  const std::string roles_path = write_lines(dir + "/roles.jsonl", {two_prompters.dump()});
  error =
      test::error_of([&] { read_ranking_conversations(options(roles_path, "oasst"), nullptr); });
  EXPECT_EQ(error, roles_path +
                       ":1: message A2 is a prompter reply to prompter message P0 (roles "
                       "must alternate)");
}

TEST(RankingData, TokenizedRankingsDropDuplicateSequencesAndExpandToPairs) {
  TILLER_REQUIRE_SHARED(tok_path, test::kStoriesTok);
  Tokenizer tok(tok_path);
  const std::string dir = test::temp_dir("ranking_tokenized");
  // The second ranking's two worst responses differ only past max_seq_len: after truncation the
  // worse is dropped as identical. The third compares nothing once that happens.
  const std::string long_tail(200, 'x');
  const std::string path = write_lines(
      dir + "/r.jsonl",
      {R"({"prompt": "Tell me a story.", "responses": ["Tom was happy.", "Tom was sad.", "Tom was tired.", "Tom was bored."]})",
       R"({"prompt": "Q", "responses": ["good", "bad )" + long_tail + R"(1", "bad )" + long_tail +
           R"(2"]})",
       R"({"prompt": "Q", "responses": ["same )" + long_tail + R"(1", "same )" + long_tail +
           R"(2"]})"});
  auto o = options(path, "ranking");
  o.max_seq_len = 24;
  RankingStats stats;
  auto rankings = load_rankings(o, tok, &stats);
  ASSERT_EQ(rankings.size(), 2u);
  EXPECT_EQ(stats.identical, 2);
  EXPECT_EQ(stats.no_comparison, 1);
  EXPECT_EQ(stats.comparisons, 6 + 1);
  EXPECT_EQ(stats.responses, 4 + 2);
  const auto prompt_ids = tokenize_prompt(tok, "plain", {{"user", "Tell me a story."}});
  auto expected = prompt_ids;
  for (int64_t id : tok.encode("Tom was tired.")) expected.push_back(id);
  expected.push_back(tok.eos_id());
  EXPECT_EQ(rankings[0].responses[2], expected);
  // As pairs: C(4,2) = 6, best first, the same sequences.
  auto pairs = ranking_preference_pairs(rankings[0]);
  ASSERT_EQ(pairs.size(), 6u);
  EXPECT_EQ(pairs[0].chosen, rankings[0].responses[0]);
  EXPECT_EQ(pairs[5].chosen, rankings[0].responses[2]);
  EXPECT_EQ(pairs[5].rejected, rankings[0].responses[3]);
}
