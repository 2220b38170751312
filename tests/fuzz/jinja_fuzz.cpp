// Fuzzes the Jinja renderer on any template text: parse, then render against a conversation (as
// `template: model` does) with and without the generation prompt, then find each reply's span.
// A template that is not valid, unsupported, raising, looping or nesting without end must be a
// tiller::Error naming where, never a crash, a hang or unbounded memory.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/tokenizer/model_chat_template.h"
#include "common/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string source(reinterpret_cast<const char*>(data), size);
  const std::vector<tiller::Message> conversation = {{"system", "Be brief."},
                                                     {"user", "Hi \xc3\xa9 {{ x }}"},
                                                     {"assistant", " Hello "},
                                                     {"user", ""},
                                                     {"assistant", "Bye"}};
  try {
    const tiller::ModelChatTemplate tmpl(source, "fuzz", "<s>", "</s>",
                                         {"<s>", "</s>", "<|im_end|>"});
    (void)tmpl.render(conversation, true);
    const std::string text = tmpl.render(conversation, false);
    for (const auto& reply : tmpl.replies(conversation, text)) {
      if (reply.begin > reply.content_end || reply.content_end > reply.end ||
          reply.end > text.size())
        __builtin_trap();  // a span outside the text
    }
  } catch (const tiller::Error&) {
  }
  return 0;
}
