#include "common/data/prompt_data.h"

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

std::vector<std::vector<int64_t>> load_prompts(const PromptDataOptions& o,
                                               const Tokenizer& tokenizer, PromptStats* stats) {
  check(is_chat_template(o.template_name), "unknown chat template '" + o.template_name + "'");
  PromptStats local;
  PromptStats& s = stats ? *stats : local;
  auto read = read_json_records(o.path, {o.skip_bad_lines, o.max_records});
  s.skipped = read.skipped;
  std::vector<std::vector<int64_t>> prompts;
  for (const auto& record : read.records) {
    ++s.records;
    std::vector<Message> messages;
    try {
      messages = prompt_from_record(record.value, o.format, o.template_name, record.where);
    } catch (const Error&) {
      if (!o.skip_bad_lines) throw;
      ++s.skipped;
      continue;
    }
    auto tokens = tokenize_prompt(tokenizer, o.template_name, messages);
    if (static_cast<int64_t>(tokens.size()) > o.max_prompt_len) {
      ++s.too_long;
      continue;
    }
    prompts.push_back(std::move(tokens));
  }
  check(!prompts.empty(), o.path + ": no usable prompts (" + std::to_string(s.too_long) +
                              " longer than max_prompt_len " + std::to_string(o.max_prompt_len) +
                              ")");
  return prompts;
}

}  // namespace tiller
