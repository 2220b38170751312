// The shipped recipes: each passes `tiller run --check` (from the project root, as users run
// them), parses into its stages with its values, and a mistake in it is named by its path; the
// reference documents every key; the parsers survive what the fuzzer found.
#include <gtest/gtest.h>

#include <algorithm>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>

#include "common/data/json_records.h"
#include "common/recipe/pipeline.h"
#include "common/recipe/recipe.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "reward/reward_stage.h"
#include "rlhf/rlhf_stage.h"
#include "sft/sft_stage.h"
#include "stages/stage_types.h"

#include "tests/test_util.h"
#include "tiller_build_paths.h"

using namespace tiller;

namespace {

// Every leaf of `body` as a dotted key ("train.lr") and its value.
void leaves(const nlohmann::json& body, const std::string& prefix,
            std::vector<std::pair<std::string, nlohmann::json>>& out) {
  for (const auto& item : body.items()) {
    const std::string key = prefix + item.key();
    if (item.value().is_object())
      leaves(item.value(), key + ".", out);
    else
      out.emplace_back(key, item.value());
  }
}

nlohmann::json at_path(const nlohmann::json& object, const std::string& key) {
  const nlohmann::json* node = &object;
  for (size_t start = 0;;) {
    const size_t dot = key.find('.', start);
    const std::string part = key.substr(start, dot == std::string::npos ? dot : dot - start);
    if (!node->is_object() || !node->contains(part)) return nullptr;
    node = &(*node)[part];
    if (dot == std::string::npos) return *node;
    start = dot + 1;
  }
}

// The shipped recipes and the stages (name, type) each must parse into.
const std::map<std::string, std::vector<std::pair<std::string, std::string>>> kShipped = {
    {"arithmetic_grpo.yaml",
     {{"pretrain", "pretrain"}, {"sft", "sft"}, {"grpo", "grpo"}, {"rloo", "grpo"}}},
    {"emergence_sweep.json", {{"pretrain", "pretrain"}}},
    {"quickstart.json",
     {{"pretrain", "pretrain"},
      {"sft", "sft"},
      {"reward", "reward"},
      {"ppo", "rlhf"},
      {"dpo", "dpo"},
      {"grpo", "grpo"}}},
    {"stories260k_alpaca_lora.json",
     {{"sft_full", "sft"}, {"sft_lora", "sft"}, {"sft_lora_bf16", "sft"}}},
    {"stories260k_alpaca_sft.json", {{"sft", "sft"}}},
    {"stories260k_dpo.json", {{"dpo", "dpo"}}},
    {"stories260k_hh.json", {{"sft", "sft"}, {"reward", "reward"}, {"ppo", "rlhf"}}},
    {"stories260k_hh_reward.json", {{"reward", "reward"}}},
    {"tinystories_pretrain.json", {{"pretrain", "pretrain"}}},
    {"tinystories_sweep.json", {{"pretrain", "pretrain"}}},
};

}  // namespace

// Each shipped recipe parses into the stages it names, of the types it names, and every value it
// sets reaches the parsed config unchanged (read back through the type's stated values, which the
// resolved recipe is written from); a copy with a mistake in a stage is refused with its path.
TEST(Recipes, ShippedRecipesParseIntoTheirStagesAndValuesAndAMistakeIsNamed) {
  const bool shared = !test::shared_file("models/stories260K/stories260K.bin").empty();
  std::set<std::string> on_disk;
  for (const auto& entry :
       std::filesystem::directory_iterator(std::string(TILLER_SOURCE_DIR) + "/recipes"))
    if (entry.path().extension() == ".json" ||
        // a YAML recipe without a JSON twin (quickstart.yaml is held to quickstart.json by
        // yaml_recipe_test)
        (entry.path().extension() == ".yaml" &&
         !std::filesystem::exists(std::filesystem::path(entry.path()).replace_extension(".json"))))
      on_disk.insert(entry.path().filename().string());
  std::set<std::string> listed;
  for (const auto& [file, stages] : kShipped) listed.insert(file);
  EXPECT_EQ(on_disk, listed) << "a shipped recipe is missing from kShipped, or gone";

  for (const auto& [file, expected] : kShipped) {
    if (!shared && file != "quickstart.json" && file != "arithmetic_grpo.yaml" &&
        file != "emergence_sweep.json")
      continue;
    SCOPED_TRACE(file);
    std::string out;
    // --check writes the quickstart's synthetic data, which its stages then name; the emergence
    // sweep's corpus comes first from `eval make-suite`, as docs/eval.md runs it.
    const std::string cd = "cd '" + std::string(TILLER_SOURCE_DIR) + "' && '";
    if (file == "emergence_sweep.json") {
      ASSERT_EQ(test::run_command(cd + test::tiller_binary() +
                                      "' eval make-suite --out runs/emergence/suite --seed 1",
                                  &out),
                0)
          << out;
    }
    const std::string check = cd + test::tiller_binary() + "' run --check recipes/" + file;
    ASSERT_EQ(test::run_command(check, &out), 0) << out;
    EXPECT_NE(out.find(": OK (" + std::to_string(expected.size()) + " stages)"), std::string::npos)
        << out;
    test::InDirectory source(TILLER_SOURCE_DIR);
    ConfigErrors errors;
    const Recipe recipe = load_recipe("recipes/" + file, {}, errors);
    const auto parsed = parse_stages(stage_registry(), recipe, errors);
    ASSERT_TRUE(errors.empty()) << errors.list()[0];
    ASSERT_EQ(parsed.size(), expected.size());
    for (size_t i = 0; i < parsed.size(); ++i) {
      EXPECT_EQ(parsed[i].name, expected[i].first);
      EXPECT_EQ(parsed[i].type->type, expected[i].second);
      ASSERT_TRUE(parsed[i].type->stated_defaults) << parsed[i].type->type;
      const nlohmann::json stated = parsed[i].type->stated_defaults(parsed[i].config);
      std::vector<std::pair<std::string, nlohmann::json>> given;
      leaves(*recipe.stages[i].body, "", given);
      for (const auto& [key, value] : given) {
        if (key == "name" || key == "type") continue;
        const nlohmann::json found = at_path(stated, key);
        // A list of objects (grpo's rewards): each entry states its defaults beside what was set.
        const bool objects =
            value.is_array() && !value.empty() &&
            std::all_of(value.begin(), value.end(), [](const auto& v) { return v.is_object(); });
        if (objects && found.is_array() && found.size() == value.size()) {
          for (size_t e = 0; e < value.size(); ++e)
            for (const auto& item : value[e].items())
              EXPECT_EQ(found[e].value(item.key(), nlohmann::json()), item.value())
                  << parsed[i].name << "." << key << "[" << e << "]." << item.key();
          continue;
        }
        EXPECT_EQ(found, value) << parsed[i].name << "." << key;
      }
    }
    // A mistake in every stage: all refused at once, each with its path.
    std::string mistakes;
    for (size_t i = 0; i < expected.size(); ++i)
      mistakes += " stages." + std::to_string(i) + ".train.stepz=3";
    EXPECT_EQ(test::run_command(check + mistakes, &out), 1) << out;
    // (a YAML recipe's errors say where the value came from: "stages[0].train.stepz (override
    // stages.0.train.stepz=3): unknown key")
    for (size_t i = 0; i < expected.size(); ++i)
      EXPECT_TRUE(
          std::regex_search(out, std::regex("stages\\[" + std::to_string(i) +
                                            "\\]\\.train\\.stepz( \\([^)]*\\))?: unknown key")))
          << out;
  }
  if (!shared) GTEST_SKIP() << "checked only quickstart.json: ../shared/data is absent";
}

// docs/recipes.md names every key the parsers read (a key is documented as `section.key` or, in
// tables that list a section's keys, as `key`). A recipe that uses every stage type and every
// branch is parsed with an observer recording each key looked up.
TEST(Recipes, ReferenceDocumentsEveryKeyTheParsersRead) {
  const std::string dir = test::temp_dir("reference");
  std::ofstream(dir + "/f.jsonl") << "{}\n";
  const std::string f = dir + "/f.jsonl";
  const nlohmann::json rlhf = {{"name", "ppo"},
                               {"type", "rlhf"},
                               {"data", {{"prompts", f}}},
                               {"critic_lora", {{"rank", 4}}},
                               {"ground_truth", {{"rule", "regex"}, {"pattern", "x"}}}};
  auto with_rule = [&](const std::string& name, const nlohmann::json& rule) {
    auto s = rlhf;
    s["name"] = name;
    s["ground_truth"] = rule;
    return s;
  };
  const nlohmann::json recipe = {
      {"run", {{"name", "r"}}},
      {"base", {{"hf", dir}}},
      {"synthetic_data",
       {{"dir", dir + "/syn"},
        {"corpus_stories", 10},
        {"sft_examples", 10},
        {"preference_pairs", 10},
        {"prompts", 10},
        {"arithmetic",
         {{"corpus_problems", 10},
          {"sft_examples", 10},
          {"prompts", 10},
          {"max_operand", 20},
          {"max_factor", 5},
          {"operations", "+*"}}}}},
      {"stages",
       {{{"name", "pretrain"},
         {"type", "pretrain"},
         {"model", {{"shape", "stories260k"}}},
         {"tokenizer", {{"train", f}}},
         {"data", {{"train", f}}}},
        {{"name", "sft"},
         {"type", "sft"},
         {"data", {{"train", f}}},
         {"lora",
          {{"rank", 4},
           {"alpha", 8},
           {"dropout", 0.1},
           {"targets", "all-linear"},
           {"init", "gaussian"},
           {"rslora", true},
           {"modules_to_save", {"lm_head"}},
           {"init_adapter", dir}}}},
        {{"name", "reward"}, {"type", "reward"}, {"init", "@sft"}, {"data", {{"train", f}}}},
        {{"name", "clean"},
         {"type", "prepare"},
         {"inputs",
          {{{"path", f}, {"format", "jsonl"}, {"field", "text"}, {"documents", "lines"}}}},
         {"tokenizer", f},
         {"threads", 1},
         {"memory_mb", 64},
         {"max_document_bytes", 1000},
         {"bad_documents", "skip"},
         {"normalize", nlohmann::json::object()},
         {"boilerplate", nlohmann::json::object()},
         {"c4", nlohmann::json::object()},
         {"gopher_quality", nlohmann::json::object()},
         {"gopher_repetition", nlohmann::json::object()},
         {"pii", nlohmann::json::object()},
         {"exact_dedup", true},
         {"near_dedup", nlohmann::json::object()},
         {"validation_fraction", 0.1},
         {"shard_tokens", 100},
         {"examples", 2}},
        rlhf,
        with_rule("ppo2", {{"rule", "contains"}, {"text", "x"}}),
        with_rule("ppo3", {{"rule", "length"}, {"min_words", 1}}),
        {{"name", "grpo"},
         {"type", "grpo"},
         {"algorithm", "dapo"},
         {"data", {{"prompts", f}}},
         {"rewards",
          {{{"type", "math_answer"}, {"tolerance", 0.01}, {"missing", -1}},
           {{"type", "regex"}, {"pattern", "x"}, {"ignore_case", true}},
           {{"type", "contains"}, {"text", "x"}, {"name", "has_x"}, {"weight", 0.5}},
           {{"type", "length"}, {"max_tokens", 10}, {"min_tokens", 1}, {"penalty", 0.1}},
           {{"type", "model"}, {"model", "@reward"}, {"max_seq_len", 64}},
           {{"type", "command"},
            {"command", {"true"}},
            {"timeout_seconds", 5},
            {"on_timeout", 0},
            {"working_dir", dir}}}}}}}};
  write_file_atomic(dir + "/r.json", recipe.dump());

  std::set<std::string> keys;
  ConfigReader::set_key_observer([&](const std::string& path) {
    const std::regex stage_prefix(R"(^stages\[\d+\]\.)");
    keys.insert(std::regex_replace(path, stage_prefix, ""));
  });
  ConfigErrors errors;
  auto parsed = load_recipe(dir + "/r.json", {}, errors);
  for (const auto& stage : parsed.stages) {
    parse_stage(stage, errors);
  }
  ConfigReader::set_key_observer(nullptr);
  ASSERT_GT(keys.size(), 80u);

  const std::string docs = read_file(std::string(TILLER_SOURCE_DIR) + "/docs/recipes.md");
  std::string missing;
  for (const auto& key : keys) {
    if (key.rfind("model.", 0) == 0 && key != "model.shape") continue;  // "<HF config fields>"
    const std::string last = key.substr(key.rfind('.') + 1);
    // A section is documented by its heading or by its keys' `section.key` spelling.
    const bool documented = docs.find("`" + key + "`") != std::string::npos ||
                            docs.find("`" + last + "`") != std::string::npos ||
                            docs.find("`" + key + ".") != std::string::npos ||
                            docs.find("## " + key + "\n") != std::string::npos ||
                            docs.find("## " + key + " ") != std::string::npos;
    if (!documented) missing += " " + key;
  }
  EXPECT_TRUE(missing.empty()) << "docs/recipes.md does not document:" << missing;
}

// Found by recipe_fuzz: beside a stage whose "name" is not a string, an override made
// apply_override throw nlohmann's type_error, which nothing caught (a crash, not an error line).
TEST(Recipes, OverridesSkipStagesWhoseNameIsNotAString) {
  auto j = nlohmann::json::parse(R"({"stages": [{"name": 5, "type": "sft"}, {"name": "sft"}]})");
  EXPECT_NO_THROW(apply_override(j, "sft.train.steps=10"));
  EXPECT_EQ(j["stages"][1]["train"]["steps"], 10);
  EXPECT_NO_THROW(apply_override(j, "x.a=1"));
  EXPECT_EQ(j["x"]["a"], 1);

  const std::string dir = test::temp_dir("override_bad_name");
  std::ofstream(dir + "/r.json") << R"({"stages": [{"name": 5, "type": "sft"}]})";
  ConfigErrors errors;
  EXPECT_NO_THROW(load_recipe(dir + "/r.json", {"x.a=1"}, errors));
  EXPECT_FALSE(errors.empty());  // the stage's name is reported by the recipe check
}

// Found reading for the recipe fuzzer: an init directory whose config.json has a vocab_size that
// is not an integer (or is not an object) made parse_sft_stage throw nlohmann's type_error.
TEST(Recipes, InitConfigWithAMalformedVocabSizeIsLeftToTheModelLoader) {
  const std::string dir = test::temp_dir("init_bad_vocab");
  for (const std::string config : {R"({"vocab_size": "many"})", "[1, 2]"}) {
    make_directories(dir + "/init");
    std::ofstream(dir + "/init/config.json") << config;
    nlohmann::json stage = nlohmann::json::parse(R"({"name": "sft", "type": "sft"})");
    stage["init"] = dir + "/init";
    stage["tokenizer"] = {{"train", dir + "/r.json"}, {"vocab_size", 300}};
    stage["data"] = {{"train", dir + "/r.json"}};
    nlohmann::json recipe_json = nlohmann::json::object();
    recipe_json["stages"] = nlohmann::json::array({stage});
    std::ofstream(dir + "/r.json") << recipe_json.dump();
    ConfigErrors errors;
    const Recipe recipe = load_recipe(dir + "/r.json", {}, errors);
    ASSERT_EQ(recipe.stages.size(), 1u);
    std::any parsed;
    EXPECT_NO_THROW(parsed = parse_stage(recipe.stages[0], errors)) << config;
    // Parsed in full (the init directory kept), the vocabulary left for the loader to report.
    const auto* sft = std::any_cast<SftStageConfig>(&parsed);
    ASSERT_NE(sft, nullptr) << config;
    EXPECT_EQ(sft->init, dir + "/init");
    for (const auto& e : errors.list())
      EXPECT_EQ(e.find("vocab_size"), std::string::npos) << config << ": " << e;
  }
}

// Found by recipe_fuzz: a number beyond int64's range for an integer key was cast (undefined
// behaviour); it is refused as not an integer.
TEST(Recipes, AnIntegerKeyBeyondInt64IsRefusedNotCast) {
  for (double value : {1e30, -1e30, 9223372036854775808.0, 2.5}) {
    const nlohmann::json object = {{"steps", value}};
    ConfigErrors errors;
    {
      ConfigReader reader(object, "train", errors);
      EXPECT_EQ(reader.integer("steps", 5), 5) << value;
    }
    ASSERT_EQ(errors.list().size(), 1u) << value;
    EXPECT_NE(errors.list()[0].find("train.steps: expected an integer"), std::string::npos)
        << errors.list()[0];
  }
  const nlohmann::json whole = {{"steps", 12.0}};
  ConfigErrors errors;
  ConfigReader reader(whole, "train", errors);
  EXPECT_EQ(reader.integer("steps", 5), 12);
}

// Found by recipe_fuzz: a number beyond double's range (1e999) made nlohmann's parser throw
// out_of_range, which only parse_error handlers were waiting for: an abort, not an error line.
// Recipes, overrides and data files alike give one error naming the file (or take the override
// as text).
TEST(Recipes, ANumberBeyondDoubleIsAnErrorNamingTheFileNotACrash) {
  const std::string dir = test::temp_dir("number_overflow");
  std::ofstream(dir + "/r.json") << R"({"stages": [{"mean": 665E666, "name": "x"}]})";
  const std::string recipe_error = test::error_of([&] {
    ConfigErrors errors;
    load_recipe(dir + "/r.json", {}, errors);
    if (!errors.empty()) throw tiller::Error(errors.list()[0]);
  });
  EXPECT_NE(recipe_error.find(dir + "/r.json"), std::string::npos) << recipe_error;
  EXPECT_NE(recipe_error.find("too large"), std::string::npos) << recipe_error;

  auto j = nlohmann::json::parse(R"({"stages": [{"name": "sft"}]})");
  EXPECT_NO_THROW(apply_override(j, "sft.train.lr=1e999"));
  EXPECT_EQ(j["stages"][0]["train"]["lr"], "1e999");

  std::ofstream(dir + "/d.jsonl") << "{\"prompt\": \"a\"}\n{\"prompt\": 1e999}\n";
  const std::string line_error = test::error_of([&] { read_json_records(dir + "/d.jsonl"); });
  EXPECT_NE(line_error.find(dir + "/d.jsonl:2"), std::string::npos) << line_error;
  RecordReadOptions skip;
  skip.skip_bad_lines = true;
  EXPECT_EQ(read_json_records(dir + "/d.jsonl", skip).skipped, 1);
  std::ofstream(dir + "/d.json") << "[{\"prompt\": 1e999}]";
  EXPECT_NE(test::error_of([&] { read_json_records(dir + "/d.json"); }).find(dir + "/d.json"),
            std::string::npos);
}

// An override is text from the command line: bytes that are not UTF-8 became a JSON string that
// nlohmann refuses to print, and the first message quoting the value aborted (yaml_recipe_fuzz).
TEST(Recipes, AnOverrideThatIsNotUtf8IsAnErrorNamingItsKeyNotACrash) {
  auto j = nlohmann::json::parse(R"({"stages": [{"name": "ppo", "kl": {"beta": 0.1}}]})");
  const std::string value_error = test::error_of([&] { apply_override(j, "ppo.kl.beta=\xff"); });
  EXPECT_NE(value_error.find("ppo.kl.beta"), std::string::npos) << value_error;
  EXPECT_NE(value_error.find("not UTF-8"), std::string::npos) << value_error;
  EXPECT_EQ(j["stages"][0]["kl"]["beta"], 0.1);  // nothing half-applied
  const std::string key_error = test::error_of([&] { apply_override(j, "ppo.\xc3(=1"); });
  EXPECT_NE(key_error.find("key is not UTF-8"), std::string::npos) << key_error;
  EXPECT_NO_THROW(apply_override(j, "ppo.kl.estimator=k\xc3\xa9"));  // é is UTF-8
  EXPECT_NO_THROW((void)j.dump());
}
