// Answered prompts (common/data/prompt_data.h): reference answers in the prompt_answer and GSM8K
// layouts, the prompt tokens as load_prompts makes them, bad records, and GSM8K's real file.
#include <gtest/gtest.h>

#include <fstream>

#include "common/data/prompt_data.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "tests/test_util.h"

using namespace tiller;

namespace {

std::string answer_of(const std::string& record, const std::string& format = "auto") {
  return answer_from_record(nlohmann::json::parse(record), format, "f.jsonl:1");
}

}  // namespace

TEST(PromptData, AGsm8kAnswerIsTheTrimmedTextAfterTheLastMarkerWithItsCommas) {
  EXPECT_EQ(answer_of(R"({"question": "q", "answer": "2 + 2 = <<2+2=4>>4\n#### 4"})"), "4");
  EXPECT_EQ(answer_of(R"({"question": "q", "answer": "#### 9 is not it\n####  1,080 \n"})"),
            "1,080");
  EXPECT_EQ(answer_of(R"({"question": "q", "answer": "steps\n#### -3.5"})", "gsm8k"), "-3.5");
}

TEST(PromptData, APromptAnswerIsAStringOrANumberAsJsonWritesIt) {
  EXPECT_EQ(answer_of(R"({"prompt": "What is 2 + 3?", "answer": " 5 "})"), "5");
  EXPECT_EQ(answer_of(R"({"prompt": "p", "answer": 68})"), "68");
  EXPECT_EQ(answer_of(R"({"prompt": "p", "answer": -2.5})", "prompt_answer"), "-2.5");
}

TEST(PromptData, ABadAnsweredRecordIsNamedByFileAndLine) {
  auto error = [](const std::string& record, const std::string& format = "auto") {
    return test::error_of([&] { answer_of(record, format); });
  };
  EXPECT_NE(
      error(R"({"prompt": "p"})", "prompt_answer").find("f.jsonl:1: missing field \"answer\""),
      std::string::npos);
  // Under auto a prompt alone is a prompt without an answer (for rewards that need none).
  EXPECT_EQ(answer_of(R"({"prompt": "p"})"), "");
  EXPECT_NE(error(R"({"question": "q", "answer": "no marker here"})").find("f.jsonl:1"),
            std::string::npos);
  EXPECT_NE(error(R"({"question": "q", "answer": "####  "})").find("empty"), std::string::npos);
  EXPECT_NE(error(R"({"prompt": "p", "answer": [1]})").find("string or a number"),
            std::string::npos);
  EXPECT_NE(error(R"({"text": "t", "answer": "1"})").find("f.jsonl:1"), std::string::npos);
  EXPECT_NE(error(R"({"prompt": "p", "answer": "1"})", "csv").find("unknown answered prompt"),
            std::string::npos);
}

TEST(PromptData, AnsweredPromptsAreTokenizedAsLoadPromptsTokenizesThem) {
  TILLER_REQUIRE_SHARED(tok_path, "models/stories260K/tok512.model");
  Tokenizer tok(tok_path);
  const std::string path = test::write_temp_file("prompt_data", "answered.jsonl",
                                                 R"({"prompt": "What is 2 + 3?", "answer": "5"}
{"prompt": [{"role": "user", "content": "What is 7 - 4?"}], "answer": 3}
{"question": "Tom has 3 cats and gets 2 more. How many?", "answer": "3 + 2 = 5\n#### 5"}
)");
  PromptDataOptions options;
  options.path = path;
  options.template_name = "plain";
  PromptStats stats;
  const auto answered = load_answered_prompts(options, tok, &stats);
  ASSERT_EQ(answered.size(), 3u);
  EXPECT_EQ(answered[0].answer, "5");
  EXPECT_EQ(answered[1].answer, "3");
  EXPECT_EQ(answered[2].answer, "5");
  EXPECT_EQ(stats.records, 3);

  // The same prompts without answers, through load_prompts, give the same tokens.
  options.path = test::write_temp_file("prompt_data", "plain.jsonl", R"({"prompt": "What is 2 + 3?"}
{"prompt": [{"role": "user", "content": "What is 7 - 4?"}]}
{"prompt": "Tom has 3 cats and gets 2 more. How many?"}
)");
  const auto plain = load_prompts(options, tok, nullptr);
  ASSERT_EQ(plain.size(), 3u);
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_EQ(answered[i].tokens, plain[i]) << i;
  EXPECT_EQ(answered[0].tokens.front(), tok.bos_id());
}

TEST(PromptData, BadAnsweredRecordsFailWithTheirLineOrAreSkippedAndCounted) {
  TILLER_REQUIRE_SHARED(tok_path, "models/stories260K/tok512.model");
  Tokenizer tok(tok_path);
  PromptDataOptions options;
  const std::string records = R"({"prompt": "What is 1 + 1?", "answer": "2"}
{"prompt": "What is 2 + 2?"}
{"question": "q", "answer": "no final answer"}
)";
  options.path = test::write_temp_file("prompt_data", "bad.jsonl", records);
  // (line 2, a prompt alone, is a prompt without an answer under auto)
  const std::string error = test::error_of([&] { load_answered_prompts(options, tok, nullptr); });
  EXPECT_NE(error.find("bad.jsonl:3: the GSM8K answer has no \"####\""), std::string::npos)
      << error;

  options.path = test::write_temp_file("prompt_data", "bad_and_broken.jsonl", records + R"(not json
{"question": "What is 3 + 3?", "answer": "#### 6"}
)");
  options.skip_bad_lines = true;
  PromptStats stats;
  const auto answered = load_answered_prompts(options, tok, &stats);
  ASSERT_EQ(answered.size(), 3u);
  EXPECT_EQ(answered[1].answer, "");
  EXPECT_EQ(answered[2].answer, "6");
  EXPECT_EQ(stats.skipped, 2);  // the malformed line, the missing marker

  options.format = "gsm8k";
  options.path = test::write_temp_file("prompt_data", "gsm8k_format.jsonl",
                                       R"({"prompt": "p", "answer": "#### 1"})");
  options.skip_bad_lines = false;
  EXPECT_NE(test::error_of([&] {
              load_answered_prompts(options, tok, nullptr);
            }).find("gsm8k_format.jsonl:1: missing field \"question\""),
            std::string::npos);
  options.format = "messages";
  EXPECT_NE(test::error_of([&] {
              load_answered_prompts(options, tok, nullptr);
            }).find("unknown answered prompt format 'messages'"),
            std::string::npos);
}

TEST(PromptData, Gsm8kTrainingFileGivesItsQuestionsAndFinalAnswers) {
  TILLER_REQUIRE_SHARED(tok_path, "models/stories260K/tok512.model");
  TILLER_REQUIRE_SHARED(gsm8k, "math/gsm8k_train.jsonl.gz");
  Tokenizer tok(tok_path);
  PromptDataOptions options;
  options.path = gsm8k;
  options.template_name = "plain";
  options.max_prompt_len = 100000;
  options.max_records = 400;
  PromptStats stats;
  const auto answered = load_answered_prompts(options, tok, &stats);
  ASSERT_EQ(answered.size(), 400u);
  EXPECT_EQ(stats.skipped, 0);
  // The first problems' answers, as the file writes them after "####" (Natalia's clips, Weng's
  // babysitting, Betty's wallet); record 346 writes its answer with a thousands comma.
  EXPECT_EQ(answered[0].answer, "72");
  EXPECT_EQ(answered[1].answer, "10");
  EXPECT_EQ(answered[2].answer, "5");
  EXPECT_EQ(answered[345].answer, "1,080");
  const std::string first = tok.decode(answered[0].tokens);
  EXPECT_NE(first.find("Natalia sold clips to 48 of her friends"), std::string::npos) << first;
}
