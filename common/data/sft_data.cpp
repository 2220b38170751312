#include "common/data/sft_data.h"

#include <sstream>

#include "common/data/json_records.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"

namespace tiller {

namespace {

bool has_assistant(const std::vector<Message>& messages) {
  for (const auto& m : messages)
    if (m.role == "assistant") return true;
  return false;
}

}  // namespace

std::vector<Message> messages_from_json(const nlohmann::json& list, const std::string& where,
                                        const std::string& field) {
  check(list.is_array(), where + ": field \"" + field + "\" must be a list of messages");
  std::vector<Message> out;
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string at = where + ": " + field + "[" + std::to_string(i) + "]";
    check(list[i].is_object(), at + " must be an object with role and content");
    Message m{string_field(list[i], "role", at), string_field(list[i], "content", at)};
    check(m.role == "system" || m.role == "user" || m.role == "assistant",
          at + ": unknown role '" + m.role + "' (system, user, assistant)");
    out.push_back(std::move(m));
  }
  return out;
}

std::vector<Message> conversation_from_record(const nlohmann::json& record,
                                              const std::string& format,
                                              const std::string& template_name,
                                              const std::string& where) {
  std::vector<Message> messages;
  if (format == "messages") {
    check(record.contains("messages"), where + ": missing field \"messages\"");
    messages = messages_from_json(record["messages"], where, "messages");
  } else if (format == "prompt_completion") {
    check(record.contains("prompt"), where + ": missing field \"prompt\"");
    check(record.contains("completion"), where + ": missing field \"completion\"");
    if (record["prompt"].is_array()) {
      messages = messages_from_json(record["prompt"], where, "prompt");
    } else {
      messages.push_back({"user", string_field(record, "prompt", where)});
    }
    if (record["completion"].is_array()) {
      for (auto& m : messages_from_json(record["completion"], where, "completion"))
        messages.push_back(m);
    } else {
      messages.push_back({"assistant", string_field(record, "completion", where)});
    }
  } else if (format == "alpaca") {
    std::string instruction = string_field(record, "instruction", where);
    const std::string input = string_field(record, "input", where, /*required=*/false);
    const std::string output = string_field(record, "output", where);
    if (!input.empty())
      instruction += (template_name == "alpaca" ? "\n\n### Input:\n" : "\n\n") + input;
    messages = {{"user", instruction}, {"assistant", output}};
  } else {
    throw Error("unknown SFT data format '" + format + "' (messages, prompt_completion, alpaca)");
  }
  check(has_assistant(messages), where + ": conversation has no assistant turn to train on");
  return messages;
}

bool truncate_keeping_response(Example& e, int64_t max_len, int64_t eos_id) {
  const int64_t n = static_cast<int64_t>(e.tokens.size());
  if (n <= max_len) return false;
  int64_t first_trained = 0;
  while (first_trained < n && !e.trainable[first_trained]) ++first_trained;
  // Drop prompt tokens after BOS (position 0) first, the oldest first.
  const int64_t removable = std::max<int64_t>(0, first_trained - 1);
  const int64_t cut = std::min(removable, n - max_len);
  e.tokens.erase(e.tokens.begin() + 1, e.tokens.begin() + 1 + cut);
  e.trainable.erase(e.trainable.begin() + 1, e.trainable.begin() + 1 + cut);
  if (static_cast<int64_t>(e.tokens.size()) > max_len) {
    // The response's tail goes, but not its trained EOS: a model that never sees its stop in
    // the long examples learns to run on (and PPO then starts from responses that never end).
    const bool ends_with_trained_eos = e.tokens.back() == eos_id && e.trainable.back() != 0;
    e.tokens.resize(max_len);
    e.trainable.resize(max_len);
    if (ends_with_trained_eos && max_len >= 2) {
      e.tokens.back() = eos_id;
      e.trainable.back() = 1;
    }
  }
  return true;
}

std::vector<Example> load_sft_examples(const SftDataOptions& o, const Tokenizer& tok,
                                       DataStats* stats) {
  check(is_chat_template(o.template_name), "unknown chat template '" + o.template_name + "'");
  check(o.max_seq_len >= 2, "max_seq_len must be at least 2");
  RecordReadOptions read;
  read.skip_bad_lines = o.skip_bad_lines;
  read.max_records = o.max_records;
  auto records = read_json_records(o.path, read);
  DataStats s;
  s.skipped = records.skipped;
  std::vector<Example> out;
  for (const auto& r : records.records) {
    ++s.records;
    std::vector<Message> messages;
    try {
      messages = conversation_from_record(r.value, o.format, o.template_name, r.where);
    } catch (const Error&) {
      if (!o.skip_bad_lines) throw;
      ++s.skipped;
      continue;
    }
    auto conv = tokenize_conversation(tok, o.template_name, messages, o.train_on_prompt);
    Example e{std::move(conv.tokens), std::move(conv.trainable)};
    if (truncate_keeping_response(e, o.max_seq_len, tok.eos_id())) ++s.truncated;
    bool any = false;
    for (size_t i = 1; i < e.trainable.size(); ++i) any = any || e.trainable[i];
    if (!any) {
      ++s.dropped;
      continue;
    }
    s.tokens += static_cast<int64_t>(e.tokens.size());
    out.push_back(std::move(e));
  }
  check(!out.empty(), o.path + ": no usable SFT examples");
  if (stats) *stats = s;
  return out;
}

std::vector<std::string> read_text_documents(const std::string& path, bool skip_bad_lines,
                                             DataStats* stats) {
  std::vector<std::string> documents;
  DataStats s;
  const bool jsonl =
      path.find(".jsonl") != std::string::npos || path.find(".json") != std::string::npos;
  if (jsonl) {
    RecordReadOptions read;
    read.skip_bad_lines = skip_bad_lines;
    auto records = read_json_records(path, read);
    s.skipped = records.skipped;
    for (const auto& r : records.records) {
      auto it = r.value.find("text");
      if (it == r.value.end() || !it->is_string()) {
        check(skip_bad_lines, r.where + ": expected a string field \"text\"");
        ++s.skipped;
        continue;
      }
      documents.push_back(it->get<std::string>());
    }
  } else {
    std::istringstream in(read_text_file(path));
    std::string line;
    while (std::getline(in, line))
      if (line.find_first_not_of(" \t\r") != std::string::npos) documents.push_back(line);
  }
  s.records = static_cast<int64_t>(documents.size());
  if (stats) *stats = s;
  return documents;
}

std::vector<int64_t> bos_token_stream(const std::vector<std::string>& documents,
                                      const Tokenizer& tokenizer, int64_t max_tokens) {
  std::vector<int64_t> stream;
  for (const auto& d : documents) {
    if (max_tokens > 0 && static_cast<int64_t>(stream.size()) >= max_tokens) break;
    const auto ids = tokenizer.encode(d, /*add_bos=*/true);
    stream.insert(stream.end(), ids.begin(), ids.end());
  }
  return stream;
}

std::vector<Example> load_text_examples(const std::string& path, const Tokenizer& tok,
                                        int64_t max_seq_len, bool skip_bad_lines,
                                        DataStats* stats) {
  check(max_seq_len >= 2, "max_seq_len must be at least 2");
  DataStats s;
  const std::vector<int64_t> stream =
      bos_token_stream(read_text_documents(path, skip_bad_lines, &s), tok);
  std::vector<Example> out;
  for (size_t start = 0; start + static_cast<size_t>(max_seq_len) <= stream.size();
       start += max_seq_len) {
    Example e;
    e.tokens.assign(stream.begin() + start, stream.begin() + start + max_seq_len);
    e.trainable.assign(max_seq_len, 1);
    e.trainable[0] = 0;
    out.push_back(std::move(e));
  }
  check(!out.empty(),
        path + ": fewer than max_seq_len (" + std::to_string(max_seq_len) + ") tokens of text");
  s.tokens = static_cast<int64_t>(out.size()) * max_seq_len;
  if (stats) *stats = s;
  return out;
}

}  // namespace tiller
