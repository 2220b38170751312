#include "rlhf/reward_functions.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <regex>
#include <set>

#include "common/util/error.h"
#include "rlhf/command_reward.h"
#include "rlhf/ground_truth.h"
#include "rlhf/math_answer.h"

namespace tiller {

namespace {

std::string index_path(const std::string& path, size_t index) {
  return path + "[" + std::to_string(index) + "]";
}

std::regex compile_pattern(const std::string& pattern, bool ignore_case) {
  auto flags = std::regex::ECMAScript;
  if (ignore_case) flags |= std::regex::icase;
  return std::regex(pattern, flags);
}

// ---------------------------------------------------------------------------------------------
// Parsing: each type's own keys, read through the entry's reader; returned as the values that run.

nlohmann::json parse_math_answer(ConfigReader& r) {
  const double tolerance = r.number("tolerance", 1e-6);
  const double missing = r.number("missing", 0.0);
  r.require(std::isfinite(tolerance) && tolerance >= 0, "tolerance", "must be a number >= 0");
  r.require(std::isfinite(missing), "missing", "must be a finite number");
  return {{"tolerance", tolerance}, {"missing", missing}};
}

nlohmann::json parse_regex(ConfigReader& r) {
  const std::string pattern = r.required_string("pattern");
  const bool ignore_case = r.boolean("ignore_case", false);
  r.require(!pattern.empty() || !r.has("pattern"), "pattern", "must not be empty");
  try {
    (void)compile_pattern(pattern, ignore_case);
  } catch (const std::regex_error& e) {
    r.require(false, "pattern", "invalid regular expression: " + std::string(e.what()));
  }
  return {{"pattern", pattern}, {"ignore_case", ignore_case}};
}

nlohmann::json parse_contains(ConfigReader& r) {
  const std::string text = r.required_string("text");
  r.require(!text.empty() || !r.has("text"), "text", "must not be empty");
  return {{"text", text}, {"ignore_case", r.boolean("ignore_case", false)}};
}

nlohmann::json parse_length(ConfigReader& r) {
  const int64_t max_tokens = r.integer("max_tokens", -1);
  const int64_t min_tokens = r.integer("min_tokens", 0);
  const double penalty = r.number("penalty", 0.0);
  r.require(max_tokens >= -1, "max_tokens", "must be >= 0 (or -1: no upper bound)");
  r.require(min_tokens >= 0, "min_tokens", "must be >= 0");
  r.require(max_tokens >= 0 || min_tokens > 0, "max_tokens",
            "a length reward needs max_tokens or min_tokens");
  r.require(max_tokens < 0 || max_tokens >= min_tokens, "max_tokens", "must be >= min_tokens");
  r.require(r.has("penalty"), "penalty",
            "required key is missing (the score taken away per token outside the bounds)");
  r.require(std::isfinite(penalty) && penalty >= 0, "penalty", "must be a number >= 0");
  return {{"max_tokens", max_tokens}, {"min_tokens", min_tokens}, {"penalty", penalty}};
}

nlohmann::json parse_model(ConfigReader& r) {
  const std::string model = r.required_string("model");
  const int64_t max_seq_len = r.integer("max_seq_len", 0);
  r.require(!model.empty() || !r.has("model"), "model", "must not be empty");
  r.require(max_seq_len >= 0, "max_seq_len", "must be >= 0 (0: the stage's default)");
  return {{"model", model}, {"max_seq_len", max_seq_len}};
}

// The verifier's argv: a non-empty list of strings, the program first.
// One parser for the command reward's keys: what make_command_reward reads is what is stated.
nlohmann::json parse_command(ConfigReader& r) {
  return read_command_reward_options(r).values();
}

using OptionsParser = nlohmann::json (*)(ConfigReader&);

// Every type of reward function, with the parser of its own keys.
const std::map<std::string, OptionsParser>& options_parsers() {
  static const std::map<std::string, OptionsParser> parsers = {
      {"math_answer", parse_math_answer}, {"regex", parse_regex}, {"contains", parse_contains},
      {"length", parse_length},           {"model", parse_model}, {"command", parse_command}};
  return parsers;
}

// A name fit for a metrics key: letters, digits, "_", "-", ".".
bool valid_name(const std::string& name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '_' || c == '-' || c == '.';
  });
}

// One entry of the list; its name stays "" unless the entry gives one.
RewardFunctionSpec parse_entry(const nlohmann::json& entry, const std::string& path,
                               ConfigErrors& errors) {
  RewardFunctionSpec spec;
  spec.options = nlohmann::json::object();
  if (entry.is_null()) {
    errors.add(path, "expected a reward function (an object with a type), got null");
    return spec;
  }
  ConfigReader r(entry, path, errors);
  spec.type = r.required_string("type");
  spec.weight = r.number("weight", 1.0);
  r.require(std::isfinite(spec.weight), "weight", "must be a finite number");
  if (r.has("name")) {
    spec.name = r.string("name", "");
    r.require(valid_name(spec.name), "name", "must be letters, digits, '_', '-' or '.'");
  }
  const auto parser = options_parsers().find(spec.type);
  if (parser != options_parsers().end()) {
    spec.options = parser->second(r);
  } else if (!spec.type.empty()) {
    std::set<std::string> types;
    for (const auto& known : options_parsers()) types.insert(known.first);
    r.one_of("type", spec.type, types);
  }
  return spec;
}

// Names given in the recipe must differ; the others are their type, suffixed _2, _3 when taken.
void name_functions(std::vector<RewardFunctionSpec>& specs, const std::string& path,
                    ConfigErrors& errors) {
  std::set<std::string> taken;
  for (size_t i = 0; i < specs.size(); ++i)
    if (!specs[i].name.empty() && !taken.insert(specs[i].name).second)
      errors.add(index_path(path, i) + ".name",
                 "'" + specs[i].name + "' already names another reward function");
  for (auto& spec : specs) {
    if (!spec.name.empty()) continue;
    spec.name = spec.type;
    for (int n = 2; taken.count(spec.name); ++n) spec.name = spec.type + "_" + std::to_string(n);
    taken.insert(spec.name);
  }
}

// ---------------------------------------------------------------------------------------------
// The rule functions: each scores one episode at a time.

using EpisodeRule = std::function<double(const ScoredEpisode&)>;

class PerEpisodeReward : public RewardFunction {
 public:
  explicit PerEpisodeReward(EpisodeRule rule) : rule_(std::move(rule)) {}
  std::vector<double> score(const std::vector<ScoredEpisode>& episodes) override {
    std::vector<double> scores;
    scores.reserve(episodes.size());
    for (const auto& episode : episodes) scores.push_back(rule_(episode));
    return scores;
  }

 private:
  EpisodeRule rule_;
};

EpisodeRule math_answer_rule(const RewardFunctionSpec& spec) {
  const double tolerance = spec.options.at("tolerance").get<double>();
  const double missing = spec.options.at("missing").get<double>();
  const std::string name = spec.name;
  return [=](const ScoredEpisode& episode) {
    check(!episode.answer.empty(), "reward function '" + name + "': the prompt \"" +
                                       episode.prompt.substr(0, 60) +
                                       "\" has no reference answer (give the data an answer)");
    const auto answer = extract_final_answer(episode.response);
    if (!answer) return missing;
    return answers_match(*answer, episode.answer, tolerance) ? 1.0 : 0.0;
  };
}

// regex and contains: the ground-truth rules' own matching (rlhf/ground_truth.h), 1 or 0.
EpisodeRule text_rule(const RewardFunctionSpec& spec) {
  GroundTruthRule rule;
  rule.kind = spec.type;
  rule.ignore_case = spec.options.at("ignore_case").get<bool>();
  if (spec.type == "regex") {
    rule.pattern = spec.options.at("pattern").get<std::string>();
    rule.compiled =
        std::make_shared<const std::regex>(compile_pattern(rule.pattern, rule.ignore_case));
  } else {
    rule.text = spec.options.at("text").get<std::string>();
  }
  return [rule](const ScoredEpisode& episode) { return rule.score(episode.response); };
}

// -penalty per response token (EOS included when produced) above max_tokens or below min_tokens.
EpisodeRule length_rule(const RewardFunctionSpec& spec) {
  const int64_t max_tokens = spec.options.at("max_tokens").get<int64_t>();
  const int64_t min_tokens = spec.options.at("min_tokens").get<int64_t>();
  const double penalty = spec.options.at("penalty").get<double>();
  return [=](const ScoredEpisode& episode) {
    const auto tokens = static_cast<int64_t>(episode.response_ids.size());
    const int64_t over = max_tokens >= 0 ? std::max<int64_t>(0, tokens - max_tokens) : 0;
    const int64_t under = std::max<int64_t>(0, min_tokens - tokens);
    return -penalty * static_cast<double>(over + under);
  };
}

std::unique_ptr<RewardFunction> build_function(const RewardFunctionSpec& spec,
                                               const RewardFunctionFactory& model_factory) {
  std::unique_ptr<RewardFunction> function;
  if (spec.type == "model") {
    check(static_cast<bool>(model_factory), "reward function '" + spec.name +
                                                "': type model needs a reward model, and this "
                                                "stage loads none");
    function = model_factory(spec);
  } else if (spec.type == "command") {
    function = make_command_reward(spec);
  } else {
    function = make_rule_reward(spec);
  }
  check(function != nullptr,
        "reward function '" + spec.name + "' (type " + spec.type + ") could not be built");
  return function;
}

}  // namespace

std::vector<RewardFunctionSpec> parse_reward_functions(const nlohmann::json& json,
                                                       const std::string& path,
                                                       ConfigErrors& errors) {
  if (!json.is_array() || json.empty()) {
    errors.add(path, "must be a non-empty list of reward functions (online RL learns from them)");
    return {};
  }
  std::vector<RewardFunctionSpec> specs;
  for (size_t i = 0; i < json.size(); ++i)
    specs.push_back(parse_entry(json[i], index_path(path, i), errors));
  name_functions(specs, path, errors);
  return specs;
}

nlohmann::json reward_function_values(const std::vector<RewardFunctionSpec>& specs) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& spec : specs) {
    nlohmann::json entry = {{"type", spec.type}, {"name", spec.name}, {"weight", spec.weight}};
    if (spec.options.is_object()) entry.update(spec.options);
    list.push_back(std::move(entry));
  }
  return list;
}

std::unique_ptr<RewardFunction> make_rule_reward(const RewardFunctionSpec& spec) {
  static const std::map<std::string, EpisodeRule (*)(const RewardFunctionSpec&)> rules = {
      {"math_answer", math_answer_rule},
      {"regex", text_rule},
      {"contains", text_rule},
      {"length", length_rule}};
  const auto rule = rules.find(spec.type);
  check(rule != rules.end(), "reward function '" + spec.name + "': type '" + spec.type +
                                 "' is not a rule (math_answer, regex, contains, length)");
  try {
    return std::make_unique<PerEpisodeReward>(rule->second(spec));
  } catch (const nlohmann::json::exception& e) {
    throw Error("reward function '" + spec.name + "': options not as parse_reward_functions " +
                "states them: " + e.what());
  }
}

RewardSet::RewardSet(const std::vector<RewardFunctionSpec>& specs,
                     const RewardFunctionFactory& model_factory)
    : specs_(specs) {
  check(!specs_.empty(), "rewards: no reward function to score the episodes with");
  for (const auto& spec : specs_) functions_.push_back(build_function(spec, model_factory));
}

RewardScores RewardSet::score(const std::vector<ScoredEpisode>& episodes) {
  RewardScores scores;
  scores.total.assign(episodes.size(), 0.0);
  for (size_t f = 0; f < functions_.size(); ++f) {
    const RewardFunctionSpec& spec = specs_[f];
    std::vector<double> values = functions_[f]->score(episodes);
    check(values.size() == episodes.size(), "reward function '" + spec.name + "' gave " +
                                                std::to_string(values.size()) + " scores for " +
                                                std::to_string(episodes.size()) + " episodes");
    for (size_t i = 0; i < values.size(); ++i) {
      check(std::isfinite(values[i]), "reward function '" + spec.name + "' gave episode " +
                                          std::to_string(i) + " a non-finite score");
      scores.total[i] += spec.weight * values[i];
    }
    scores.names.push_back(spec.name);
    scores.by_name.push_back(std::move(values));
  }
  return scores;
}

}  // namespace tiller
