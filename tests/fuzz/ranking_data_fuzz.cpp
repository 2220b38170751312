// Fuzzes ranking data files end to end: "ranking" records ({"prompt","responses"[,"ranks"]}) and
// the Open-Assistant export (nested trees and flat messages linked by parent_id), templated,
// tokenized and truncated into reward sequences, and each ranking's expansion into pairs.
// Bad input must be a tiller::Error naming the file and line.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/data/ranking_data.h"
#include "common/tokenizer/chat_template.h"
#include "common/util/error.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)tiller::fuzz::small_tokenizer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = tiller::fuzz::write_input("rankings.jsonl", data, size);
  const auto& tokenizer = tiller::fuzz::small_tokenizer();
  const auto& templates = tiller::chat_template_names();
  int round = 0;
  for (const char* format : {"ranking", "oasst"}) {
    for (bool skip : {false, true}) {
      tiller::PreferenceDataOptions options;
      options.path = path;
      options.format = format;
      options.template_name = templates[(size + round++) % templates.size()];
      options.max_seq_len = 8 + static_cast<int64_t>(size % 64);
      options.skip_bad_lines = skip;
      tiller::RankingStats stats;
      try {
        for (const auto& ranking : tiller::load_rankings(options, tokenizer, &stats))
          (void)tiller::ranking_preference_pairs(ranking);
      } catch (const tiller::Error&) {
      }
    }
  }
  return 0;
}
