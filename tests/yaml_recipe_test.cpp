// YAML recipes: the core-schema scalars, the constructs refused with their lines, the recipe
// checks naming YAML lines, overrides, and recipes/quickstart.yaml parsing as quickstart.json does.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/recipe/pipeline.h"
#include "common/recipe/recipe.h"
#include "common/recipe/yaml_recipe.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "stages/stage_types.h"

#include "tests/test_util.h"
#include "tiller_build_paths.h"

using namespace tiller;

namespace {

nlohmann::json yaml(const std::string& text) {
  return parse_yaml(text, "t.yaml").json;
}

std::string yaml_error(const std::string& text) {
  return test::error_of([&] { parse_yaml(text, "t.yaml"); });
}

// Every mistake load_recipe and the stages' parsers find in the file, overrides applied.
std::vector<std::string> recipe_errors(const std::string& path,
                                       const std::vector<std::string>& overrides = {}) {
  ConfigErrors errors;
  const Recipe recipe = load_recipe(path, overrides, errors);
  parse_stages(stage_registry(), recipe, errors);
  return errors.list();
}

bool has_error(const std::vector<std::string>& errors, const std::string& expected) {
  for (const auto& e : errors)
    if (e == expected) return true;
  return false;
}

std::string joined(const std::vector<std::string>& errors) {
  std::string all;
  for (const auto& e : errors) all += e + "\n";
  return all;
}

}  // namespace

TEST(YamlRecipe, ScalarsFollowTheYaml12CoreSchema) {
  const nlohmann::json j = yaml(R"(
yes_t: true
yes_cap: True
no_f: false
nothing: null
tilde: ~
empty:
int: 42
negative: -7
plus: +3
hex: 0x1F
octal: 0o17
lr: 1e-4
lr2: 3.0e-4
half: .5
version: 1.10
quoted_int: "1"
single_quoted: '3.0e-4'
quoted_null: "null"
tagged: !!str 12
text: hello world
yaml11_bool: yes
on: off
date: 2024-01-01
list: [1, two, "3"]
)");
  EXPECT_EQ(j["yes_t"], true);
  EXPECT_EQ(j["yes_cap"], true);
  EXPECT_EQ(j["no_f"], false);
  for (const char* key : {"nothing", "tilde", "empty"}) EXPECT_TRUE(j[key].is_null()) << key;
  EXPECT_TRUE(j["int"].is_number_integer());
  EXPECT_EQ(j["int"], 42);
  EXPECT_EQ(j["negative"], -7);
  EXPECT_EQ(j["plus"], 3);
  EXPECT_EQ(j["hex"], 31);
  EXPECT_EQ(j["octal"], 15);
  EXPECT_TRUE(j["lr"].is_number_float());
  EXPECT_EQ(j["lr"].get<double>(), 1e-4);
  EXPECT_EQ(j["lr2"].get<double>(), 3.0e-4);
  EXPECT_EQ(j["half"].get<double>(), 0.5);
  EXPECT_EQ(j["version"].get<double>(), 1.1);
  EXPECT_EQ(j["quoted_int"], "1");
  EXPECT_EQ(j["single_quoted"], "3.0e-4");
  EXPECT_EQ(j["quoted_null"], "null");
  EXPECT_EQ(j["tagged"], "12");
  EXPECT_EQ(j["text"], "hello world");
  EXPECT_EQ(j["yaml11_bool"], "yes");  // YAML 1.1's booleans are strings in 1.2
  EXPECT_EQ(j["on"], "off");
  EXPECT_EQ(j["date"], "2024-01-01");
  EXPECT_EQ(j["list"], nlohmann::json::parse(R"([1, "two", "3"])"));
}

TEST(YamlRecipe, IntegersBeyond64BitsBecomeNumbersAsInJson) {
  const nlohmann::json j = yaml("u: 18446744073709551615\nbig: 123456789012345678901234\n");
  EXPECT_EQ(j["u"], nlohmann::json::parse("18446744073709551615"));
  EXPECT_EQ(j["big"], nlohmann::json::parse("123456789012345678901234"));
}

// What JSON cannot hold or what would be read ambiguously: one line each, at its place.
TEST(YamlRecipe, RefusesWhatJsonCannotHoldWithItsLine) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"a: 1\nb: 2\na: 3\n", "t.yaml:3:1: duplicate key 'a' (first at line 1)"},
      {"a: 1\n2: x\n", "t.yaml:2:1: a key must be a string, got number 2 (quote it)"},
      {"a: 1\n? [x]\n: 2\n", "t.yaml:2:3: a key must be a string, got array"},
      {"a: &anchor 1\n", "t.yaml:1:4: anchors (&anchor) are not supported"},
      {"a: &x 1\nb: *x\n", "t.yaml:2:4: aliases (*name) are not supported"},
      {"a: {x: 1}\nb:\n  <<: {y: 2}\n", "t.yaml:3:3: merge keys (<<) are not supported"},
      {"a: .inf\n", "t.yaml:1:4: .inf: JSON has no infinity or NaN"},
      {"a:\n  b: .nan\n", "t.yaml:2:6: .nan: JSON has no infinity or NaN"},
      {"a: 1e999\n", "t.yaml:1:4: the number 1e999 is out of range"},
      {"a: !!int 3\n", "t.yaml:1:4: the tag tag:yaml.org,2002:int is not supported"},
      {"a: 1\n---\nb: 2\n", "t.yaml:2:1: a second YAML document starts here"},
      {"a:\n\tb: 1\n", "t.yaml:2:3: invalid YAML: a tab in the indentation"},
      {"a: [1, 2\nb: 3\n", "t.yaml:2:2: invalid YAML: end of sequence flow not found"},
      {"a: 1\n  b: 2\n", "t.yaml:2:4: invalid YAML: illegal map value"},
      // Found by the YAML fuzzer: a byte that is not UTF-8 reached the error message's JSON dump.
      {"a: 1\nb: x\xD4y\n", "t.yaml:2:4: this text is not UTF-8"},
      {"a: 1\n\xFF: 2\n", "t.yaml:2:1: this text is not UTF-8"},
  };
  for (const auto& [text, expected] : cases) {
    const std::string message = yaml_error(text);
    EXPECT_NE(message.find(expected), std::string::npos) << "for:\n" << text << "got: " << message;
  }
}

TEST(YamlRecipe, EveryRefusalIsReportedAtOnce) {
  const std::string message = yaml_error("a: 1\na: 2\nb: &x 3\nc: *x\nd: .nan\n");
  EXPECT_EQ(message.rfind("t.yaml: 4 errors: t.yaml:2:1: duplicate key 'a'", 0), 0u) << message;
  EXPECT_NE(message.find("\n  t.yaml:3:4: anchors (&x)"), std::string::npos) << message;
  EXPECT_NE(message.find("\n  t.yaml:4:4: aliases"), std::string::npos) << message;
  EXPECT_NE(message.find("\n  t.yaml:5:4: .nan"), std::string::npos) << message;
}

TEST(YamlRecipe, RecordsTheLineOfEveryValue) {
  const YamlDocument doc = parse_yaml(R"(run: {name: r}
stages:
  - name: sft
    train:
      lr: 1e-4
  -
    name: rm
)",
                                      "t.yaml");
  const std::map<std::string, int> expected = {{"run", 1},
                                               {"run.name", 1},
                                               {"stages", 2},
                                               {"stages[0]", 3},
                                               {"stages[0].name", 3},
                                               {"stages[0].train", 4},
                                               {"stages[0].train.lr", 5},
                                               {"stages[1]", 7},
                                               {"stages[1].name", 7}};
  EXPECT_EQ(doc.lines, expected);
}

// The recipe checks (an unknown key, a wrong type, a bad value) name the YAML line of the value;
// a missing key names the line of its section.
TEST(YamlRecipe, RecipeErrorsNameTheirYamlLines) {
  const std::string dir = test::temp_dir("yaml_recipe_errors");
  const std::string path = dir + "/r.yaml";
  std::ofstream(dir + "/sft.jsonl") << "{\"prompt\": \"a\", \"completion\": \"b\"}\n";
  std::ofstream(path) << "run:\n"
                         "  name: r\n"
                         "  threads: many\n"
                         "base: {hf: " +
                             dir +
                             "}\n"
                             "stages:\n"
                             "  - name: sft\n"
                             "    type: sft\n"
                             "    data:\n"
                             "      train: " +
                             dir +
                             "/sft.jsonl\n"
                             "    train:\n"
                             "      lr: fast\n"
                             "      stpes: 10\n"
                             "  - type: sft\n";
  const auto errors = recipe_errors(path);
  EXPECT_TRUE(
      has_error(errors, "run.threads (" + path + ":3): expected an integer, got string \"many\""))
      << joined(errors);
  EXPECT_TRUE(has_error(
      errors, "stages[0].train.lr (" + path + ":11): expected a number, got string \"fast\""))
      << joined(errors);
  EXPECT_TRUE(has_error(errors, "stages[0].train.stpes (" + path + ":12): unknown key"))
      << joined(errors);
  EXPECT_TRUE(has_error(
      errors, "stages[1].name (" + path + ":13): a stage needs a name (not 'base', no '/')"))
      << joined(errors);
}

// An override replaces the file's value: a mistake in it names the override, not the line it
// replaced; the rest still name their lines.
TEST(YamlRecipe, OverridesApplyToYamlRecipes) {
  const std::string dir = test::temp_dir("yaml_recipe_override");
  const std::string path = dir + "/r.yaml";
  std::ofstream(dir + "/sft.jsonl") << "{\"prompt\": \"a\", \"completion\": \"b\"}\n";
  std::ofstream(path) << "base: {hf: " + dir +
                             "}\n"
                             "stages:\n"
                             "  - name: sft\n"
                             "    type: sft\n"
                             "    data: {train: " +
                             dir +
                             "/sft.jsonl}\n"
                             "    train: {steps: 10, lr: 1e-4, batch_size: -1}\n";
  ConfigErrors errors;
  const Recipe recipe = load_recipe(path, {"sft.train.steps=7", "sft.train.lr=3e-4"}, errors);
  EXPECT_EQ(recipe.resolved["stages"][0]["train"]["steps"], 7);
  EXPECT_EQ(recipe.resolved["stages"][0]["train"]["lr"].get<double>(), 3e-4);

  const auto bad = recipe_errors(path, {"sft.train={\"lr\": \"x\"}"});
  EXPECT_TRUE(has_error(bad,
                        "stages[0].train.lr (override sft.train={\"lr\": \"x\"}): expected a "
                        "number, got string \"x\""))
      << joined(bad);
  const auto batch = recipe_errors(path, {"sft.train.lr=3e-4"});
  EXPECT_TRUE(has_error(batch, "stages[0].train.batch_size (" + path + ":6): must be at least 1"))
      << joined(batch);
  EXPECT_EQ(joined(batch).find("(override"), std::string::npos) << joined(batch);
}

// recipes/quickstart.yaml is quickstart.json in YAML: the same resolved recipe, the same stages
// with the same stated values, both free of mistakes (@name references included).
TEST(YamlRecipe, QuickstartYamlParsesAsQuickstartJsonDoes) {
  const std::string dir = test::temp_dir("yaml_quickstart");
  make_directories(dir + "/runs/quickstart/data");
  for (const char* file : {"corpus.txt", "sft.jsonl", "preferences.jsonl", "prompts.jsonl"})
    std::ofstream(dir + "/runs/quickstart/data/" + file) << "\n";
  test::InDirectory in(dir);
  const std::string recipes = std::string(TILLER_SOURCE_DIR) + "/recipes/";
  ConfigErrors json_errors, yaml_errors;
  const Recipe from_json = load_recipe(recipes + "quickstart.json", {}, json_errors);
  const Recipe from_yaml = load_recipe(recipes + "quickstart.yaml", {}, yaml_errors);
  const auto json_stages = parse_stages(stage_registry(), from_json, json_errors);
  const auto yaml_stages = parse_stages(stage_registry(), from_yaml, yaml_errors);
  EXPECT_TRUE(json_errors.empty()) << joined(json_errors.list());
  EXPECT_TRUE(yaml_errors.empty()) << joined(yaml_errors.list());

  EXPECT_EQ(from_yaml.resolved, from_json.resolved) << from_yaml.resolved.dump(2);
  EXPECT_EQ(from_yaml.run.name, from_json.run.name);
  EXPECT_EQ(from_yaml.base.stage, "pretrain");
  ASSERT_EQ(yaml_stages.size(), 6u);  // pretrain, sft, reward, ppo, dpo, grpo
  ASSERT_EQ(json_stages.size(), yaml_stages.size());
  for (size_t i = 0; i < yaml_stages.size(); ++i) {
    EXPECT_EQ(yaml_stages[i].name, json_stages[i].name);
    EXPECT_EQ(yaml_stages[i].type, json_stages[i].type);
    if (!yaml_stages[i].type->stated_defaults) continue;
    EXPECT_EQ(yaml_stages[i].type->stated_defaults(yaml_stages[i].config),
              json_stages[i].type->stated_defaults(json_stages[i].config))
        << yaml_stages[i].name;
  }
}

TEST(YamlRecipe, QuickstartYamlPassesTillerRunCheck) {
  std::string out;
  const int rc =
      test::run_command("cd '" + std::string(TILLER_SOURCE_DIR) + "' && '" + test::tiller_binary() +
                            "' run --check recipes/quickstart.yaml",
                        &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("recipes/quickstart.yaml: OK (6 stages)"), std::string::npos) << out;
}

TEST(YamlRecipe, ARecipeIsAMapping) {
  const std::string dir = test::temp_dir("yaml_recipe_list");
  std::ofstream(dir + "/r.yml") << "- a\n- b\n";
  std::ofstream(dir + "/empty.yaml") << "# nothing\n";
  for (const std::string name : {"r.yml", "empty.yaml"}) {
    const std::string message = test::error_of([&] { recipe_errors(dir + "/" + name); });
    EXPECT_EQ(message, dir + "/" + name + ": a recipe is a YAML mapping (key: value lines)");
  }
}
