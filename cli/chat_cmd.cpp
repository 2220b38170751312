// `tiller chat`: a conversation with a model directory on stdin and stdout, in a chat template,
// each reply printed as it is generated. Lines are user turns; /reset forgets the conversation,
// /exit (or the end of input) ends it.
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/sampling_flags.h"
#include "common/rollout/generator.h"
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/model_chat_template.h"  // model_end_of_turn_id
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "common/util/runtime.h"

namespace tiller {

namespace {

struct ChatArgs {
  std::string model, adapter, chat_template = "chatml", system;
  SamplingOptions sampling;
  bool show_prompt = false;
};

const std::string kReplacement = "\xef\xbf\xbd";  // U+FFFD: a character cut in its bytes

// Prints the text of a growing reply as its tokens come: what decoding all of them adds to what
// is already printed, held back while the last character is still missing bytes.
class ReplyPrinter {
 public:
  ReplyPrinter(const Tokenizer& tok, const std::vector<int64_t>& prompt)
      : tok_(tok), prompt_(prompt) {}
  void add(int64_t token) {
    if (token == tok_.eos_id()) return;
    reply_.push_back(token);
    const std::string text = continuation_text(tok_, prompt_, reply_, tok_.eos_id());
    const bool cut = text.size() >= 3 && text.compare(text.size() - 3, 3, kReplacement) == 0;
    if (cut || text.size() < printed_.size() || text.compare(0, printed_.size(), printed_) != 0)
      return;
    std::fputs(text.c_str() + printed_.size(), stdout);
    std::fflush(stdout);
    printed_ = text;
  }
  // The whole reply, with any tail held back printed now.
  std::string finish() {
    const std::string text = continuation_text(tok_, prompt_, reply_, tok_.eos_id());
    if (text.compare(0, printed_.size(), printed_) == 0)
      std::fputs(text.c_str() + printed_.size(), stdout);
    std::fputs("\n", stdout);
    std::fflush(stdout);
    return text;
  }

 private:
  const Tokenizer& tok_;
  const std::vector<int64_t>& prompt_;
  std::vector<int64_t> reply_;
  std::string printed_;
};

// The conversation's prompt for the next reply, dropping the oldest exchanges (never the system
// message) until prompt and reply fit the model's context.
std::vector<int64_t> fitting_prompt(const Tokenizer& tok, const ChatArgs& a,
                                    std::vector<Message>& messages, int64_t context) {
  const size_t first = a.system.empty() ? 0 : 1;
  while (true) {
    std::vector<int64_t> prompt = tokenize_prompt(tok, a.chat_template, messages);
    if (static_cast<int64_t>(prompt.size()) + a.sampling.max_new_tokens <= context) return prompt;
    check(messages.size() > first + 1,
          "chat: this turn alone does not fit the model's context of " + std::to_string(context) +
              " tokens with --max-new-tokens " + std::to_string(a.sampling.max_new_tokens));
    messages.erase(messages.begin() + static_cast<std::ptrdiff_t>(first),
                   messages.begin() + static_cast<std::ptrdiff_t>(first + 2));
    std::printf("[the oldest exchange was dropped to fit the context of %lld tokens]\n",
                static_cast<long long>(context));
  }
}

void run_chat(ChatArgs a) {
  auto [model, tok] = load_text_model(a.model, a.adapter, "", a.sampling);
  // The model's own template ends a turn with its own token (<|eot_id|>, <end_of_turn> ...).
  if (a.chat_template == "model" && model_end_of_turn_id(tok) >= 0)
    a.sampling.eos_id = model_end_of_turn_id(tok);
  a.sampling.validate();

  std::vector<Message> messages;
  if (!a.system.empty()) messages.push_back({"system", a.system});
  std::string line;
  int64_t turn = 0;
  while (std::getline(std::cin, line)) {
    if (line == "/exit") break;
    if (line == "/reset") {
      messages.resize(a.system.empty() ? 0 : 1);
      std::printf("[conversation reset]\n");
      continue;
    }
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    messages.push_back({"user", line});
    const std::vector<int64_t> prompt =
        fitting_prompt(tok, a, messages, model->config.max_position_embeddings);
    if (a.show_prompt) std::printf("[prompt] %s\n", tok.decode(prompt).c_str());
    ReplyPrinter printer(tok, prompt);
    SamplingOptions sampling = a.sampling;
    sampling.seed = a.sampling.seed + static_cast<uint64_t>(turn++);
    sampling.on_step = [&printer](const torch::Tensor& picks) {
      printer.add(picks.data_ptr<int64_t>()[0]);  // on the CPU, by on_step's contract
    };
    std::fputs("assistant> ", stdout);
    generate(*model, {prompt}, sampling);
    messages.push_back({"assistant", printer.finish()});
  }
}

}  // namespace

void add_chat_command(CLI::App& app, CommandAction& action) {
  auto args = std::make_shared<ChatArgs>();
  args->sampling.max_new_tokens = 256;
  args->sampling.temperature = 0.7;
  auto* cmd = app.add_subcommand(
      "chat", "talk with a model directory: user turns on stdin, replies streamed to stdout");
  cmd->add_option("--model", args->model, "HF model directory")->required();
  cmd->add_option("--adapter", args->adapter,
                  "a LoRA adapter directory (PEFT layout) applied to --model");
  cmd->add_option("--template", args->chat_template,
                  "the chat template (model: the model's own tokenizer_config.json chat_template)")
      ->check(CLI::IsMember(chat_template_names()))
      ->capture_default_str();
  cmd->add_option("--system", args->system, "a system message first in the conversation");
  add_sampling_flags(*cmd, args->sampling, "the first turn's; each turn adds one");
  cmd->add_flag("--show-prompt", args->show_prompt,
                "print each prompt as the model receives it (the conversation so far)");
  cmd->callback([args, &action] {
    action = [args] {
      warn_if_slow_blas();
      run_chat(*args);
      return 0;
    };
  });
}

}  // namespace tiller
