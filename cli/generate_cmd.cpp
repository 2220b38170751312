// `tiller generate`: sample completions from a model directory.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "cli/sampling_flags.h"
#include "common/rollout/generator.h"
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/model_chat_template.h"  // model_end_of_turn_id
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "common/util/runtime.h"

namespace tiller {

namespace {

struct GenerateArgs {
  std::string model, adapter, tokenizer, prompt, prompts_file, out_file;
  bool has_prompt = false;  // --prompt given, maybe as "" (BOS alone: unconditional generation)
  SamplingOptions sampling;
  bool no_bos = false;
  std::string chat_template;  // wrap each prompt as a user turn in this chat template
};

// Reads {"prompt": "..."} lines; errors name file and line.
std::vector<std::string> read_prompt_lines(const std::string& path) {
  std::istringstream in(read_file(path));
  std::vector<std::string> prompts;
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(number);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      throw Error(where + ": invalid JSON");
    }
    check(j.is_object() && j.contains("prompt") && j["prompt"].is_string(),
          where + ": expected an object with a string \"prompt\"");
    prompts.push_back(j["prompt"].get<std::string>());
  }
  check(!prompts.empty(), path + ": no prompts");
  return prompts;
}

void run_generate(GenerateArgs a) {
  check(!a.model.empty(), "generate: --model is required");
  check(a.has_prompt == a.prompts_file.empty(), "generate: give one of --prompt and --prompts");
  check(a.prompts_file.empty() || !a.out_file.empty(), "generate: --prompts needs --out");
  auto [model, tok] = load_text_model(a.model, a.adapter, a.tokenizer, a.sampling);
  // The model's own template ends a turn with its own token (<|eot_id|>, <end_of_turn> ...).
  if (a.chat_template == "model" && model_end_of_turn_id(tok) >= 0)
    a.sampling.eos_id = model_end_of_turn_id(tok);

  std::vector<std::string> texts = a.prompts_file.empty() ? std::vector<std::string>{a.prompt}
                                                          : read_prompt_lines(a.prompts_file);
  std::vector<std::vector<int64_t>> prompts;
  for (const auto& text : texts) {
    prompts.push_back(a.chat_template.empty()
                          ? tok.encode(text, /*add_bos=*/!a.no_bos)
                          : tokenize_prompt(tok, a.chat_template, {{"user", text}}));
  }
  auto batch = generate(*model, prompts, a.sampling);

  if (a.prompts_file.empty()) {
    std::vector<int64_t> all = prompts[0];
    for (int64_t id : batch.response(0)) all.push_back(id);
    std::printf("%s\n", completion_text(tok, all, tok.eos_id()).c_str());
    return;
  }
  std::string out;
  for (int64_t b = 0; b < batch.batch(); ++b) {
    auto response = batch.response(b);
    nlohmann::json j = {{"prompt", texts[b]},
                        {"completion", continuation_text(tok, prompts[b], response, tok.eos_id())},
                        {"tokens", response},
                        {"finished", batch.ended_with_eos[b].item<bool>()}};
    out += j.dump() + "\n";
  }
  write_file_atomic(a.out_file, out);
  std::printf("wrote %lld completions to %s\n", (long long)batch.batch(), a.out_file.c_str());
}

}  // namespace

void add_generate_command(CLI::App& app, CommandAction& action) {
  auto gen = std::make_shared<GenerateArgs>();
  auto* gen_cmd = app.add_subcommand("generate", "sample completions from a model directory");
  gen_cmd->add_option("--model", gen->model, "HF model directory")->required();
  gen_cmd->add_option("--adapter", gen->adapter,
                      "a LoRA adapter directory (PEFT layout) applied to --model");
  gen_cmd->add_option("--tokenizer", gen->tokenizer,
                      "tokenizer.model or tokenizer.json (default: the model directory's)");
  gen_cmd->add_option("--prompt", gen->prompt, "prompt text")->each([gen](const std::string&) {
    gen->has_prompt = true;
  });
  gen_cmd->add_option("--prompts", gen->prompts_file, "JSONL file of {\"prompt\": ...} lines");
  gen_cmd->add_option("--out", gen->out_file, "JSONL output for --prompts");
  add_sampling_flags(*gen_cmd, gen->sampling, "seed of the sampling");
  gen_cmd->add_flag("--no-bos", gen->no_bos, "do not prepend BOS to prompts");
  gen_cmd
      ->add_option("--template", gen->chat_template,
                   "wrap each prompt as a user turn of this chat template (as in SFT; model: the "
                   "model's own tokenizer_config.json chat_template)")
      ->check(CLI::IsMember(chat_template_names()));
  gen_cmd->callback([gen, &action] {
    action = [gen] {
      warn_if_slow_blas();
      run_generate(*gen);
      return 0;
    };
  });
}

}  // namespace tiller
