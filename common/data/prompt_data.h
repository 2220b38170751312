// Prompts for rollouts: records in the SFT layouts cut before their (last) assistant turn, rendered
// with the chat template up to the assistant header and tokenized; and prompts with reference
// answers, for rewards a program checks.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "common/tokenizer/chat_template.h"

namespace tiller {

class Tokenizer;

// A record's prompt turns. format "prompt": {"prompt": string or message list}; "messages":
// {"messages": [...]} with any trailing assistant turns dropped; "alpaca": {"instruction",
// "input"}; "hh": {"chosen": an Anthropic HH dialogue} cut before its last assistant reply;
// "auto": the first of those whose key the record has. The conversation must end with
// a user turn. Throws tiller::Error naming `where`.
std::vector<Message> prompt_from_record(const nlohmann::json& record, const std::string& format,
                                        const std::string& template_name, const std::string& where);

struct PromptDataOptions {
  std::string path;
  std::string format = "auto";
  std::string template_name = "chatml";
  int64_t max_prompt_len = 256;  // prompts with more tokens are dropped (and counted)
  bool skip_bad_lines = false;
  int64_t max_records = -1;
};

struct PromptStats {
  int64_t records = 0;   // records read
  int64_t skipped = 0;   // malformed records skipped (skip_bad_lines)
  int64_t too_long = 0;  // prompts dropped: more than max_prompt_len tokens
};

// Reads, templates and tokenizes a prompt file (BOS first). An empty result is an error.
std::vector<std::vector<int64_t>> load_prompts(const PromptDataOptions& options,
                                               const Tokenizer& tokenizer, PromptStats* stats);

// A prompt with the answer a verifier compares against.
struct AnsweredPrompt {
  std::vector<int64_t> tokens;  // templated and tokenized as load_prompts does (BOS first)
  std::string answer;           // the reference answer's text
};

// A record's reference answer. format "prompt_answer": {"answer": string, or a number written as
// JSON writes it}; "gsm8k": the text after the last "####" of {"answer"}, trimmed (commas kept);
// "prompt": none ("": rewards that need no reference); "auto": gsm8k when the record has
// "question", else prompt_answer when it has "answer", else prompt. Throws tiller::Error naming
// `where`.
std::string answer_from_record(const nlohmann::json& record, const std::string& format,
                               const std::string& where);

// Reads answered prompts: format "prompt_answer" ({"prompt": string or message list, "answer"}),
// "gsm8k" ({"question", "answer"}: the question is the prompt), "prompt" ({"prompt"}, answers
// "") or "auto" (by the record's keys).
// Bad records and lengths are handled and counted as load_prompts does.
std::vector<AnsweredPrompt> load_answered_prompts(const PromptDataOptions& options,
                                                  const Tokenizer& tokenizer, PromptStats* stats);

}  // namespace tiller
