// Preference data: pairs of responses to one prompt (chosen, rejected), from TRL-style records or
// Anthropic HH dialogues, tokenized into the exact sequences a reward model scores.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "common/tokenizer/chat_template.h"

namespace tiller {

class Tokenizer;

// A record as conversations: the prompt turns, then each side's turns (ending with an assistant
// turn).
struct PreferenceConversation {
  std::vector<Message> prompt;
  std::vector<Message> chosen;
  std::vector<Message> rejected;
  double margin = 0.0;  // the record's "margin", 0 when absent
};

// Splits an Anthropic HH dialogue ("\n\nHuman: ...\n\nAssistant: ...") into messages. Throws
// tiller::Error naming `where` when the text has no Human/Assistant turns or text before them.
std::vector<Message> parse_hh_dialogue(const std::string& text, const std::string& where);

// A record as conversations. format "preference": {"prompt","chosen","rejected"} with the prompt a
// string or a message list and each side a string or a message list (without "prompt", the
// sides must be message lists and their shared leading turns are the prompt); "hh":
// {"chosen","rejected"} whole HH dialogues, the shared text up to the last "\n\nAssistant:" being
// the prompt. An optional number "margin" is read in both. Throws tiller::Error naming `where`.
PreferenceConversation preference_from_record(const nlohmann::json& record,
                                              const std::string& format, const std::string& where);

// The sequence a reward model scores, used alike in training, evaluation and PPO scoring:
// prompt_ids (BOS first, as tokenize_prompt renders them), then response_ids, then EOS unless
// response_ids already ends with it (a finished generation). When longer than max_len, prompt
// tokens after BOS go first, the oldest first; a response that still does not fit loses its
// tail but keeps the final EOS. `prompt_ids` alone longer than max_len is an error (callers drop
// such pairs first).
struct ScoredSequence {
  std::vector<int64_t> tokens;
  bool truncated = false;
  int64_t prompt_tokens = 0;  // how many leading tokens are the (kept) prompt's
};
ScoredSequence reward_sequence(const std::vector<int64_t>& prompt_ids,
                               const std::vector<int64_t>& response_ids, int64_t eos_id,
                               int64_t max_len);
// reward_sequence of each response after one prompt, with the prompt cut alike for all of them
// (by what the longest response needs): a pair's or a ranking's responses are compared after the
// same context, as the Bradley-Terry model and DPO assume, and begin with the same tokens
// (common/model/shared_prefix.h computes those once). A shorter response may lose prompt tokens
// it alone would have kept; its `truncated` says so.
std::vector<ScoredSequence> reward_sequences(const std::vector<int64_t>& prompt_ids,
                                             const std::vector<std::vector<int64_t>>& responses,
                                             int64_t eos_id, int64_t max_len);

// The response tokens SFT trains for `response` after `prompt` under the template: each assistant
// turn's tokens and its EOS (and any template text between turns). Throws when the response does
// not start and end with an assistant turn.
std::vector<int64_t> tokenize_response(const Tokenizer& tokenizer, const std::string& template_name,
                                       const std::vector<Message>& prompt,
                                       const std::vector<Message>& response,
                                       const std::string& where);

// One tokenized pair.
struct PreferencePair {
  // reward_sequences(prompt, {chosen response, rejected response}): one prompt cut for both
  std::vector<int64_t> chosen;
  std::vector<int64_t> rejected;
  double margin = 0.0;
  // How many leading tokens of each sequence are the prompt's (BOS included): the rest is the
  // response a policy is scored on (DPO sums its log-probabilities over those tokens only).
  int64_t chosen_prompt_tokens = 0;
  int64_t rejected_prompt_tokens = 0;
};

struct PreferenceDataOptions {
  std::string path;
  std::string format = "preference";  // "preference" or "hh"
  std::string template_name = "chatml";
  int64_t max_seq_len = 512;
  bool skip_bad_lines = false;
  int64_t max_records = -1;
};

struct PreferenceStats {
  int64_t records = 0;          // records read
  int64_t skipped = 0;          // malformed records skipped (skip_bad_lines)
  int64_t identical = 0;        // pairs dropped: both sides the same sequence
  int64_t prompt_too_long = 0;  // pairs dropped: the prompt alone exceeds max_seq_len
  int64_t truncated = 0;        // sequences cut to max_seq_len
  int64_t with_margin = 0;      // pairs whose record gave a margin
};

// Reads, templates and tokenizes a preference file. Malformed records are errors naming
// file:line unless skip_bad_lines; identical and over-long-prompt pairs are dropped and counted.
// An empty result is an error.
std::vector<PreferencePair> load_preference_pairs(const PreferenceDataOptions& options,
                                                  const Tokenizer& tokenizer,
                                                  PreferenceStats* stats);

// A deterministic split: `fraction` of the pairs (at least one) chosen by seed go to validation.
void split_preference_validation(std::vector<PreferencePair>& all, double fraction, uint64_t seed,
                                 std::vector<PreferencePair>* train,
                                 std::vector<PreferencePair>* validation);

}  // namespace tiller
