// The "data" section of the stages that train on preference pairs or rankings (reward, dpo): one
// reader and one statement of it, so that the stages accept and state the same keys.
#pragma once
#include <nlohmann/json.hpp>

#include <string>

#include "common/data/preference_data.h"
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

}  // namespace tiller
