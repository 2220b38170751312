// Fuzzes preference data files end to end: records in the preference ({"prompt","chosen",
// "rejected"}, strings or message lists, optional "margin") and Anthropic HH layouts, templated,
// tokenized and truncated into reward sequences; and the HH dialogue splitter on the raw text.
// Bad input must be a tiller::Error naming the file and line.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/data/preference_data.h"
#include "common/tokenizer/chat_template.h"
#include "common/util/error.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)tiller::fuzz::small_tokenizer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = tiller::fuzz::write_input("pairs.jsonl", data, size);
  const auto& tokenizer = tiller::fuzz::small_tokenizer();
  const auto& templates = tiller::chat_template_names();
  int round = 0;
  for (const char* format : {"preference", "hh"}) {
    for (bool skip : {false, true}) {
      tiller::PreferenceDataOptions options;
      options.path = path;
      options.format = format;
      options.template_name = templates[(size + round++) % templates.size()];
      options.max_seq_len = 8 + static_cast<int64_t>(size % 64);
      options.skip_bad_lines = skip;
      tiller::PreferenceStats stats;
      try {
        (void)tiller::load_preference_pairs(options, tokenizer, &stats);
      } catch (const tiller::Error&) {
      }
    }
  }
  try {
    (void)tiller::parse_hh_dialogue(std::string(reinterpret_cast<const char*>(data), size), "hh");
  } catch (const tiller::Error&) {
  }
  return 0;
}
