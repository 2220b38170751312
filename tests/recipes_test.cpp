// Every shipped recipe passes `tiller run --check` (from the project root, as users run them).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

#include "common/recipe/recipe.h"
#include "common/util/files.h"
#include "reward/reward_stage.h"
#include "rlhf/rlhf_stage.h"
#include "sft/sft_stage.h"
#include "stages/stage_types.h"

#include "tests/test_util.h"
#include "tiller_build_paths.h"

using namespace tiller;

// The quickstart reads only what it generates (its synthetic data, written by --check itself
// into runs/quickstart/data), so it is checked everywhere; the others need ../shared/data.
TEST(Recipes, EveryShippedRecipePassesCheck) {
  const bool shared = !test::shared_file("models/stories260K/stories260K.bin").empty();
  int checked = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator(std::string(TILLER_SOURCE_DIR) + "/recipes")) {
    if (entry.path().extension() != ".json") continue;
    if (!shared && entry.path().filename() != "quickstart.json") continue;
    std::string out;
    const int rc = test::run_command("cd '" + std::string(TILLER_SOURCE_DIR) + "' && '" +
                                         test::tiller_binary() + "' run --check 'recipes/" +
                                         entry.path().filename().string() + "'",
                                     &out);
    EXPECT_EQ(rc, 0) << entry.path() << ":\n" << out;
    EXPECT_NE(out.find(": OK ("), std::string::npos) << out;
    ++checked;
  }
  EXPECT_GE(checked, shared ? 5 : 1);
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
        {"prompts", 10}}},
      {"stages",
       {{{"name", "pretrain"},
         {"type", "pretrain"},
         {"model", {{"shape", "stories260k"}}},
         {"tokenizer", {{"train", f}}},
         {"data", {{"train", f}}}},
        {{"name", "sft"}, {"type", "sft"}, {"data", {{"train", f}}}},
        {{"name", "reward"}, {"type", "reward"}, {"init", "@sft"}, {"data", {{"train", f}}}},
        rlhf,
        with_rule("ppo2", {{"rule", "contains"}, {"text", "x"}}),
        with_rule("ppo3", {{"rule", "length"}, {"min_words", 1}})}}};
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
    EXPECT_NO_THROW(parse_stage(recipe.stages[0], errors)) << config;
  }
}
