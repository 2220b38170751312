// Verifiable rewards: final-answer extraction and comparison on real-world answer strings (GSM8K
// solutions, \boxed{} answers, units, fractions, lists), the "rewards" list's parsing and errors,
// and the weighted scores of a RewardSet on a small batch.
#include <gtest/gtest.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "common/util/error.h"
#include "rlhf/math_answer.h"
#include "rlhf/reward_functions.h"
#include "tests/test_util.h"

using namespace tiller;
using nlohmann::json;

namespace {

// ---------------------------------------------------------------------------------------------
// Extraction and numbers.

struct ExtractionCase {
  std::string text;
  std::optional<std::string> answer;  // what extract_final_answer returns
  std::optional<double> value;        // what parse_number makes of that answer
};

const char* const kGsm8kSolution =
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72";

const std::vector<ExtractionCase> kExtractionCases = {
    {"The answer is 1,234.", "1,234", 1234},
    {"She gives 3 away, 2 are left.\n#### -5", "-5", -5},
    {"So the probability is \\boxed{\\frac{3}{4}}.", "\\frac{3}{4}", 0.75},
    {"The ticket costs $18.50", "18.50", 18.5},
    {"She has 12 apples", "12", 12},
    {"3/4", "3/4", 0.75},
    {"-0.5", "-0.5", -0.5},
    {"The total is 5 cm and then 7 cm", "7", 7},
    {"First 3, then 4, and at last 10 and 11", "11", 11},
    {"We add 3 and 4 to get \\boxed{12}, checked as 5 + 7.", "12", 12},
    {kGsm8kSolution, "72", 72},
    {"Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18",
     "18", 18},
    {"", std::nullopt, std::nullopt},
    {"I do not know.", std::nullopt, std::nullopt},
    {"1e3", "1e3", 1000},
    {"The price rose by 50%", "50", 50},
    {"1,2,3", "3", 3},
    {"It is \xE2\x88\x92"
     "5 degrees outside",
     "\xE2\x88\x92"
     "5",
     -5},
    {"\\boxed{x = 5}", "x = 5", 5},
    {"#### 1,000,000", "1,000,000", 1e6},
    {"\\fbox{42} is the answer", "42", 42},
    {"The answer is \\boxed{\\text{(B)}}", "\\text{(B)}", std::nullopt},
    {"$\\boxed 7$ apples", "7", 7},
    {"\\boxed{\\dfrac{1}{2}}", "\\dfrac{1}{2}", 0.5},
    {"Unbalanced \\boxed{3 and then 4", "4", 4},
    {"####\nso the answer is 6", "6", 6},
    {"half of .25", ".25", 0.25},
    {"+7", "+7", 7},
    {"x = -3.5", "-3.5", -3.5},
    {"5-3 = 2", "2", 2},
    {"He paid $1,234.56 in total.", "1,234.56", 1234.56},
    {"\\boxed{1{,}234}", "1{,}234", 1234},
    {"\\boxed{-\\frac{1}{4}}", "-\\frac{1}{4}", -0.25},
    {"\\boxed{5\\text{ cm}}", "5\\text{ cm}", 5},
    {"\\boxed{2\\sqrt{3}}", "2\\sqrt{3}", std::nullopt},
    {"\\boxed{3\\pi}", "3\\pi", std::nullopt},
    {"#### 12 apples\nExplanation follows: 4 + 8", "12 apples", 12},
};

TEST(MathAnswer, ExtractsTheFinalAnswerOfRealWorldResponses) {
  for (const auto& c : kExtractionCases) {
    SCOPED_TRACE("text: " + c.text);
    const auto answer = extract_final_answer(c.text);
    EXPECT_EQ(answer, c.answer);
    if (!answer) continue;
    const auto value = parse_number(*answer);
    ASSERT_EQ(value.has_value(), c.value.has_value()) << "answer: " << *answer;
    if (value) {
      EXPECT_DOUBLE_EQ(*value, *c.value);
    }
  }
}

TEST(MathAnswer, ParsesNumbersWithUnitsSignsAndLatex) {
  const std::vector<std::pair<std::string, double>> numbers = {{"$3.50 dollars", 3.5},
                                                               {"12 apples", 12},
                                                               {"5 cm", 5},
                                                               {"+5", 5},
                                                               {"1,234", 1234},
                                                               {"50%", 50},
                                                               {"50\\%", 50},
                                                               {"\\frac34", 0.75},
                                                               {"\\text{18}", 18},
                                                               {"1\\!000", 1000},
                                                               {"\\frac{-3}{4}", -0.75},
                                                               {" 42 ", 42},
                                                               {"1,000.", 1000},
                                                               {"90^\\circ", 90},
                                                               {"2.5e-3", 0.0025},
                                                               {"1/2 cup", 0.5}};
  for (const auto& [text, value] : numbers) {
    const auto parsed = parse_number(text);
    ASSERT_TRUE(parsed.has_value()) << text;
    EXPECT_DOUBLE_EQ(*parsed, value) << text;
  }
}

TEST(MathAnswer, RefusesWhatIsNotOneNumber) {
  for (const std::string text : {"", "abc", "1,2", "1,2,3", "5 and 7", "1/0", "1e999", "5-3",
                                 "\\frac{1}{", "2^x", "{", "\\boxed{", "-", "."})
    EXPECT_EQ(parse_number(text), std::nullopt) << text;
}

struct MatchCase {
  std::string response;  // the whole response; its final answer is compared
  std::string reference;
  bool match;
};

TEST(MathAnswer, MatchesFinalAnswersAgainstReferences) {
  const std::vector<MatchCase> cases = {
      {"so it is \\boxed{\\frac{3}{4}}", "0.75", true},
      {"48 + 24 = 72\n#### 72", kGsm8kSolution, true},
      {"48 + 23 = 71\n#### 71", kGsm8kSolution, false},
      {"The answer is 1,234.", "1234", true},
      {"The answer is 18.5", "$18.50", true},
      {"\\boxed{1, 2, 3}", "1,2,3", true},
      {"\\boxed{1, 2, 4}", "1,2,3", false},
      {"\\boxed{3}", "1,2,3", false},
      {"\\boxed{\\text{Paris}}", "paris", true},
      {"\\boxed{Paris}", "London", false},
      {"#### 1000000", "1e6", true},
      {"It grew by 50%", "50", true},
      {"\\boxed{x = -2}", "\\boxed{-2}", true},
      {"\\boxed{\\text{(B)}}", "(b)", true},
      {"12 apples", "12 pears", true},  // units are not checked, as in GSM8K graders
      {"\\boxed{2\\sqrt{3}}", "3\\sqrt{2}", false},
  };
  for (const auto& c : cases)
    EXPECT_EQ(answers_match(*extract_final_answer(c.response), c.reference, 1e-6), c.match)
        << c.response << " vs " << c.reference;
}

TEST(MathAnswer, ToleranceIsAbsoluteBelowOneAndRelativeAbove) {
  EXPECT_TRUE(answers_match("0.3333333", "1/3", 1e-6));
  EXPECT_FALSE(answers_match("0.3333333", "1/3", 1e-9));
  EXPECT_TRUE(answers_match("1000001", "1000000", 1e-6));
  EXPECT_FALSE(answers_match("1000001", "1000000", 1e-7));
  EXPECT_FALSE(answers_match("0.000001", "0", 1e-7));
}

// ---------------------------------------------------------------------------------------------
// Parsing the "rewards" list.

const char* const kPath = "stages[0].rewards";

std::vector<RewardFunctionSpec> parse_ok(const json& list) {
  ConfigErrors errors;
  auto specs = parse_reward_functions(list, kPath, errors);
  errors.throw_if_any("test");
  return specs;
}

// Every error of parsing `list`, one per line.
std::string errors_of(const json& list) {
  ConfigErrors errors;
  (void)parse_reward_functions(list, kPath, errors);
  std::string all;
  for (const auto& e : errors.list()) all += e + "\n";
  return all;
}

const json kEveryType = json::parse(R"([
  {"type": "math_answer", "weight": 1.0},
  {"type": "regex", "pattern": "#### -?\\d+", "weight": 0.1},
  {"type": "regex", "pattern": "answer", "ignore_case": true},
  {"type": "contains", "text": "####", "name": "has_hashes"},
  {"type": "length", "max_tokens": 64, "penalty": 0.01},
  {"type": "model", "model": "@reward", "weight": 0.5},
  {"type": "command", "command": ["python3", "verify.py"], "timeout_seconds": 30, "on_timeout": 0}
])");

TEST(RewardFunctions, StatesEveryValueThatRunsAndNamesEachFunction) {
  const auto specs = parse_ok(kEveryType);
  ASSERT_EQ(specs.size(), 7u);
  std::vector<std::string> names;
  for (const auto& spec : specs) names.push_back(spec.name);
  EXPECT_EQ(names, (std::vector<std::string>{"math_answer", "regex", "regex_2", "has_hashes",
                                             "length", "model", "command"}));
  EXPECT_EQ(specs[0].options, json({{"tolerance", 1e-6}, {"missing", 0.0}}));
  EXPECT_EQ(specs[2].options, json({{"pattern", "answer"}, {"ignore_case", true}}));
  EXPECT_EQ(specs[4].options, json({{"max_tokens", 64}, {"min_tokens", 0}, {"penalty", 0.01}}));
  EXPECT_EQ(specs[5].options, json({{"model", "@reward"}, {"max_seq_len", 0}}));
  EXPECT_EQ(specs[6].options, json({{"command", {"python3", "verify.py"}},
                                    {"timeout_seconds", 30.0},
                                    {"on_timeout", 0},
                                    {"working_dir", ""}}));
  EXPECT_DOUBLE_EQ(specs[1].weight, 0.1);
  EXPECT_DOUBLE_EQ(specs[3].weight, 1.0);
}

TEST(RewardFunctions, TheResolvedValuesParseBackToTheSameSpecs) {
  const auto specs = parse_ok(kEveryType);
  const json values = reward_function_values(specs);
  const auto again = parse_ok(values);
  ASSERT_EQ(again.size(), specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_EQ(again[i].type, specs[i].type);
    EXPECT_EQ(again[i].name, specs[i].name);
    EXPECT_EQ(again[i].weight, specs[i].weight);
    EXPECT_EQ(again[i].options, specs[i].options) << specs[i].name;
  }
  EXPECT_EQ(reward_function_values(again), values);
}

TEST(RewardFunctions, DefaultNamesStepAroundNamesTheRecipeGives) {
  const auto specs = parse_ok(json::parse(R"([
    {"type": "contains", "text": "a"},
    {"type": "contains", "text": "b", "name": "contains_2"},
    {"type": "contains", "text": "c"}])"));
  EXPECT_EQ(specs[0].name, "contains");
  EXPECT_EQ(specs[1].name, "contains_2");
  EXPECT_EQ(specs[2].name, "contains_3");
}

TEST(RewardFunctions, EachMistakeIsReportedWithItsPath) {
  const std::vector<std::pair<json, std::string>> cases = {
      {json::parse(R"([{"type": "regex", "pattern": "(unclosed"}])"),
       "stages[0].rewards[0].pattern: invalid regular expression"},
      {json::parse(R"([{"type": "regexp", "pattern": "x"}])"),
       "stages[0].rewards[0].type: 'regexp' is not one of"},
      {json::parse(R"([{"type": "regex"}])"),
       "stages[0].rewards[0].pattern: required key is missing"},
      {json::parse(R"([{"type": "math_answer"}, {"type": "command", "command": ["v"],
                       "timeout_seconds": -1}])"),
       "stages[0].rewards[1].timeout_seconds: must be a finite number > 0"},
      {json::parse(R"([{"type": "contains", "text": "x", "colour": "red"}])"),
       "stages[0].rewards[0].colour: unknown key"},
      {json::parse(R"([{"type": "contains", "text": "x", "weight": "high"}])"),
       "stages[0].rewards[0].weight: expected a number"},
      {json::parse(R"([{"type": "contains", "text": "x", "name": "a"},
                       {"type": "regex", "pattern": "y", "name": "a"}])"),
       "stages[0].rewards[1].name: 'a' already names another reward function"},
      {json::parse(R"([{"type": "command", "command": []}])"),
       "stages[0].rewards[0].command: expected a non-empty list of strings"},
      {json::parse(R"([{"type": "command", "command": ["v", 3]}])"),
       "stages[0].rewards[0].command: expected a non-empty list of strings"},
      {json::parse(R"([{"type": "command", "command": ["v"], "on_timeout": "skip"}])"),
       "stages[0].rewards[0].on_timeout: expected \"error\" or a finite number"},
      {json::parse(R"([{"type": "length", "max_tokens": 10}])"),
       "stages[0].rewards[0].penalty: required key is missing"},
      {json::parse(R"([{"type": "length", "penalty": 1}])"),
       "stages[0].rewards[0].max_tokens: a length reward needs max_tokens or min_tokens"},
      {json::parse(R"([{"type": "math_answer", "tolerance": -1}])"),
       "stages[0].rewards[0].tolerance: must be a number >= 0"},
      {json::parse(R"([{"type": "model"}])"), "stages[0].rewards[0].model: required key"},
      {json::parse(R"([null])"), "stages[0].rewards[0]: expected a reward function"},
      {json::parse(R"([])"), "stages[0].rewards: must be a non-empty list"},
      {json::parse(R"({"type": "regex"})"), "stages[0].rewards: must be a non-empty list"},
  };
  for (const auto& [list, expected] : cases)
    EXPECT_NE(errors_of(list).find(expected), std::string::npos)
        << list.dump() << "\ngot: " << errors_of(list);
}

// ---------------------------------------------------------------------------------------------
// Scoring.

ScoredEpisode episode(const std::string& response, const std::string& answer, size_t tokens) {
  ScoredEpisode e;
  e.prompt = "Natalia sold clips to 48 of her friends in April...";
  e.response = response;
  e.answer = answer;
  e.response_ids.assign(tokens, 7);
  return e;
}

// A stand-in for the stage's reward model: scores the response's length in characters.
class CharacterCount : public RewardFunction {
 public:
  std::vector<double> score(const std::vector<ScoredEpisode>& episodes) override {
    std::vector<double> scores;
    for (const auto& e : episodes) scores.push_back(static_cast<double>(e.response.size()));
    return scores;
  }
};

TEST(RewardSet, SumsEveryFunctionsScoresWithTheirWeights) {
  const auto specs = parse_ok(json::parse(R"([
    {"type": "math_answer", "missing": -0.5},
    {"type": "contains", "text": "####", "weight": 0.1},
    {"type": "length", "max_tokens": 4, "penalty": 0.5, "weight": 2},
    {"type": "regex", "pattern": "^I THINK", "ignore_case": true, "weight": 3}])"));
  RewardSet rewards(specs, nullptr);
  const auto scores =
      rewards.score({episode("48 + 24 = 72\n#### 72", kGsm8kSolution, 3),
                     episode("I think it is 70", "72", 6), episode("no idea", "72", 4)});
  EXPECT_EQ(scores.names, (std::vector<std::string>{"math_answer", "contains", "length", "regex"}));
  ASSERT_EQ(scores.by_name.size(), 4u);
  EXPECT_EQ(scores.by_name[0], (std::vector<double>{1, 0, -0.5}));
  EXPECT_EQ(scores.by_name[1], (std::vector<double>{1, 0, 0}));
  EXPECT_EQ(scores.by_name[2], (std::vector<double>{0, -1, 0}));
  EXPECT_EQ(scores.by_name[3], (std::vector<double>{0, 1, 0}));
  ASSERT_EQ(scores.total.size(), 3u);
  EXPECT_DOUBLE_EQ(scores.total[0], 1.1);
  EXPECT_DOUBLE_EQ(scores.total[1], -2 + 3);
  EXPECT_DOUBLE_EQ(scores.total[2], -0.5);
}

TEST(RewardSet, ALengthRewardPenalisesTokensBelowTheMinimumToo) {
  RewardSet rewards(parse_ok(json::parse(R"([{"type": "length", "min_tokens": 5, "penalty": 2}])")),
                    nullptr);
  EXPECT_EQ(rewards.score({episode("a", "", 2), episode("b", "", 5)}).total,
            (std::vector<double>{-6, 0}));
}

TEST(RewardSet, ModelFunctionsComeFromTheStagesFactory) {
  const auto specs =
      parse_ok(json::parse(R"([{"type": "model", "model": "@reward", "weight": 2}])"));
  std::string built_for;
  RewardSet rewards(specs, [&](const RewardFunctionSpec& spec) {
    built_for = spec.options.at("model").get<std::string>();
    return std::make_unique<CharacterCount>();
  });
  EXPECT_EQ(built_for, "@reward");
  EXPECT_EQ(rewards.score({episode("abc", "", 1)}).total, (std::vector<double>{6}));
  EXPECT_NE(test::error_of([&] {
              RewardSet refused(specs, nullptr);
            }).find("reward function 'model': type model needs a reward model"),
            std::string::npos);
}

TEST(RewardSet, AMathAnswerWithoutAReferenceIsAnErrorNamingTheFunction) {
  RewardSet rewards(parse_ok(json::parse(R"([{"type": "math_answer", "name": "gsm8k"}])")),
                    nullptr);
  const std::string error = test::error_of([&] { rewards.score({episode("#### 5", "", 2)}); });
  EXPECT_NE(error.find("reward function 'gsm8k'"), std::string::npos) << error;
  EXPECT_NE(error.find("no reference answer"), std::string::npos) << error;
}

TEST(RewardSet, AFunctionReturningTheWrongNumberOfScoresIsAnError) {
  class OneScore : public RewardFunction {
   public:
    std::vector<double> score(const std::vector<ScoredEpisode>&) override { return {1.0}; }
  };
  RewardSet rewards(parse_ok(json::parse(R"([{"type": "model", "model": "@r"}])")),
                    [](const RewardFunctionSpec&) { return std::make_unique<OneScore>(); });
  EXPECT_NE(test::error_of([&] {
              rewards.score({episode("a", "", 1), episode("b", "", 1)});
            }).find("reward function 'model' gave 1 scores for 2 episodes"),
            std::string::npos);
}

}  // namespace
