#include "common/tokenizer/chat_template.h"

#include "common/tokenizer/model_chat_template.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"

namespace tiller {

namespace {

const char* const kAlpacaPreamble =
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n";

// A rendered piece of text: prompt text (never trained) or an assistant reply (trained, + EOS).
struct Segment {
  std::string text;
  bool assistant = false;
  bool bos_before = false;  // llama2 opens each [INST] turn with BOS
};

std::vector<Segment> render(const std::string& name, const std::vector<Message>& messages,
                            bool generation_prompt) {
  std::vector<Segment> out;
  auto prompt = [&](const std::string& text) {
    if (!out.empty() && !out.back().assistant) {
      out.back().text += text;
    } else {
      out.push_back({text, false, false});
    }
  };
  std::string system;
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto& m = messages[i];
    if (m.role == "system") {
      if (name == "chatml") {
        prompt("<|im_start|>system\n" + m.content + "<|im_end|>\n");
      } else {
        system = m.content;  // llama2 folds it into the first turn; alpaca/plain use it as preamble
        if (name == "plain") prompt(m.content + "\n\n");
      }
    } else if (m.role == "user") {
      if (name == "chatml") {
        prompt("<|im_start|>user\n" + m.content + "<|im_end|>\n");
      } else if (name == "llama2") {
        std::string text = "[INST] ";
        if (!system.empty()) text += "<<SYS>>\n" + system + "\n<</SYS>>\n\n";
        system.clear();
        text += m.content + " [/INST]";
        if (!out.empty())
          out.push_back({text, false, true});
        else
          prompt(text);
      } else if (name == "alpaca") {
        if (out.empty()) prompt(system.empty() ? kAlpacaPreamble : system + "\n\n");
        prompt("### Instruction:\n" + m.content + "\n\n");
      } else {  // plain
        prompt(m.content + "\n");
      }
    } else if (m.role == "assistant") {
      if (name == "chatml")
        prompt("<|im_start|>assistant\n");
      else if (name == "alpaca")
        prompt("### Response:\n");
      out.push_back({m.content, true, false});
      if (name == "alpaca" && i + 1 < messages.size()) prompt("\n\n");
      if (name == "chatml" && i + 1 < messages.size()) prompt("\n");
    } else {
      throw Error("unknown message role '" + m.role + "' (system, user, assistant)");
    }
  }
  if (generation_prompt) {
    if (name == "chatml")
      prompt("<|im_start|>assistant\n");
    else if (name == "alpaca")
      prompt("### Response:\n");
  }
  return out;
}

}  // namespace

const std::vector<std::string>& chat_template_names() {
  static const std::vector<std::string> names = {"chatml", "llama2", "alpaca", "plain", "model"};
  return names;
}

bool is_chat_template(const std::string& name) {
  for (const auto& n : chat_template_names())
    if (n == name) return true;
  return false;
}

TokenizedConversation tokenize_conversation(const Tokenizer& tok, const std::string& name,
                                            const std::vector<Message>& messages,
                                            bool train_on_prompt) {
  check(is_chat_template(name), "unknown chat template '" + name + "'");
  if (name == "model") return tokenize_model_conversation(tok, messages, train_on_prompt);
  TokenizedConversation out;
  // A tokenizer without BOS (Qwen2's) starts with the template's text.
  const bool has_bos = tok.bos_id() >= 0;
  if (has_bos) {
    out.tokens.push_back(tok.bos_id());
    out.trainable.push_back(0);
  }
  for (const auto& segment : render(name, messages, /*generation_prompt=*/false)) {
    if (segment.bos_before && has_bos) {
      out.tokens.push_back(tok.bos_id());
      out.trainable.push_back(train_on_prompt ? 1 : 0);
    }
    auto ids = tok.encode(segment.text);
    if (segment.assistant) ids.push_back(tok.eos_id());
    const uint8_t trained = (segment.assistant || train_on_prompt) ? 1 : 0;
    out.tokens.insert(out.tokens.end(), ids.begin(), ids.end());
    out.trainable.insert(out.trainable.end(), ids.size(), trained);
  }
  return out;
}

std::vector<int64_t> tokenize_prompt(const Tokenizer& tok, const std::string& name,
                                     const std::vector<Message>& messages) {
  check(is_chat_template(name), "unknown chat template '" + name + "'");
  if (name == "model") return tokenize_model_prompt(tok, messages);
  const bool has_bos = tok.bos_id() >= 0;
  std::vector<int64_t> out;
  if (has_bos) out.push_back(tok.bos_id());
  for (const auto& segment : render(name, messages, /*generation_prompt=*/true)) {
    if (segment.bos_before && has_bos) out.push_back(tok.bos_id());
    auto ids = tok.encode(segment.text);
    out.insert(out.end(), ids.begin(), ids.end());
    if (segment.assistant) out.push_back(tok.eos_id());
  }
  return out;
}

}  // namespace tiller
