#include "common/recipe/preference_data_section.h"

#include "common/tokenizer/chat_template.h"  // chat_template_names
#include "common/util/files.h"

namespace tiller {

PreferenceDataSection read_preference_data_section(ConfigReader& d) {
  PreferenceDataSection s;
  s.data.path = d.required_string("train");
  s.val_path = d.string("val", "");
  s.data.format = d.string("format", "preference");
  s.data.template_name = d.string("template", "chatml");
  s.val_fraction = d.number("val_fraction", s.val_path.empty() ? 0.1 : 0.0);
  s.data.skip_bad_lines = d.boolean("skip_bad_lines", false);
  s.data.max_records = d.integer("max_records", -1);
  d.one_of("format", s.data.format, {"preference", "hh", "ranking", "oasst"});
  d.one_of("template", s.data.template_name,
           std::set<std::string>(chat_template_names().begin(), chat_template_names().end()));
  d.require(s.val_fraction >= 0 && s.val_fraction < 1, "val_fraction", "must be in [0, 1)");
  d.require(s.val_path.empty() || s.val_fraction == 0, "val_fraction",
            "give either data.val or data.val_fraction, not both");
  d.require(s.data.max_records == -1 || s.data.max_records >= 1, "max_records",
            "must be at least 1 (or -1: all)");
  d.require(s.data.path.empty() || path_exists(s.data.path), "train",
            "file " + s.data.path + " does not exist");
  d.require(s.val_path.empty() || path_exists(s.val_path), "val",
            "file " + s.val_path + " does not exist");
  return s;
}

nlohmann::json preference_data_section_values(const PreferenceDataSection& s) {
  nlohmann::json data = {{"train", s.data.path},
                         {"format", s.data.format},
                         {"template", s.data.template_name},
                         {"skip_bad_lines", s.data.skip_bad_lines},
                         {"max_records", s.data.max_records}};
  if (s.val_path.empty())
    data["val_fraction"] = s.val_fraction;
  else
    data["val"] = s.val_path;
  return data;
}

namespace {

template <typename Example, typename Stats, typename Load, typename Split>
SplitExamples<Example, Stats> load_split(const PreferenceDataSection& section, uint64_t seed,
                                         Load load, Split split) {
  SplitExamples<Example, Stats> out;
  std::vector<Example> all = load(section.data, &out.stats);
  if (!section.val_path.empty()) {
    out.train = std::move(all);
    PreferenceDataOptions val_options = section.data;
    val_options.path = section.val_path;
    val_options.max_records = -1;
    out.val = load(val_options, &out.val_stats);
  } else if (section.val_fraction > 0) {
    split(all, section.val_fraction, seed, &out.train, &out.val);
  } else {
    out.train = std::move(all);
  }
  return out;
}

}  // namespace

SplitPairs load_split_pairs(const PreferenceDataSection& section, const Tokenizer& tokenizer,
                            uint64_t seed) {
  return load_split<PreferencePair, PreferenceStats>(
      section, seed,
      [&](const PreferenceDataOptions& o, PreferenceStats* stats) {
        return load_preference_pairs(o, tokenizer, stats);
      },
      split_preference_validation);
}

SplitRankings load_split_rankings(const PreferenceDataSection& section, const Tokenizer& tokenizer,
                                  uint64_t seed) {
  return load_split<TokenizedRanking, RankingStats>(
      section, seed,
      [&](const PreferenceDataOptions& o, RankingStats* stats) {
        return load_rankings(o, tokenizer, stats);
      },
      split_ranking_validation);
}

}  // namespace tiller
