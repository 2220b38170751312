#include "common/data/preference_data.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/data/batching.h"      // seeded_permutation
#include "common/data/json_records.h"  // read_json_records, string_field
#include "common/data/sft_data.h"      // messages_from_json
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"

namespace tiller {

namespace {

const char* const kHuman = "\n\nHuman:";
const char* const kAssistant = "\n\nAssistant:";

std::string trim(const std::string& s) {
  const size_t begin = s.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "";
  const size_t end = s.find_last_not_of(" \t\r\n");
  return s.substr(begin, end - begin + 1);
}

// A side or a prompt: a string (as `string_role`) or a message list.
std::vector<Message> turns_field(const nlohmann::json& record, const char* key,
                                 const char* string_role, const std::string& where) {
  auto it = record.find(key);
  check(it != record.end() && !it->is_null(), where + ": missing field \"" + key + "\"");
  if (it->is_string()) return {{string_role, it->get<std::string>()}};
  check(it->is_array(), where + ": field \"" + key +
                            "\" must be a string or a list of messages, got " + it->type_name());
  return messages_from_json(*it, where, key);
}

bool same(const Message& a, const Message& b) {
  return a.role == b.role && a.content == b.content;
}

// A side that repeats the prompt turns before its own (some conversational datasets do) loses them.
void strip_prompt(std::vector<Message>& side, const std::vector<Message>& prompt) {
  if (prompt.empty() || side.size() <= prompt.size()) return;
  for (size_t i = 0; i < prompt.size(); ++i)
    if (!same(side[i], prompt[i])) return;
  side.erase(side.begin(), side.begin() + static_cast<std::ptrdiff_t>(prompt.size()));
}

double margin_field(const nlohmann::json& record, const std::string& where) {
  auto it = record.find("margin");
  if (it == record.end() || it->is_null()) return 0.0;
  check(it->is_number(), where + ": field \"margin\" must be a number, got " + it->type_name());
  const double margin = it->get<double>();
  check(std::isfinite(margin), where + ": field \"margin\" is not finite");
  return margin;
}

}  // namespace

std::vector<Message> parse_hh_dialogue(const std::string& text, const std::string& where) {
  // Accept a dialogue that starts with "Human:" without the leading blank line.
  const std::string t = text.rfind("Human:", 0) == 0 ? "\n\n" + text : text;
  std::vector<Message> out;
  size_t pos = 0;
  std::string role;
  auto next_marker = [&](size_t from, std::string* next_role, size_t* length) {
    const size_t h = t.find(kHuman, from), a = t.find(kAssistant, from);
    if (h == std::string::npos && a == std::string::npos) return std::string::npos;
    const bool human = h < a;
    *next_role = human ? "user" : "assistant";
    *length = human ? std::strlen(kHuman) : std::strlen(kAssistant);
    return human ? h : a;
  };
  size_t length = 0;
  size_t marker = next_marker(0, &role, &length);
  check(marker != std::string::npos,
        where + ": not an HH dialogue (no \"\\n\\nHuman:\" or \"\\n\\nAssistant:\" turns)");
  check(trim(t.substr(0, marker)).empty(),
        where + ": HH dialogue has text before its first \"\\n\\nHuman:\" turn");
  while (marker != std::string::npos) {
    pos = marker + length;
    std::string next_role;
    size_t next_length = 0;
    const size_t next = next_marker(pos, &next_role, &next_length);
    const size_t end = next == std::string::npos ? t.size() : next;
    out.push_back({role, trim(t.substr(pos, end - pos))});
    role = next_role;
    length = next_length;
    marker = next;
  }
  return out;
}

PreferenceConversation preference_from_record(const nlohmann::json& record,
                                              const std::string& format, const std::string& where) {
  check(record.is_object(), where + ": expected a JSON object");
  PreferenceConversation c;
  if (format == "hh") {
    const std::string chosen = string_field(record, "chosen", where);
    const std::string rejected = string_field(record, "rejected", where);
    // The prompt: the text both share, up to its last "\n\nAssistant:" (a reply may share its
    // first words; a few HH records differ earlier than the final turn).
    size_t shared = 0;
    while (shared < chosen.size() && shared < rejected.size() && chosen[shared] == rejected[shared])
      ++shared;
    const size_t at = chosen.rfind(kAssistant, shared >= std::strlen(kAssistant)
                                                   ? shared - std::strlen(kAssistant)
                                                   : std::string::npos);
    check(at != std::string::npos && shared >= std::strlen(kAssistant),
          where +
              ": \"chosen\" and \"rejected\" share no dialogue up to an \"\\n\\nAssistant:\" turn");
    const std::string prompt_text = chosen.substr(0, at + std::strlen(kAssistant));
    c.prompt = parse_hh_dialogue(prompt_text, where);
    // The prompt ends with the empty assistant turn its final header opens.
    check(
        !c.prompt.empty() && c.prompt.back().role == "assistant" && c.prompt.back().content.empty(),
        where + ": malformed HH dialogue");
    c.prompt.pop_back();
    c.chosen = {{"assistant", trim(chosen.substr(prompt_text.size()))}};
    c.rejected = {{"assistant", trim(rejected.substr(prompt_text.size()))}};
  } else if (format == "preference") {
    c.chosen = turns_field(record, "chosen", "assistant", where);
    c.rejected = turns_field(record, "rejected", "assistant", where);
    if (record.contains("prompt") && !record["prompt"].is_null()) {
      c.prompt = turns_field(record, "prompt", "user", where);
      strip_prompt(c.chosen, c.prompt);
      strip_prompt(c.rejected, c.prompt);
    } else {
      check(record["chosen"].is_array() && record["rejected"].is_array(),
            where + ": missing field \"prompt\" (without it, chosen and rejected must be message " +
                "lists sharing their prompt turns; for whole HH dialogues use format \"hh\")");
      // Implicit prompt: the turns both sides share, up to the last shared one before an
      // assistant reply.
      size_t shared = 0;
      while (shared < c.chosen.size() && shared < c.rejected.size() &&
             same(c.chosen[shared], c.rejected[shared]))
        ++shared;
      while (shared > 0 && (shared >= c.chosen.size() || c.chosen[shared].role != "assistant" ||
                            shared >= c.rejected.size() || c.rejected[shared].role != "assistant"))
        --shared;
      c.prompt.assign(c.chosen.begin(), c.chosen.begin() + static_cast<std::ptrdiff_t>(shared));
      c.chosen.erase(c.chosen.begin(), c.chosen.begin() + static_cast<std::ptrdiff_t>(shared));
      c.rejected.erase(c.rejected.begin(),
                       c.rejected.begin() + static_cast<std::ptrdiff_t>(shared));
    }
  } else {
    throw Error("unknown preference data format '" + format + "' (preference, hh)");
  }
  c.margin = margin_field(record, where);
  return c;
}

std::vector<int64_t> tokenize_response(const Tokenizer& tok, const std::string& template_name,
                                       const std::vector<Message>& prompt,
                                       const std::vector<Message>& response,
                                       const std::string& where) {
  check(!response.empty() && response.front().role == "assistant" &&
            response.back().role == "assistant",
        where + ": a response must start and end with an assistant turn");
  const auto prompt_ids = tokenize_prompt(tok, template_name, prompt);
  std::vector<Message> all = prompt;
  all.insert(all.end(), response.begin(), response.end());
  const auto full = tokenize_conversation(tok, template_name, all).tokens;
  check(full.size() >= prompt_ids.size() &&
            std::equal(prompt_ids.begin(), prompt_ids.end(), full.begin()),
        where + ": template '" + template_name + "' renders the prompt differently before a reply");
  return std::vector<int64_t>(full.begin() + static_cast<std::ptrdiff_t>(prompt_ids.size()),
                              full.end());
}

namespace {

// The prompt less `cut` tokens after BOS, then the response (ending in EOS), its tail dropped
// (EOS kept) where it still exceeds max_len.
ScoredSequence cut_sequence(const std::vector<int64_t>& prompt_ids,
                            const std::vector<int64_t>& response, int64_t cut, int64_t max_len) {
  const int64_t p = static_cast<int64_t>(prompt_ids.size());
  const int64_t eos_id = response.back();
  ScoredSequence out;
  out.truncated = cut > 0 || p - cut + static_cast<int64_t>(response.size()) > max_len;
  out.prompt_tokens = p - cut;
  out.tokens.reserve(static_cast<size_t>(std::min<int64_t>(max_len, p + response.size())));
  out.tokens.push_back(prompt_ids[0]);
  out.tokens.insert(out.tokens.end(), prompt_ids.begin() + 1 + cut, prompt_ids.end());
  out.tokens.insert(out.tokens.end(), response.begin(), response.end());
  if (static_cast<int64_t>(out.tokens.size()) > max_len) {
    out.tokens.resize(static_cast<size_t>(max_len));
    out.tokens.back() = eos_id;
  }
  return out;
}

}  // namespace

ScoredSequence reward_sequence(const std::vector<int64_t>& prompt_ids,
                               const std::vector<int64_t>& response_ids, int64_t eos_id,
                               int64_t max_len) {
  return reward_sequences(prompt_ids, {response_ids}, eos_id, max_len).front();
}

std::vector<ScoredSequence> reward_sequences(const std::vector<int64_t>& prompt_ids,
                                             const std::vector<std::vector<int64_t>>& responses,
                                             int64_t eos_id, int64_t max_len) {
  check(max_len >= 2, "max_seq_len must be at least 2");
  check(!prompt_ids.empty(), "reward_sequence: the prompt needs at least BOS");
  const int64_t p = static_cast<int64_t>(prompt_ids.size());
  check(p <= max_len, "prompt of " + std::to_string(p) + " tokens exceeds max_seq_len " +
                          std::to_string(max_len));
  std::vector<std::vector<int64_t>> ended;
  int64_t over = 0;  // what the longest response needs cut
  for (const auto& response_ids : responses) {
    ended.push_back(response_ids);
    if (ended.back().empty() || ended.back().back() != eos_id) ended.back().push_back(eos_id);
    over = std::max(over, p + static_cast<int64_t>(ended.back().size()) - max_len);
  }
  const int64_t cut = std::min<int64_t>(over, p - 1);  // BOS stays
  std::vector<ScoredSequence> out;
  for (const auto& response : ended)
    out.push_back(cut_sequence(prompt_ids, response, cut, max_len));
  return out;
}

std::vector<PreferencePair> load_preference_pairs(const PreferenceDataOptions& o,
                                                  const Tokenizer& tok, PreferenceStats* stats) {
  check(is_chat_template(o.template_name), "unknown chat template '" + o.template_name + "'");
  check(o.format == "preference" || o.format == "hh",
        "unknown preference data format '" + o.format + "' (preference, hh)");
  check(o.max_seq_len >= 2, "max_seq_len must be at least 2");
  RecordReadOptions read;
  read.skip_bad_lines = o.skip_bad_lines;
  read.max_records = o.max_records;
  auto records = read_json_records(o.path, read);
  PreferenceStats s;
  s.skipped = records.skipped;
  std::vector<PreferencePair> out;
  for (const auto& r : records.records) {
    ++s.records;
    PreferenceConversation c;
    std::vector<int64_t> prompt_ids, chosen_ids, rejected_ids;
    try {
      c = preference_from_record(r.value, o.format, r.where);
      prompt_ids = tokenize_prompt(tok, o.template_name, c.prompt);
      chosen_ids =
          tokenize_response(tok, o.template_name, c.prompt, c.chosen, r.where + ": chosen");
      rejected_ids =
          tokenize_response(tok, o.template_name, c.prompt, c.rejected, r.where + ": rejected");
    } catch (const Error&) {
      if (!o.skip_bad_lines) throw;
      ++s.skipped;
      continue;
    }
    if (static_cast<int64_t>(prompt_ids.size()) > o.max_seq_len) {
      ++s.prompt_too_long;
      continue;
    }
    auto both =
        reward_sequences(prompt_ids, {chosen_ids, rejected_ids}, tok.eos_id(), o.max_seq_len);
    auto& chosen = both[0];
    auto& rejected = both[1];
    if (chosen.tokens == rejected.tokens) {
      ++s.identical;
      continue;
    }
    s.truncated += (chosen.truncated ? 1 : 0) + (rejected.truncated ? 1 : 0);
    if (r.value.contains("margin") && !r.value["margin"].is_null()) ++s.with_margin;
    out.push_back({std::move(chosen.tokens), std::move(rejected.tokens), c.margin,
                   chosen.prompt_tokens, rejected.prompt_tokens});
  }
  if (stats) *stats = s;
  check(!out.empty(), o.path + ": no usable preference pairs (" + std::to_string(s.records) +
                          " records: " + std::to_string(s.identical) + " identical, " +
                          std::to_string(s.prompt_too_long) + " with a prompt over max_seq_len " +
                          std::to_string(o.max_seq_len) + ", " + std::to_string(s.skipped) +
                          " bad lines skipped)");
  return out;
}

void split_preference_validation(std::vector<PreferencePair>& all, double fraction, uint64_t seed,
                                 std::vector<PreferencePair>* train,
                                 std::vector<PreferencePair>* validation) {
  const int64_t n = static_cast<int64_t>(all.size());
  const std::vector<bool> is_val =
      validation_choice(n, fraction, seed ^ 0xa0761d6478bd642full, "pairs");
  for (int64_t i = 0; i < n; ++i)
    (is_val[static_cast<size_t>(i)] ? validation : train)
        ->push_back(std::move(all[static_cast<size_t>(i)]));
  all.clear();
}

}  // namespace tiller
