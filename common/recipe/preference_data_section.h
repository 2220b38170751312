// The "data" section of the stages that train on preference pairs or rankings (reward, dpo): one
// reader and one statement of it, so that the stages accept and state the same keys.
#pragma once
#include <nlohmann/json.hpp>

#include <string>

#include "common/data/preference_data.h"
#include "common/data/ranking_data.h"
#include "common/recipe/config_reader.h"

namespace tiller {

struct PreferenceDataSection {
  PreferenceDataOptions data;  // train file, format, template, skip_bad_lines, max_records
  std::string val_path;        // a validation file, or empty to split val_fraction off train
  double val_fraction = 0.1;
};

// Reads `train`, `val`, `val_fraction`, `format` (preference, hh, ranking, oasst), `template`,
// `skip_bad_lines` and `max_records`; mistakes (a missing file, val beside val_fraction) go to the
// reader's errors with their paths.
PreferenceDataSection read_preference_data_section(ConfigReader& d);

// The section as the resolved recipe states it: every value that ran, `val` or `val_fraction`.
nlohmann::json preference_data_section_values(const PreferenceDataSection& section);

// A section's examples split into training and validation, with each side's loading figures.
template <typename Example, typename Stats>
struct SplitExamples {
  std::vector<Example> train, val;
  Stats stats, val_stats;
};
using SplitPairs = SplitExamples<PreferencePair, PreferenceStats>;
using SplitRankings = SplitExamples<TokenizedRanking, RankingStats>;

// The section's pairs (formats preference, hh) or rankings (ranking, oasst): validation from
// `val_path` when given (all its records), else val_fraction of the training file chosen by
// `seed`, else none. Rankings are split whole, before any expansion into pairs.
SplitPairs load_split_pairs(const PreferenceDataSection& section, const Tokenizer& tokenizer,
                            uint64_t seed);
SplitRankings load_split_rankings(const PreferenceDataSection& section, const Tokenizer& tokenizer,
                                  uint64_t seed);

}  // namespace tiller
