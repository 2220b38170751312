// The synthetic dataset's arithmetic files (common/data/synthetic.h): right answers in the
// "#### n" format, held-out prompts no training file contains, and the manifest that decides when
// files are written again.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "common/data/synthetic.h"
#include "common/recipe/recipe.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

std::vector<std::string> lines_of(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// "What is a op b?" -> "a op b", checked against the pattern.
std::string expression_in(const std::string& question) {
  static const std::regex pattern(R"(^What is (\d+ [-+*] \d+)\?$)");
  std::smatch match;
  EXPECT_TRUE(std::regex_match(question, match, pattern)) << question;
  return match.size() > 1 ? match[1].str() : "";
}

int64_t value_of(const std::string& expression) {
  std::istringstream in(expression);
  int64_t a = 0, b = 0;
  char op = 0;
  in >> a >> op >> b;
  return op == '+' ? a + b : op == '-' ? a - b : a * b;
}

SyntheticDataOptions small_arithmetic(const std::string& dir) {
  SyntheticDataOptions options;
  options.dir = dir;
  options.corpus_stories = 20;
  options.sft_examples = 20;
  options.preference_pairs = 20;
  options.prompts = 20;
  options.arithmetic.enabled = true;
  options.arithmetic.corpus_problems = 3000;
  options.arithmetic.sft_examples = 1000;
  options.arithmetic.prompts = 200;
  options.arithmetic.max_operand = 30;
  options.arithmetic.operations = "+-*";
  return options;
}

}  // namespace

TEST(Synthetic, ArithmeticCompletionsAreWorkedAndRightAndPromptsAreHeldOut) {
  const std::string dir = test::temp_dir("synthetic_arithmetic");
  ASSERT_TRUE(write_synthetic_dataset(small_arithmetic(dir)));

  std::set<std::string> trained;  // expressions the corpus and the SFT data show
  const std::regex worked(R"(^(\d+ [-+*] \d+) = (\d+)\. #### (\d+)$)");
  auto check_worked = [&](const std::string& question, const std::string& completion) {
    const std::string expression = expression_in(question);
    std::smatch match;
    ASSERT_TRUE(std::regex_match(completion, match, worked)) << completion;
    EXPECT_EQ(match[1].str(), expression);
    EXPECT_EQ(std::stoll(match[2].str()), value_of(expression)) << completion;
    EXPECT_EQ(match[2].str(), match[3].str());
    trained.insert(expression);
  };
  const auto corpus = lines_of(dir + "/arithmetic_corpus.txt");
  ASSERT_EQ(corpus.size(), 3000u);
  for (const std::string& line : corpus) {
    const size_t mark = line.find("? ");
    ASSERT_NE(mark, std::string::npos) << line;
    check_worked(line.substr(0, mark + 1), line.substr(mark + 2));
  }
  const auto sft = lines_of(dir + "/arithmetic_sft.jsonl");
  ASSERT_EQ(sft.size(), 1000u);
  for (const std::string& line : sft) {
    const auto record = nlohmann::json::parse(line);
    check_worked(record.at("prompt"), record.at("completion"));
  }

  const auto prompts = lines_of(dir + "/arithmetic_prompts.jsonl");
  ASSERT_EQ(prompts.size(), 200u);
  std::set<char> operations;
  for (const std::string& line : prompts) {
    const auto record = nlohmann::json::parse(line);
    const std::string expression = expression_in(record.at("prompt"));
    EXPECT_EQ(record.at("answer"), std::to_string(value_of(expression))) << line;
    EXPECT_EQ(trained.count(expression), 0u) << expression << " is in the training files";
    EXPECT_GE(value_of(expression), 0) << expression;
    operations.insert(expression[expression.find(' ') + 1]);
  }
  EXPECT_EQ(operations, (std::set<char>{'+', '-', '*'}));
}

TEST(Synthetic, ArithmeticFilesAreWrittenAgainOnlyWhenTheirOptionsChange) {
  const std::string dir = test::temp_dir("synthetic_manifest");
  SyntheticDataOptions options = small_arithmetic(dir);
  options.arithmetic.enabled = false;
  ASSERT_TRUE(write_synthetic_dataset(options));
  EXPECT_FALSE(path_exists(dir + "/arithmetic_prompts.jsonl"));
  EXPECT_FALSE(read_json_file(dir + "/manifest.json").contains("arithmetic"));
  const std::string stories = test::read_bytes(dir + "/corpus.txt");

  options.arithmetic.enabled = true;
  EXPECT_TRUE(write_synthetic_dataset(options));
  EXPECT_EQ(test::read_bytes(dir + "/corpus.txt"), stories);  // the stories do not move
  EXPECT_EQ(read_json_file(dir + "/manifest.json")["arithmetic"]["max_operand"], 30);
  const std::string prompts = test::read_bytes(dir + "/arithmetic_prompts.jsonl");
  EXPECT_FALSE(write_synthetic_dataset(options));

  options.arithmetic.max_operand = 40;
  EXPECT_TRUE(write_synthetic_dataset(options));
  EXPECT_NE(test::read_bytes(dir + "/arithmetic_prompts.jsonl"), prompts);
}

TEST(Synthetic, ArithmeticOptionsItCannotMeetAreRefusedBeforeAnythingIsWritten) {
  const std::string dir = test::temp_dir("synthetic_refused") + "/data";
  SyntheticDataOptions options = small_arithmetic(dir);
  options.arithmetic.operations = "+/";
  EXPECT_NE(test::error_of([&] { write_synthetic_dataset(options); }).find("\"+/\""),
            std::string::npos);
  options.arithmetic.operations = "*";
  options.arithmetic.max_factor = 1;  // 4 problems: too few to hold a tenth out
  EXPECT_NE(test::error_of([&] { write_synthetic_dataset(options); }).find("too few"),
            std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir));
}

TEST(Synthetic, ARecipesArithmeticKeysAreCheckedWithTheirPaths) {
  const std::string dir = test::temp_dir("synthetic_recipe");
  const nlohmann::json recipe = {
      {"run", {{"name", "r"}}},
      {"synthetic_data",
       {{"dir", dir + "/data"},
        {"arithmetic", {{"max_operand", 0}, {"operations", "+/"}, {"colour", 1}}}}},
      {"stages", nlohmann::json::array()}};
  write_file_atomic(dir + "/r.json", recipe.dump());
  ConfigErrors errors;
  load_recipe(dir + "/r.json", {}, errors);
  std::string all;
  for (const std::string& error : errors.list()) all += error + "\n";
  EXPECT_NE(all.find("synthetic_data.arithmetic.colour: unknown key"), std::string::npos) << all;
  EXPECT_NE(all.find("synthetic_data.arithmetic.max_operand: must be in [1, 999]"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("synthetic_data.arithmetic.operations: must be some of"), std::string::npos)
      << all;
}
