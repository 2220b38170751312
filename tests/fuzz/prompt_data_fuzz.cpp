// Fuzzes RLHF prompt files end to end: records in every prompt layout (auto, prompt, messages,
// alpaca, hh), templated and tokenized, over-long prompts dropped. Bad input must be a
// tiller::Error naming the file and line.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/data/prompt_data.h"
#include "common/tokenizer/chat_template.h"
#include "common/util/error.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)tiller::fuzz::small_tokenizer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = tiller::fuzz::write_input("prompts.jsonl", data, size);
  const auto& tokenizer = tiller::fuzz::small_tokenizer();
  const auto& templates = tiller::chat_template_names();
  int round = 0;
  for (const char* format : {"auto", "prompt", "messages", "alpaca", "hh"}) {
    tiller::PromptDataOptions options;
    options.path = path;
    options.format = format;
    options.template_name = templates[(size + round) % templates.size()];
    options.max_prompt_len = 4 + static_cast<int64_t>(size % 64);
    options.skip_bad_lines = (round++ % 2) == 1;
    tiller::PromptStats stats;
    try {
      (void)tiller::load_prompts(options, tokenizer, &stats);
    } catch (const tiller::Error&) {
    }
  }
  return 0;
}
