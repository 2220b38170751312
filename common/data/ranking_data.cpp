#include "common/data/ranking_data.h"

#include <algorithm>
#include <functional>
#include <map>
#include <optional>

#include "common/data/batching.h"      // seeded_permutation
#include "common/data/json_records.h"  // read_json_records, string_field
#include "common/data/sft_data.h"      // messages_from_json
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"

namespace tiller {

// ---------------------------------------------------------------------------------------------
// Comparisons

std::vector<RankComparison> ranking_comparisons(const std::vector<int64_t>& ranks) {
  std::vector<RankComparison> out;
  const int64_t k = static_cast<int64_t>(ranks.size());
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = i + 1; j < k; ++j) {
      const int64_t a = ranks[static_cast<size_t>(i)], b = ranks[static_cast<size_t>(j)];
      if (a < b) out.push_back({i, j});
      if (b < a) out.push_back({j, i});
    }
  return out;
}

std::vector<PreferenceConversation> ranking_pairs(const RankingConversation& ranking) {
  std::vector<PreferenceConversation> out;
  for (const auto& c : ranking_comparisons(ranking.ranks)) {
    PreferenceConversation pair;
    pair.prompt = ranking.prompt;
    pair.chosen = ranking.responses[static_cast<size_t>(c.better)];
    pair.rejected = ranking.responses[static_cast<size_t>(c.worse)];
    out.push_back(std::move(pair));
  }
  return out;
}

std::vector<PreferencePair> ranking_preference_pairs(const TokenizedRanking& ranking) {
  std::vector<PreferencePair> out;
  check(ranking.prompt_tokens.size() == ranking.responses.size(),
        "ranking_preference_pairs: one prompt length per response");
  for (const auto& c : ranking_comparisons(ranking.ranks)) {
    const auto better = static_cast<size_t>(c.better), worse = static_cast<size_t>(c.worse);
    out.push_back({ranking.responses[better], ranking.responses[worse], 0.0,
                   ranking.prompt_tokens[better], ranking.prompt_tokens[worse]});
  }
  return out;
}

bool is_ranking_format(const std::string& format) {
  return format == "ranking" || format == "oasst";
}

// ---------------------------------------------------------------------------------------------
// "ranking" records

namespace {

// A prompt or a response: a string (one turn of `string_role`) or a message list.
std::vector<Message> turns_of(const nlohmann::json& value, const char* string_role,
                              const std::string& where, const std::string& field) {
  if (value.is_string()) return {{string_role, value.get<std::string>()}};
  check(value.is_array(),
        where + ": " + field + " must be a string or a list of messages, got " + value.type_name());
  return messages_from_json(value, where, field);
}

bool same_turns(const std::vector<Message>& a, const std::vector<Message>& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](const Message& x, const Message& y) {
    return x.role == y.role && x.content == y.content;
  });
}

std::vector<int64_t> ranks_field(const nlohmann::json& record, size_t responses,
                                 const std::string& where) {
  std::vector<int64_t> ranks;
  auto it = record.find("ranks");
  if (it == record.end() || it->is_null()) {
    for (size_t i = 0; i < responses; ++i) ranks.push_back(static_cast<int64_t>(i));
    return ranks;
  }
  check(it->is_array(), where + ": \"ranks\" must be a list of integers, got " + it->type_name());
  check(it->size() == responses, where + ": \"ranks\" has " + std::to_string(it->size()) +
                                     " entries for " + std::to_string(responses) + " responses");
  for (size_t i = 0; i < it->size(); ++i) {
    const auto& rank = (*it)[i];
    check(rank.is_number_integer(), where + ": ranks[" + std::to_string(i) +
                                        "] must be an integer (lower is better), got " +
                                        rank.dump());
    ranks.push_back(rank.get<int64_t>());
  }
  return ranks;
}

}  // namespace

RankingConversation ranking_from_record(const nlohmann::json& record, const std::string& where) {
  check(record.is_object(), where + ": expected a JSON object");
  RankingConversation r;
  r.where = where;
  auto prompt = record.find("prompt");
  check(prompt != record.end() && !prompt->is_null(), where + ": missing field \"prompt\"");
  r.prompt = turns_of(*prompt, "user", where, "\"prompt\"");
  auto responses = record.find("responses");
  check(responses != record.end() && responses->is_array(),
        where + ": missing field \"responses\" (a list of responses, best first)");
  check(responses->size() >= 2, where + ": a ranking needs at least two responses, got " +
                                    std::to_string(responses->size()));
  for (size_t i = 0; i < responses->size(); ++i) {
    const std::string field = "responses[" + std::to_string(i) + "]";
    r.responses.push_back(turns_of((*responses)[i], "assistant", where, field));
    for (size_t j = 0; j < i; ++j)
      check(!same_turns(r.responses[j], r.responses[i]),
            where + ": responses[" + std::to_string(j) + "] and " + field + " are the same");
  }
  r.ranks = ranks_field(record, r.responses.size(), where);
  check(!ranking_comparisons(r.ranks).empty(),
        where + ": all responses share one rank: the ranking compares nothing");
  return r;
}

// ---------------------------------------------------------------------------------------------
// Open-Assistant export

namespace {

struct OasstMessage {
  std::string id;
  bool prompter = false;  // role "prompter", else "assistant"
  std::string text;
  bool deleted = false;
  std::optional<int64_t> rank;
  std::vector<OasstMessage> replies;
};

// A message's own fields (not its replies). Errors name `where` and the message id.
OasstMessage oasst_message(const nlohmann::json& json, const std::string& where) {
  check(json.is_object(), where + ": an OASST message must be a JSON object");
  OasstMessage m;
  m.id = string_field(json, "message_id", where);
  const std::string at = where + ": message " + m.id;
  const std::string role = string_field(json, "role", at);
  check(role == "prompter" || role == "assistant",
        at + ": role must be \"prompter\" or \"assistant\", got \"" + role + "\"");
  m.prompter = role == "prompter";
  m.text = string_field(json, "text", at);
  if (json.contains("deleted") && !json["deleted"].is_null()) {
    check(json["deleted"].is_boolean(), at + ": \"deleted\" must be true or false");
    m.deleted = json["deleted"].get<bool>();
  }
  if (json.contains("rank") && !json["rank"].is_null()) {
    const auto& rank = json["rank"];
    check(rank.is_number_integer() && rank.get<int64_t>() >= 0,
          at + ": \"rank\" must be a non-negative integer or null, got " + rank.dump());
    m.rank = rank.get<int64_t>();
  }
  return m;
}

// Conversations deeper than this are refused: the tree is read recursively (real trees are a few
// dozen turns deep; a hostile line could nest far enough to overflow the stack).
constexpr int kMaxTreeDepth = 1000;

void check_depth(int depth, const std::string& where, const std::string& id) {
  check(depth <= kMaxTreeDepth, where + ": message " + id + " is nested deeper than " +
                                    std::to_string(kMaxTreeDepth) + " turns");
}

// A message and its nested "replies" (the trees export).
OasstMessage oasst_subtree(const nlohmann::json& json, const std::string& where, int depth = 0) {
  OasstMessage m = oasst_message(json, where);
  check_depth(depth, where, m.id);
  auto replies = json.find("replies");
  if (replies == json.end() || replies->is_null()) return m;
  check(replies->is_array(), where + ": message " + m.id + ": \"replies\" must be a list");
  for (const auto& reply : *replies) m.replies.push_back(oasst_subtree(reply, where, depth + 1));
  return m;
}

// The flat messages export rebuilt into trees: messages linked to their parents by id.
struct FlatTree {
  OasstMessage root;
  std::string where;
};

// Messages no initial prompt reaches either descend from a missing parent (already reported) or
// from a loop of parent_ids (a cycle: an error here). parents[i]: i's parent index, or -1 when it
// has none in the file.
void check_no_parent_cycle(const std::vector<int64_t>& parents, const std::vector<bool>& reached,
                           bool skip_bad, RankingStats& stats,
                           const std::function<std::string(size_t)>& where) {
  enum Fate : char { kUnknown, kSettled, kOnPath };
  std::vector<Fate> fate(parents.size(), kUnknown);
  for (size_t i = 0; i < parents.size(); ++i)
    if (reached[i]) fate[i] = kSettled;
  for (size_t i = 0; i < parents.size(); ++i) {
    std::vector<size_t> path;
    int64_t at = static_cast<int64_t>(i);
    while (at >= 0 && fate[static_cast<size_t>(at)] == kUnknown) {
      fate[static_cast<size_t>(at)] = kOnPath;
      path.push_back(static_cast<size_t>(at));
      at = parents[static_cast<size_t>(at)];
    }
    const bool cycle = at >= 0 && fate[static_cast<size_t>(at)] == kOnPath;
    for (size_t p : path) fate[p] = kSettled;
    if (!cycle) continue;
    if (!skip_bad)
      throw Error(where(static_cast<size_t>(at)) + ": its parent_id chain loops back to it");
    ++stats.skipped;
  }
}

std::vector<FlatTree> link_flat_messages(const std::vector<JsonRecord>& records, bool skip_bad,
                                         RankingStats& stats) {
  struct Flat {
    OasstMessage message;
    std::string parent_id;  // "" at an initial prompt
    std::string where;
  };
  std::vector<Flat> flat;
  std::map<std::string, size_t> index_of;
  for (const auto& record : records) {
    try {
      Flat f{oasst_message(record.value, record.where), "", record.where};
      check(record.value.contains("parent_id"),
            record.where + ": neither a message tree (\"prompt\") nor a message (\"parent_id\")");
      if (!record.value["parent_id"].is_null())
        f.parent_id = string_field(record.value, "parent_id", record.where);
      check(index_of.emplace(f.message.id, flat.size()).second,
            record.where + ": message " + f.message.id + " appears twice");
      flat.push_back(std::move(f));
    } catch (const Error&) {
      if (!skip_bad) throw;
      ++stats.skipped;
    }
  }
  std::vector<std::vector<size_t>> children(flat.size());
  std::vector<int64_t> parents(flat.size(), -1);
  std::vector<size_t> roots;
  for (size_t i = 0; i < flat.size(); ++i) {
    if (flat[i].parent_id.empty()) {
      roots.push_back(i);
      continue;
    }
    auto parent = index_of.find(flat[i].parent_id);
    if (parent == index_of.end()) {
      if (!skip_bad)
        throw Error(flat[i].where + ": message " + flat[i].message.id + ": its parent " +
                    flat[i].parent_id + " is not in the file (an incomplete messages export)");
      ++stats.skipped;  // the message and the replies below it are unreachable
      continue;
    }
    children[parent->second].push_back(i);
    parents[i] = static_cast<int64_t>(parent->second);
  }
  // Depth first from each initial prompt; a message reaches its replies only through its parent.
  std::vector<bool> reached(flat.size(), false);
  std::function<OasstMessage(size_t, int)> build = [&](size_t i, int depth) {
    check_depth(depth, flat[i].where, flat[i].message.id);
    reached[i] = true;
    OasstMessage m = std::move(flat[i].message);
    for (size_t child : children[i]) m.replies.push_back(build(child, depth + 1));
    return m;
  };
  std::vector<FlatTree> trees;
  for (size_t root : roots) {
    try {
      trees.push_back({build(root, 0), flat[root].where});
    } catch (const Error&) {
      if (!skip_bad) throw;
      ++stats.skipped;
    }
  }
  check_no_parent_cycle(parents, reached, skip_bad, stats, [&](size_t i) {
    return flat[i].where + ": message " + flat[i].message.id;
  });
  return trees;
}

// Walks a tree from a prompter message: its ranked assistant replies form one ranking (kept when
// it compares anything), then each kept reply's prompter replies continue the conversation.
void collect_rankings(const OasstMessage& prompter, std::vector<Message> conversation,
                      const std::string& where, RankingStats& stats,
                      std::vector<RankingConversation>& out) {
  conversation.push_back({"user", prompter.text});
  RankingConversation ranking;
  ranking.prompt = conversation;
  ranking.where = where + ": message " + prompter.id;
  std::vector<const OasstMessage*> kept;
  for (const OasstMessage& reply : prompter.replies) {
    check(!reply.prompter, where + ": message " + reply.id + " is a prompter reply to prompter " +
                               "message " + prompter.id + " (roles must alternate)");
    if (reply.deleted) {
      ++stats.deleted_messages;
      continue;
    }
    kept.push_back(&reply);
    if (!reply.rank) {
      ++stats.unranked_replies;
      continue;
    }
    ranking.responses.push_back({{"assistant", reply.text}});
    ranking.ranks.push_back(*reply.rank);
  }
  if (!prompter.replies.empty()) {  // a leaf ranks nothing and is not counted
    if (ranking_comparisons(ranking.ranks).empty())
      ++stats.no_comparison;
    else
      out.push_back(std::move(ranking));
  }
  for (const OasstMessage* reply : kept) {
    std::vector<Message> next = conversation;
    next.push_back({"assistant", reply->text});
    for (const OasstMessage& turn : reply->replies) {
      check(turn.prompter, where + ": message " + turn.id + " is an assistant reply to " +
                               "assistant message " + reply->id + " (roles must alternate)");
      if (turn.deleted) {
        ++stats.deleted_messages;
        continue;
      }
      collect_rankings(turn, next, where, stats, out);
    }
  }
}

// One tree's rankings; the tree's mistakes throw (so that skip_bad_lines drops the whole tree).
std::vector<RankingConversation> tree_rankings(const OasstMessage& root, const std::string& where,
                                               RankingStats& stats) {
  check(root.prompter, where + ": the initial prompt " + root.id + " has role \"assistant\"");
  if (root.deleted) {
    ++stats.deleted_trees;
    return {};
  }
  const bool all_deleted =
      !root.replies.empty() && std::all_of(root.replies.begin(), root.replies.end(),
                                           [](const OasstMessage& m) { return m.deleted; });
  check(!all_deleted, where + ": every reply to the initial prompt " + root.id +
                          " is deleted: the tree holds no conversation (filter deleted trees "
                          "out, or use skip_bad_lines)");
  RankingStats local;
  std::vector<RankingConversation> out;
  collect_rankings(root, {}, where, local, out);
  stats.deleted_messages += local.deleted_messages;
  stats.unranked_replies += local.unranked_replies;
  stats.no_comparison += local.no_comparison;
  return out;
}

std::vector<RankingConversation> oasst_rankings(const std::vector<JsonRecord>& records,
                                                bool skip_bad, RankingStats& stats) {
  std::vector<FlatTree> trees;
  std::vector<JsonRecord> messages;
  for (const auto& record : records) {
    const bool is_tree = record.value.is_object() && record.value.contains("prompt");
    if (!is_tree) {
      messages.push_back(record);
      continue;
    }
    try {
      trees.push_back({oasst_subtree(record.value["prompt"], record.where), record.where});
    } catch (const Error&) {
      if (!skip_bad) throw;
      ++stats.skipped;
    }
  }
  if (!messages.empty())
    for (auto& tree : link_flat_messages(messages, skip_bad, stats))
      trees.push_back(std::move(tree));
  std::vector<RankingConversation> out;
  for (const auto& tree : trees) {
    try {
      for (auto& ranking : tree_rankings(tree.root, tree.where, stats))
        out.push_back(std::move(ranking));
    } catch (const Error&) {
      if (!skip_bad) throw;
      ++stats.skipped;
    }
  }
  return out;
}

}  // namespace

std::vector<RankingConversation> read_ranking_conversations(const PreferenceDataOptions& o,
                                                            RankingStats* stats) {
  check(is_ranking_format(o.format),
        "unknown ranking data format '" + o.format + "' (ranking, oasst)");
  RecordReadOptions read;
  read.skip_bad_lines = o.skip_bad_lines;
  read.max_records = o.max_records;
  auto records = read_json_records(o.path, read);
  RankingStats s;
  s.skipped = records.skipped;
  s.records = static_cast<int64_t>(records.records.size());
  std::vector<RankingConversation> out;
  if (o.format == "oasst") {
    out = oasst_rankings(records.records, o.skip_bad_lines, s);
  } else {
    for (const auto& r : records.records) {
      try {
        out.push_back(ranking_from_record(r.value, r.where));
      } catch (const Error&) {
        if (!o.skip_bad_lines) throw;
        ++s.skipped;
      }
    }
  }
  if (stats) *stats = s;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Tokenized rankings

namespace {

// The ranking's sequences; a response equal to a better-ranked one (after truncation) is dropped.
// Returns false (and counts why) when the ranking is dropped.
bool tokenize_ranking(const RankingConversation& c, const PreferenceDataOptions& o,
                      const Tokenizer& tok, RankingStats& s, TokenizedRanking* out) {
  const auto prompt_ids = tokenize_prompt(tok, o.template_name, c.prompt);
  std::vector<std::vector<int64_t>> response_ids;
  for (size_t i = 0; i < c.responses.size(); ++i)
    response_ids.push_back(tokenize_response(tok, o.template_name, c.prompt, c.responses[i],
                                             c.where + ": responses[" + std::to_string(i) + "]"));
  if (static_cast<int64_t>(prompt_ids.size()) > o.max_seq_len) {
    ++s.prompt_too_long;
    return false;
  }
  std::vector<size_t> best_first(c.responses.size());
  for (size_t i = 0; i < best_first.size(); ++i) best_first[i] = i;
  std::stable_sort(best_first.begin(), best_first.end(),
                   [&](size_t a, size_t b) { return c.ranks[a] < c.ranks[b]; });
  // One prompt cut for every response, so that they are compared after the same context.
  auto sequences = reward_sequences(prompt_ids, response_ids, tok.eos_id(), o.max_seq_len);
  int64_t truncated = 0;
  for (size_t i : best_first) {
    auto& sequence = sequences[i];
    if (std::find(out->responses.begin(), out->responses.end(), sequence.tokens) !=
        out->responses.end()) {
      ++s.identical;
      continue;
    }
    truncated += sequence.truncated ? 1 : 0;
    out->responses.push_back(std::move(sequence.tokens));
    out->ranks.push_back(c.ranks[i]);
    out->prompt_tokens.push_back(sequence.prompt_tokens);
  }
  const int64_t comparisons = static_cast<int64_t>(ranking_comparisons(out->ranks).size());
  if (comparisons == 0) {
    ++s.no_comparison;
    return false;
  }
  s.truncated += truncated;
  s.responses += static_cast<int64_t>(out->responses.size());
  s.comparisons += comparisons;
  return true;
}

}  // namespace

std::vector<TokenizedRanking> load_rankings(const PreferenceDataOptions& o, const Tokenizer& tok,
                                            RankingStats* stats) {
  check(is_chat_template(o.template_name), "unknown chat template '" + o.template_name + "'");
  check(o.max_seq_len >= 2, "max_seq_len must be at least 2");
  RankingStats s;
  const auto conversations = read_ranking_conversations(o, &s);
  std::vector<TokenizedRanking> out;
  for (const auto& c : conversations) {
    TokenizedRanking ranking;
    try {
      if (!tokenize_ranking(c, o, tok, s, &ranking)) continue;
    } catch (const Error&) {
      if (!o.skip_bad_lines) throw;
      ++s.skipped;
      continue;
    }
    out.push_back(std::move(ranking));
  }
  s.rankings = static_cast<int64_t>(out.size());
  if (stats) *stats = s;
  check(!out.empty(), o.path + ": no usable rankings (" + std::to_string(s.records) +
                          " records: " + std::to_string(s.no_comparison) +
                          " without two ranked responses to compare, " +
                          std::to_string(s.prompt_too_long) + " with a prompt over max_seq_len " +
                          std::to_string(o.max_seq_len) + ", " + std::to_string(s.skipped) +
                          " bad lines skipped)");
  return out;
}

void split_ranking_validation(std::vector<TokenizedRanking>& all, double fraction, uint64_t seed,
                              std::vector<TokenizedRanking>* train,
                              std::vector<TokenizedRanking>* validation) {
  const int64_t n = static_cast<int64_t>(all.size());
  const std::vector<bool> is_val =
      validation_choice(n, fraction, seed ^ 0x9e3779b97f4a7c15ull, "rankings");
  for (int64_t i = 0; i < n; ++i)
    (is_val[static_cast<size_t>(i)] ? validation : train)
        ->push_back(std::move(all[static_cast<size_t>(i)]));
  all.clear();
}

PreferenceStats as_preference_stats(const RankingStats& r) {
  PreferenceStats s;
  s.records = r.records;
  s.skipped = r.skipped;
  s.identical = r.identical;
  s.prompt_too_long = r.prompt_too_long;
  s.truncated = r.truncated;
  return s;
}

}  // namespace tiller
