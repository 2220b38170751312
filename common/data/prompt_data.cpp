#include "common/data/prompt_data.h"

#include <functional>

#include "common/data/json_records.h"
#include "common/data/preference_data.h"
#include "common/data/sft_data.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"

namespace tiller {

namespace {

std::string detect_format(const nlohmann::json& record, const std::string& where) {
  for (const char* key : {"prompt", "messages", "instruction"})
    if (record.contains(key)) return key == std::string("instruction") ? "alpaca" : key;
  if (record.contains("chosen") && record["chosen"].is_string()) return "hh";
  throw Error(where +
              ": a prompt record needs \"prompt\", \"messages\", \"instruction\" or an HH "
              "\"chosen\" dialogue");
}

}  // namespace

std::vector<Message> prompt_from_record(const nlohmann::json& record, const std::string& format,
                                        const std::string& template_name,
                                        const std::string& where) {
  check(record.is_object(), where + ": expected a JSON object");
  const std::string kind = format == "auto" ? detect_format(record, where) : format;
  std::vector<Message> messages;
  if (kind == "prompt") {
    check(record.contains("prompt"), where + ": missing field \"prompt\"");
    const auto& prompt = record["prompt"];
    if (prompt.is_string())
      messages = {{"user", prompt.get<std::string>()}};
    else
      messages = messages_from_json(prompt, where, "prompt");
  } else if (kind == "messages") {
    check(record.contains("messages"), where + ": missing field \"messages\"");
    messages = messages_from_json(record["messages"], where, "messages");
    while (!messages.empty() && messages.back().role == "assistant") messages.pop_back();
  } else if (kind == "hh") {
    // An Anthropic HH dialogue: its turns up to the last assistant reply.
    messages = parse_hh_dialogue(string_field(record, "chosen", where), where);
    while (!messages.empty() && messages.back().role == "assistant") messages.pop_back();
  } else if (kind == "alpaca") {
    std::string instruction = string_field(record, "instruction", where);
    const std::string input = string_field(record, "input", where, /*required=*/false);
    if (!input.empty())
      instruction += (template_name == "alpaca" ? "\n\n### Input:\n" : "\n\n") + input;
    messages = {{"user", instruction}};
  } else {
    throw Error("unknown prompt format '" + format + "' (auto, prompt, messages, alpaca, hh)");
  }
  check(!messages.empty() && messages.back().role == "user",
        where + ": the prompt must end with a user turn");
  return messages;
}

namespace {

// One record's prompt turns, and its reference answer where the format has one; throws
// tiller::Error for a bad record.
using RecordReader =
    std::function<std::vector<Message>(const JsonRecord& record, std::string* answer)>;

// The loop both loaders share: read, parse each record (skipping and counting bad ones when asked),
// template, tokenize, drop and count the too long.
std::vector<AnsweredPrompt> read_prompts(const PromptDataOptions& o, const Tokenizer& tokenizer,
                                         PromptStats* stats, const RecordReader& parse) {
  check(is_chat_template(o.template_name), "unknown chat template '" + o.template_name + "'");
  PromptStats local;
  PromptStats& counts = stats ? *stats : local;
  auto read = read_json_records(o.path, {o.skip_bad_lines, o.max_records});
  counts.skipped = read.skipped;
  std::vector<AnsweredPrompt> prompts;
  for (const auto& record : read.records) {
    ++counts.records;
    AnsweredPrompt prompt;
    std::vector<Message> messages;
    try {
      messages = parse(record, &prompt.answer);
    } catch (const Error&) {
      if (!o.skip_bad_lines) throw;
      ++counts.skipped;
      continue;
    }
    prompt.tokens = tokenize_prompt(tokenizer, o.template_name, messages);
    if (static_cast<int64_t>(prompt.tokens.size()) > o.max_prompt_len) {
      ++counts.too_long;
      continue;
    }
    prompts.push_back(std::move(prompt));
  }
  check(!prompts.empty(), o.path + ": no usable prompts (" + std::to_string(counts.too_long) +
                              " longer than max_prompt_len " + std::to_string(o.max_prompt_len) +
                              ")");
  return prompts;
}

std::string trimmed(const std::string& text) {
  const char* space = " \t\r\n";
  const size_t first = text.find_first_not_of(space);
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(space) - first + 1);
}

std::string answered_format(const nlohmann::json& record, const std::string& format,
                            const std::string& where) {
  check(record.is_object(), where + ": expected a JSON object");
  if (format != "auto") return format;
  if (record.contains("question")) return "gsm8k";
  if (record.contains("prompt")) return record.contains("answer") ? "prompt_answer" : "prompt";
  throw Error(where +
              ": an answered prompt needs \"prompt\" and \"answer\", or GSM8K's \"question\" "
              "and \"answer\"");
}

}  // namespace

std::vector<std::vector<int64_t>> load_prompts(const PromptDataOptions& o,
                                               const Tokenizer& tokenizer, PromptStats* stats) {
  auto parse = [&](const JsonRecord& record, std::string*) {
    return prompt_from_record(record.value, o.format, o.template_name, record.where);
  };
  std::vector<std::vector<int64_t>> prompts;
  for (auto& prompt : read_prompts(o, tokenizer, stats, parse))
    prompts.push_back(std::move(prompt.tokens));
  return prompts;
}

std::string answer_from_record(const nlohmann::json& record, const std::string& format,
                               const std::string& where) {
  const std::string kind = answered_format(record, format, where);
  if (kind == "prompt") return "";  // a prompt without a reference answer
  check(record.contains("answer"), where + ": missing field \"answer\"");
  std::string answer;
  if (kind == "gsm8k") {
    const std::string text = string_field(record, "answer", where);
    const size_t mark = text.rfind("####");
    check(mark != std::string::npos,
          where + ": the GSM8K answer has no \"####\" before its final answer");
    answer = trimmed(text.substr(mark + 4));
  } else if (kind == "prompt_answer") {
    const auto& value = record["answer"];
    check(value.is_string() || value.is_number(),
          where + ": field \"answer\" must be a string or a number");
    answer = value.is_string() ? trimmed(value.get<std::string>()) : value.dump();
  } else {
    throw Error("unknown answered prompt format '" + format +
                "' (auto, prompt_answer, gsm8k, prompt)");
  }
  check(!answer.empty(), where + ": the reference answer is empty");
  return answer;
}

std::vector<AnsweredPrompt> load_answered_prompts(const PromptDataOptions& o,
                                                  const Tokenizer& tokenizer, PromptStats* stats) {
  check(o.format == "auto" || o.format == "prompt_answer" || o.format == "gsm8k" ||
            o.format == "prompt",
        "unknown answered prompt format '" + o.format + "' (auto, prompt_answer, gsm8k, prompt)");
  auto parse = [&](const JsonRecord& record, std::string* answer) {
    *answer = answer_from_record(record.value, o.format, record.where);
    if (answered_format(record.value, o.format, record.where) == "gsm8k")
      return std::vector<Message>{{"user", string_field(record.value, "question", record.where)}};
    return prompt_from_record(record.value, "prompt", o.template_name, record.where);
  };
  return read_prompts(o, tokenizer, stats, parse);
}

}  // namespace tiller
