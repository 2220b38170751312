// The model's own chat template (`template: model`): the Jinja `chat_template` of the tokenizer's
// tokenizer_config.json (or chat_template.jinja beside it), rendered as transformers'
// apply_chat_template renders it, with the span of each assistant reply found for loss masking.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/jinja.h"

namespace tiller {

class ModelChatTemplate {
 public:
  // `special_tokens`: the texts of the tokenizer's special tokens (an end of turn is one of them).
  // An empty bos_token/eos_token is not passed to the template (as transformers leaves out unset
  // special tokens). Throws tiller::Error "WHERE:LINE:COL: ..." when the source is not valid or
  // supported Jinja.
  ModelChatTemplate(const std::string& source, const std::string& where, std::string bos_token,
                    std::string eos_token, std::vector<std::string> special_tokens);

  // The template of the tokenizer's directory, read once per file version. Throws tiller::Error
  // naming the file when there is none or it cannot be read.
  static std::shared_ptr<const ModelChatTemplate> of(const Tokenizer& tokenizer);

  // apply_chat_template(messages, add_generation_prompt, tokenize=False).
  std::string render(const std::vector<Message>& messages, bool add_generation_prompt) const;

  // One assistant reply in the rendered text: [begin, content_end) is what the reply's content
  // became, [content_end, end) the whitespace and special token the template closes the turn with
  // (empty when it writes none: the caller then appends EOS).
  struct Reply {
    size_t begin = 0, content_end = 0, end = 0;
  };
  // The replies of render(messages, false), in order. Each is found by rendering again with that
  // reply's content replaced by two different markers: the text that changes is the reply's.
  // Throws tiller::Error when a template renders a reply's content twice, or in another place
  // than its own turn.
  std::vector<Reply> replies(const std::vector<Message>& messages,
                             const std::string& rendered) const;

  const std::string& where() const { return template_.where(); }

 private:
  jinja::Value context(const std::vector<Message>& messages, bool add_generation_prompt) const;

  jinja::Template template_;
  std::string bos_token_, eos_token_;
  std::vector<std::string> special_tokens_;  // longest first
};

// `template: model` for tokenize_conversation / tokenize_prompt (common/tokenizer/chat_template.h):
// the rendered text is tokenized as transformers tokenizes it (no BOS added: the template writes
// its own; special tokens in the text become their ids), each assistant reply and the special
// token closing its turn trainable.
TokenizedConversation tokenize_model_conversation(const Tokenizer& tokenizer,
                                                  const std::vector<Message>& messages,
                                                  bool train_on_prompt);
std::vector<int64_t> tokenize_model_prompt(const Tokenizer& tokenizer,
                                           const std::vector<Message>& messages);

// Encodes rendered template text: the tokenizer's special tokens spelled in it become their ids,
// the text between them is encoded as encode() encodes it.
std::vector<int64_t> encode_with_special_tokens(const Tokenizer& tokenizer,
                                                const std::string& text);

// The token the template ends an assistant turn with (<|eot_id|>, <|im_end|>, <end_of_turn> ...),
// or -1 when it writes none; generation stops there as at EOS.
int64_t model_end_of_turn_id(const Tokenizer& tokenizer);

}  // namespace tiller
