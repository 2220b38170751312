// Chat templates: how a conversation becomes text, and which parts of it are trained on.
#pragma once
#include <string>
#include <vector>

namespace tiller {

class Tokenizer;

struct Message {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// Names accepted by chat_template_names(): chatml, llama2, alpaca, plain, and model: the Jinja
// chat_template of the tokenizer's own tokenizer_config.json
// (common/tokenizer/model_chat_template.h).
const std::vector<std::string>& chat_template_names();
bool is_chat_template(const std::string& name);

// A conversation tokenized: tokens[i] is trained on (predicted from tokens[0..i)) when
// trainable[i] is 1. Every assistant turn is followed by EOS, trained on with its turn.
struct TokenizedConversation {
  std::vector<int64_t> tokens;
  std::vector<uint8_t> trainable;
};

// Renders and tokenizes `messages` with the named template (BOS first; with `model`, the BOS the
// template itself writes). Assistant turns are trainable unless train_on_prompt makes every token
// (but the first) trainable.
TokenizedConversation tokenize_conversation(const Tokenizer& tokenizer,
                                            const std::string& template_name,
                                            const std::vector<Message>& messages,
                                            bool train_on_prompt = false);

// The prompt for generating the next assistant turn: everything up to the assistant header.
std::vector<int64_t> tokenize_prompt(const Tokenizer& tokenizer, const std::string& template_name,
                                     const std::vector<Message>& messages);

}  // namespace tiller
