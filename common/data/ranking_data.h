// Ranking data: K responses to one prompt ranked best to worst (InstructGPT's comparison data),
// from "ranking" records or the Open-Assistant message-tree export, tokenized as the reward model
// scores them, and the conversion of a ranking into its C(K,2) preference pairs.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "common/data/preference_data.h"  // PreferenceConversation, PreferencePair, options

namespace tiller {

class Tokenizer;

// One prompt's ranked responses as conversations. Lower rank is better; equal ranks are ties.
struct RankingConversation {
  std::vector<Message> prompt;
  std::vector<std::vector<Message>> responses;  // each starts and ends with an assistant turn
  std::vector<int64_t> ranks;                   // one per response
  std::string where;                            // file:line (and OASST message id) for errors
};

// One comparison inside a ranking: response `better` is preferred to response `worse`.
struct RankComparison {
  int64_t better;
  int64_t worse;
};

// Every pair of responses with different ranks, better first: C(K,2) less the tied pairs, in the
// order (0,1), (0,2), ..., (1,2), ... of the responses' indices.
std::vector<RankComparison> ranking_comparisons(const std::vector<int64_t>& ranks);

// A ranking as its preference pairs (ranking_comparisons' order, margin 0), so that a pairwise
// loss (or DPO) can train on rankings as all pairs.
std::vector<PreferenceConversation> ranking_pairs(const RankingConversation& ranking);

// A "ranking" record: {"prompt", "responses": [best, ..., worst]} or with "ranks" (integers, lower
// is better, ties allowed). The prompt is a string (a user turn) or a message list; each response
// a string (an assistant turn) or a message list. Throws tiller::Error naming `where` for fewer
// than two responses, two equal responses, ranks that are not integers or not one per response,
// and all responses tied (nothing to compare). Ranks give a total preorder, so they cannot
// contradict one another (no cycle can be written in this format).
RankingConversation ranking_from_record(const nlohmann::json& record, const std::string& where);

struct RankingStats {
  int64_t records = 0;           // records read (OASST: trees, or messages of the flat export)
  int64_t skipped = 0;           // malformed records skipped (skip_bad_lines)
  int64_t rankings = 0;          // rankings kept
  int64_t responses = 0;         // responses in the kept rankings
  int64_t comparisons = 0;       // comparisons in the kept rankings (ties excluded)
  int64_t identical = 0;         // responses dropped: the same sequence as a better one
  int64_t prompt_too_long = 0;   // rankings dropped: the prompt alone exceeds max_seq_len
  int64_t truncated = 0;         // sequences cut to max_seq_len
  int64_t no_comparison = 0;     // rankings dropped: under two ranked responses, or tied
  int64_t deleted_trees = 0;     // OASST: trees whose initial prompt is deleted
  int64_t deleted_messages = 0;  // OASST: deleted replies (their subtrees left out)
  int64_t unranked_replies = 0;  // OASST: assistant replies without a rank
};

// The figures a pair loader also counts (records, skipped, identical, prompt_too_long, truncated).
PreferenceStats as_preference_stats(const RankingStats& stats);

// The rankings of a file in format "ranking" or "oasst", as conversations. OASST: the trees
// export (one {"message_tree_id", "prompt": message} a line, each message with "message_id",
// "role" ("prompter" or "assistant"), "text", "deleted", "rank" and "replies") or the flat
// messages export (one message a line with "parent_id", null at the initial prompt). Each
// prompter message's assistant replies ranked by "rank" form one ranking whose prompt is the
// conversation from the initial prompt to that message. Deleted replies (and what follows them),
// unranked replies and rankings under two ranked replies are left out and counted. Errors (one
// line naming file:line, or skipped and counted with skip_bad_lines): a malformed message, roles
// that do not alternate, a parent missing from a flat export or parent_ids that loop, nesting past
// 1000 turns, and a tree every reply to whose initial prompt is deleted.
std::vector<RankingConversation> read_ranking_conversations(const PreferenceDataOptions& options,
                                                            RankingStats* stats);

// One ranking tokenized: reward_sequences(prompt, its responses), and the ranks.
struct TokenizedRanking {
  std::vector<std::vector<int64_t>> responses;
  std::vector<int64_t> ranks;
  std::vector<int64_t> prompt_tokens;  // per response: its leading tokens that are the prompt's
};

// Reads (read_ranking_conversations), templates and tokenizes a ranking file. A response whose
// sequence equals a better-ranked one's (after truncation) is dropped and counted; a ranking left
// without comparisons, or whose prompt alone exceeds max_seq_len, is dropped and counted. An empty
// result is an error.
std::vector<TokenizedRanking> load_rankings(const PreferenceDataOptions& options,
                                            const Tokenizer& tokenizer, RankingStats* stats);

// A tokenized ranking's comparisons as preference pairs (margin 0, the prompt lengths filled).
std::vector<PreferencePair> ranking_preference_pairs(const TokenizedRanking& ranking);

// Whether `format` names a ranking format ("ranking", "oasst").
bool is_ranking_format(const std::string& format);

// A deterministic split: `fraction` of the rankings (at least one) chosen by seed go to
// validation.
void split_ranking_validation(std::vector<TokenizedRanking>& all, double fraction, uint64_t seed,
                              std::vector<TokenizedRanking>* train,
                              std::vector<TokenizedRanking>* validation);

}  // namespace tiller
