#include "common/tokenizer/model_chat_template.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

namespace {

// Two markers that differ in their first and in their last byte and hold no whitespace (a
// template's trim leaves them whole): whatever a reply's content shares with one at either end,
// it cannot share with both.
const char* const kMarkers[2] = {"\x02tiller-reply-a\x03", "\x04tiller-reply-b\x05"};

size_t common_prefix(const std::string& a, const std::string& b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

size_t common_suffix(const std::string& a, const std::string& b, size_t limit) {
  size_t i = 0;
  while (i < limit && a[a.size() - 1 - i] == b[b.size() - 1 - i]) ++i;
  return i;
}

// A special token as tokenizer_config.json names it: a string, {"content": string}, or null.
std::string special_token_text(const nlohmann::json& config, const char* key,
                               const std::string& where) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return "";
  const nlohmann::json& value = it->is_object() && it->contains("content") ? (*it)["content"] : *it;
  check(value.is_string(), where + ": " + key + " is neither a string nor {\"content\": string}");
  return value.get<std::string>();
}

// The chat_template of a tokenizer_config.json: a string, or a list of {"name", "template"}
// from which "default" is taken (as transformers does when no name is asked for).
std::string template_source(const nlohmann::json& value, const std::string& where) {
  if (value.is_string()) return value.get<std::string>();
  check(value.is_array(),
        where + ": chat_template is neither a string nor a list of {\"name\", \"template\"}");
  std::string names;
  for (const auto& entry : value) {
    check(entry.is_object() && entry.contains("name") && entry["name"].is_string() &&
              entry.contains("template") && entry["template"].is_string(),
          where + ": chat_template list entries must be {\"name\": string, \"template\": string}");
    if (entry["name"] == "default") return entry["template"].get<std::string>();
    names += (names.empty() ? "" : ", ") + entry["name"].get<std::string>();
  }
  throw Error(where + ": chat_template has no template named 'default' (it has " + names + ")");
}

std::string file_version(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return "";
  return std::to_string(st.st_size) + ":" + std::to_string(st.st_mtim.tv_sec) + "." +
         std::to_string(st.st_mtim.tv_nsec);
}

}  // namespace

ModelChatTemplate::ModelChatTemplate(const std::string& source, const std::string& where,
                                     std::string bos_token, std::string eos_token,
                                     std::vector<std::string> special_tokens)
    : template_(source, where),
      bos_token_(std::move(bos_token)),
      eos_token_(std::move(eos_token)),
      special_tokens_(std::move(special_tokens)) {
  special_tokens_.erase(std::remove(special_tokens_.begin(), special_tokens_.end(), std::string()),
                        special_tokens_.end());
  std::stable_sort(special_tokens_.begin(), special_tokens_.end(),
                   [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
}

std::shared_ptr<const ModelChatTemplate> ModelChatTemplate::of(const Tokenizer& tokenizer) {
  const std::filesystem::path dir = std::filesystem::path(tokenizer.path()).parent_path();
  const std::string config_path = (dir / "tokenizer_config.json").string();
  const std::string jinja_path = (dir / "chat_template.jinja").string();
  const std::string key =
      tokenizer.path() + "|" + file_version(config_path) + "|" + file_version(jinja_path);
  static std::mutex mutex;
  static std::map<std::string, std::shared_ptr<const ModelChatTemplate>> cache;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto found = cache.find(key);
    if (found != cache.end()) return found->second;
  }
  check(path_exists(config_path) || path_exists(jinja_path),
        config_path +
            " does not exist: template 'model' reads the model's chat_template from it "
            "(or pick a built-in template: chatml, llama2, alpaca, plain)");
  nlohmann::json config = nlohmann::json::object();
  if (path_exists(config_path)) {
    config = read_json_file(config_path);
    check(config.is_object(), config_path + ": not a JSON object");
  }
  std::string source, where;
  if (config.contains("chat_template") && !config["chat_template"].is_null()) {
    source = template_source(config["chat_template"], config_path);
    where = config_path + ": chat_template";
  } else {
    check(
        path_exists(jinja_path),
        config_path +
            " has no chat_template (and there is no chat_template.jinja beside it): "
            "template 'model' needs one; pick a built-in template (chatml, llama2, alpaca, plain)");
    source = read_file(jinja_path);
    where = jinja_path;
  }
  std::vector<std::string> specials;
  for (const auto& token : tokenizer.special_tokens()) specials.push_back(token.first);
  auto made = std::make_shared<const ModelChatTemplate>(
      source, where, special_token_text(config, "bos_token", config_path),
      special_token_text(config, "eos_token", config_path), std::move(specials));
  std::lock_guard<std::mutex> lock(mutex);
  cache[key] = made;
  return made;
}

jinja::Value ModelChatTemplate::context(const std::vector<Message>& messages,
                                        bool add_generation_prompt) const {
  jinja::List list;
  for (const Message& m : messages) {
    auto d = std::make_shared<jinja::Dict>();
    d->set("role", jinja::Value::string(m.role));
    d->set("content", jinja::Value::string(m.content));
    list.push_back(jinja::Value::dict(d));
  }
  auto globals = std::make_shared<jinja::Dict>();
  if (!bos_token_.empty()) globals->set("bos_token", jinja::Value::string(bos_token_));
  if (!eos_token_.empty()) globals->set("eos_token", jinja::Value::string(eos_token_));
  globals->set("messages", jinja::Value::list(std::move(list)));
  globals->set("add_generation_prompt", jinja::Value::boolean(add_generation_prompt));
  return jinja::Value::dict(globals);
}

std::string ModelChatTemplate::render(const std::vector<Message>& messages,
                                      bool add_generation_prompt) const {
  return template_.render(context(messages, add_generation_prompt));
}

std::vector<ModelChatTemplate::Reply> ModelChatTemplate::replies(
    const std::vector<Message>& messages, const std::string& rendered) const {
  std::vector<Reply> out;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i].role != "assistant") continue;
    const std::string what = where() + ": assistant message " + std::to_string(i + 1);
    std::string marked[2];
    size_t prefix = rendered.size(), suffix = rendered.size();
    for (int k = 0; k < 2; ++k) {
      std::vector<Message> copy = messages;
      copy[i].content = kMarkers[k];
      marked[k] = render(copy, false);
      prefix = std::min(prefix, common_prefix(rendered, marked[k]));
    }
    for (int k = 0; k < 2; ++k) {
      const size_t limit = std::min(rendered.size(), marked[k].size()) - prefix;
      suffix = std::min(suffix, common_suffix(rendered, marked[k], limit));
    }
    // The markers must be all that changed in each marked rendering, each exactly once.
    for (int k = 0; k < 2; ++k) {
      const std::string changed = marked[k].substr(prefix, marked[k].size() - suffix - prefix);
      check(changed == kMarkers[k],
            what +
                ": the template renders the reply's content more than once or moves other text "
                "with it, so its tokens to train cannot be told apart");
    }
    Reply reply;
    reply.begin = prefix;
    reply.content_end = rendered.size() - suffix;
    check(out.empty() || reply.begin >= out.back().end,
          what + ": rendered before the reply that precedes it");
    // The turn's end: whitespace, then a special token, right after the content.
    size_t pos = reply.content_end;
    while (pos < rendered.size() && (rendered[pos] == ' ' || rendered[pos] == '\n' ||
                                     rendered[pos] == '\t' || rendered[pos] == '\r'))
      ++pos;
    reply.end = reply.content_end;
    for (const std::string& special : special_tokens_) {
      if (rendered.compare(pos, special.size(), special) == 0) {
        reply.end = pos + special.size();
        break;
      }
    }
    out.push_back(reply);
  }
  return out;
}

std::vector<int64_t> encode_with_special_tokens(const Tokenizer& tokenizer,
                                                const std::string& text) {
  if (!tokenizer.is_sentencepiece())
    return tokenizer.encode(text);  // added tokens are matched there
  // SentencePiece reads "</s>" in text as characters: split the control pieces out first.
  static std::mutex mutex;
  using Specials = std::vector<std::pair<std::string, int64_t>>;
  static std::map<std::string, std::shared_ptr<const Specials>> cache;
  std::shared_ptr<const Specials> list;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto found = cache.find(tokenizer.path());
    if (found == cache.end()) {
      auto made = std::make_shared<Specials>(tokenizer.special_tokens());
      std::stable_sort(made->begin(), made->end(), [](const auto& a, const auto& b) {
        return a.first.size() > b.first.size();
      });
      found = cache.emplace(tokenizer.path(), std::move(made)).first;
    }
    list = found->second;
  }
  const Specials& specials = *list;
  std::vector<int64_t> out;
  size_t start = 0, pos = 0;
  auto flush = [&](size_t end) {
    if (end > start) {
      const auto ids = tokenizer.encode(text.substr(start, end - start));
      out.insert(out.end(), ids.begin(), ids.end());
    }
  };
  bool starts[256] = {};
  for (const auto& special : specials)
    if (!special.first.empty()) starts[static_cast<unsigned char>(special.first[0])] = true;
  while (pos < text.size()) {
    const std::pair<std::string, int64_t>* found = nullptr;
    if (starts[static_cast<unsigned char>(text[pos])]) {
      for (const auto& special : specials) {
        if (!special.first.empty() && text.compare(pos, special.first.size(), special.first) == 0) {
          found = &special;
          break;
        }
      }
    }
    if (found == nullptr) {
      ++pos;
      continue;
    }
    flush(pos);
    out.push_back(found->second);
    pos += found->first.size();
    start = pos;
  }
  flush(text.size());
  return out;
}

TokenizedConversation tokenize_model_conversation(const Tokenizer& tokenizer,
                                                  const std::vector<Message>& messages,
                                                  bool train_on_prompt) {
  const auto tmpl = ModelChatTemplate::of(tokenizer);
  const std::string text = tmpl->render(messages, false);
  TokenizedConversation out;
  auto append = [&](size_t begin, size_t end, bool trained) {
    if (end <= begin) return;
    const auto ids = encode_with_special_tokens(tokenizer, text.substr(begin, end - begin));
    out.tokens.insert(out.tokens.end(), ids.begin(), ids.end());
    out.trainable.insert(out.trainable.end(), ids.size(), (trained || train_on_prompt) ? 1 : 0);
  };
  size_t pos = 0;
  for (const auto& reply : tmpl->replies(messages, text)) {
    append(pos, reply.begin, false);
    append(reply.begin, reply.end, true);
    if (reply.end == reply.content_end) {  // the template closes no turn: EOS ends the reply
      check(tokenizer.eos_id() >= 0, tmpl->where() +
                                         ": the template ends no assistant turn with a "
                                         "special token and the tokenizer has no EOS");
      out.tokens.push_back(tokenizer.eos_id());
      out.trainable.push_back(1);
    }
    pos = reply.end;
  }
  append(pos, text.size(), false);
  if (train_on_prompt && !out.trainable.empty()) out.trainable[0] = 0;
  return out;
}

std::vector<int64_t> tokenize_model_prompt(const Tokenizer& tokenizer,
                                           const std::vector<Message>& messages) {
  return encode_with_special_tokens(tokenizer,
                                    ModelChatTemplate::of(tokenizer)->render(messages, true));
}

int64_t model_end_of_turn_id(const Tokenizer& tokenizer) {
  const auto tmpl = ModelChatTemplate::of(tokenizer);
  const std::vector<Message> probe = {{"user", "Hi"}, {"assistant", "Hello"}};
  const std::string text = tmpl->render(probe, false);
  const auto replies = tmpl->replies(probe, text);
  if (replies.empty() || replies[0].end == replies[0].content_end) return -1;
  const auto ids = encode_with_special_tokens(
      tokenizer, text.substr(replies[0].content_end, replies[0].end - replies[0].content_end));
  return ids.empty() ? -1 : ids.back();
}

}  // namespace tiller
