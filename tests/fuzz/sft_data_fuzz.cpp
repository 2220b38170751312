// Fuzzes SFT data files end to end: JSONL or a JSON array (gzip when the input starts with the
// gzip magic), each record in the messages / prompt_completion / alpaca layouts, rendered with a
// chat template, tokenized and truncated; then pretraining text. Bad input must be a
// tiller::Error naming the file and line.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/data/sft_data.h"
#include "common/tokenizer/chat_template.h"
#include "common/util/error.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)tiller::fuzz::small_tokenizer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const bool gz = size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
  const std::string path = tiller::fuzz::write_input(gz ? "sft.jsonl.gz" : "sft.jsonl", data, size);
  const auto& tokenizer = tiller::fuzz::small_tokenizer();
  const auto& templates = tiller::chat_template_names();
  int round = 0;
  for (const char* format : {"messages", "prompt_completion", "alpaca"}) {
    for (bool skip : {false, true}) {
      tiller::SftDataOptions options;
      options.path = path;
      options.format = format;
      options.template_name = templates[(size + round) % templates.size()];
      options.max_seq_len = 8 + static_cast<int64_t>(size % 48);  // truncation is exercised
      options.train_on_prompt = (round++ % 3) == 0;
      options.skip_bad_lines = skip;
      tiller::DataStats stats;
      try {
        (void)tiller::load_sft_examples(options, tokenizer, &stats);
      } catch (const tiller::Error&) {
      }
    }
  }
  tiller::DataStats stats;
  try {
    (void)tiller::load_text_examples(path, tokenizer, 16, size % 2 == 0, &stats);
  } catch (const tiller::Error&) {
  }
  return 0;
}
