// SFT data: record layouts, chat templates, loss masking, truncation, packing, bad input.
#include <gtest/gtest.h>

#include <fstream>

#include "common/data/batching.h"
#include "common/data/json_records.h"
#include "common/data/sft_data.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "tests/test_util.h"

using namespace tiller;

TEST(SftData, ExactlyTheAssistantTokensAndTheirEosCarryLoss) {
  TILLER_REQUIRE_SHARED(tok_path, "models/stories260K/tok512.model");
  Tokenizer tok(tok_path);
  std::vector<Message> conversation = {{"system", "Be kind."},
                                       {"user", "Hi there"},
                                       {"assistant", "Hello friend"},
                                       {"user", "Tell a story"},
                                       {"assistant", "Once upon a time"}};
  for (const std::string name : {"chatml", "llama2", "alpaca", "plain"}) {
    auto conv = tokenize_conversation(tok, name, conversation);
    ASSERT_EQ(conv.tokens.size(), conv.trainable.size());
    // The trained tokens, in order, are exactly each reply followed by EOS.
    std::vector<int64_t> trained;
    for (size_t i = 0; i < conv.tokens.size(); ++i)
      if (conv.trainable[i]) trained.push_back(conv.tokens[i]);
    std::vector<int64_t> expected = tok.encode("Hello friend");
    expected.push_back(tok.eos_id());
    auto second = tok.encode("Once upon a time");
    expected.insert(expected.end(), second.begin(), second.end());
    expected.push_back(tok.eos_id());
    EXPECT_EQ(trained, expected) << name;
    EXPECT_EQ(conv.tokens[0], tok.bos_id()) << name;
    EXPECT_FALSE(conv.trainable[0]) << name;
    // The prompt for the next turn is the conversation's untrained prefix.
    auto prompt = tokenize_prompt(tok, name, {conversation[0], conversation[1]});
    auto full =
        tokenize_conversation(tok, name, {conversation[0], conversation[1], conversation[2]});
    ASSERT_LE(prompt.size(), full.tokens.size()) << name;
    EXPECT_TRUE(std::equal(prompt.begin(), prompt.end(), full.tokens.begin())) << name;
    EXPECT_TRUE(full.trainable[prompt.size()]) << name;
    EXPECT_FALSE(full.trainable[prompt.size() - 1]) << name;
  }
  // train_on_prompt trains everything but the first token.
  auto all = tokenize_conversation(tok, "chatml", conversation, /*train_on_prompt=*/true);
  for (size_t i = 1; i < all.trainable.size(); ++i) EXPECT_TRUE(all.trainable[i]);
}

TEST(SftData, AlpacaTemplateText) {
  TILLER_REQUIRE_SHARED(tok_path, "models/stories260K/tok512.model");
  Tokenizer tok(tok_path);
  auto messages = conversation_from_record(
      {{"instruction", "Add"}, {"input", "2 and 3"}, {"output", "5"}}, "alpaca", "alpaca", "x:1");
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[0].content, "Add\n\n### Input:\n2 and 3");
  auto prompt = tokenize_prompt(tok, "alpaca", {messages[0]});
  std::vector<int64_t> body(prompt.begin() + 1, prompt.end());
  EXPECT_EQ(
      tok.decode(body),
      "Below is an instruction that describes a task. Write a response that appropriately "
      "completes the request.\n\n### Instruction:\nAdd\n\n### Input:\n2 and 3\n\n### Response:\n");
}

TEST(SftData, TruncationKeepsTheResponse) {
  Example e;
  e.tokens = {1, 10, 11, 12, 13, 14, 20, 21, 2};
  e.trainable = {0, 0, 0, 0, 0, 0, 1, 1, 1};
  EXPECT_TRUE(truncate_keeping_response(e, 6, /*eos_id=*/2));
  EXPECT_EQ(e.tokens, (std::vector<int64_t>{1, 13, 14, 20, 21, 2}));
  EXPECT_EQ(e.trainable, (std::vector<uint8_t>{0, 0, 0, 1, 1, 1}));
  Example long_response;
  long_response.tokens = {1, 10, 20, 21, 22, 23};
  long_response.trainable = {0, 0, 1, 1, 1, 1};
  EXPECT_TRUE(truncate_keeping_response(long_response, 4, /*eos_id=*/2));
  EXPECT_EQ(long_response.tokens, (std::vector<int64_t>{1, 20, 21, 22}));
  Example fits = e;
  EXPECT_FALSE(truncate_keeping_response(fits, 100, /*eos_id=*/2));
}

TEST(SftData, TruncationOfALongResponseKeepsItsTrainedEos) {
  Example e;
  e.tokens = {1, 10, 20, 21, 22, 23, 24, 2};
  e.trainable = {0, 0, 1, 1, 1, 1, 1, 1};
  EXPECT_TRUE(truncate_keeping_response(e, 5, /*eos_id=*/2));
  EXPECT_EQ(e.tokens, (std::vector<int64_t>{1, 20, 21, 22, 2}));
  EXPECT_EQ(e.trainable, (std::vector<uint8_t>{0, 1, 1, 1, 1}));
  // An EOS in the prompt (not trained) is not a response's stop: the tail is cut as it comes.
  Example untrained_end;
  untrained_end.tokens = {1, 20, 21, 22, 2};
  untrained_end.trainable = {0, 1, 1, 1, 0};
  EXPECT_TRUE(truncate_keeping_response(untrained_end, 3, /*eos_id=*/2));
  EXPECT_EQ(untrained_end.tokens, (std::vector<int64_t>{1, 20, 21}));
}

TEST(SftData, PackedBatchTargetsNeverCrossExamples) {
  std::vector<Example> examples = {{{1, 5, 6}, {0, 1, 1}}, {{1, 7, 8, 9}, {0, 0, 1, 1}}};
  BatchingOptions o;
  o.max_seq_len = 8;
  o.packing = true;
  auto rows = plan_in_order(examples, o);
  ASSERT_EQ(rows.size(), 1u);
  auto b = make_batch(examples, rows, 0, 1, o, /*pad_id=*/0);
  EXPECT_TRUE(torch::equal(b.input_ids[0].narrow(0, 0, 7), torch::tensor({1, 5, 6, 1, 7, 8, 9})));
  // position t predicts token t+1 of the same example; the last token of example 0 predicts
  // nothing.
  auto expected_targets = torch::tensor({5, 6, -100, -100, 8, 9, -100, -100});
  EXPECT_TRUE(torch::equal(b.targets[0], expected_targets)) << b.targets;
  EXPECT_TRUE(torch::equal(b.segment_ids[0], torch::tensor({0, 0, 0, 1, 1, 1, 1, -1})));
  EXPECT_EQ(b.target_count, 4);
}

TEST(SftData, SeededEpochPlansAreDeterministicAndDiffer) {
  std::vector<Example> examples;
  for (int i = 0; i < 50; ++i)
    examples.push_back({std::vector<int64_t>(3 + i % 7, 4), std::vector<uint8_t>(3 + i % 7, 1)});
  BatchingOptions o;
  o.max_seq_len = 16;
  o.seed = 3;
  EXPECT_EQ(plan_epoch(examples, o, 0), plan_epoch(examples, o, 0));
  EXPECT_NE(plan_epoch(examples, o, 0), plan_epoch(examples, o, 1));
  o.packing = false;
  auto rows = plan_epoch(examples, o, 0);
  EXPECT_EQ(rows.size(), examples.size());
}

TEST(SftData, BadInputNamesFileAndLine) {
  TILLER_REQUIRE_SHARED(tok_path, "models/stories260K/tok512.model");
  Tokenizer tok(tok_path);
  SftDataOptions o;
  o.format = "messages";
  auto load = [&](const std::string& text) {
    o.path = test::write_temp_file("sft_data", "bad.jsonl", text);
    return test::error_of([&] { load_sft_examples(o, tok, nullptr); });
  };
  const std::string good =
      R"({"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]})";
  EXPECT_NE(load(good + "\n{not json\n").find("bad.jsonl:2: invalid JSON"), std::string::npos);
  EXPECT_NE(load(good + "\n" + R"({"msgs":[]})").find("bad.jsonl:2: missing field \"messages\""),
            std::string::npos);
  EXPECT_NE(load("").find("empty file"), std::string::npos);
  EXPECT_NE(load(R"({"messages":"hello"})").find("bad.jsonl:1: field \"messages\" must be a list"),
            std::string::npos);
  EXPECT_NE(load(R"({"messages":[{"role":"user","content":5}]})").find("must be a string"),
            std::string::npos);
  EXPECT_NE(load(R"({"messages":[{"role":"user","content":"only a question"}]})")
                .find("bad.jsonl:1: conversation has no assistant turn"),
            std::string::npos);
  o.format = "prompt_completion";
  EXPECT_NE(load(R"({"prompt":"a"})").find("missing field \"completion\""), std::string::npos);

  // skip_bad_lines: bad lines are counted, good ones kept.
  o.format = "messages";
  o.skip_bad_lines = true;
  o.path = test::write_temp_file("sft_data", "mixed.jsonl",
                                 good + "\n{broken\n" + good + "\n" + R"({"messages":[]})" + "\n");
  DataStats stats;
  auto examples = load_sft_examples(o, tok, &stats);
  EXPECT_EQ(examples.size(), 2u);
  EXPECT_EQ(stats.skipped, 2);
}

TEST(SftData, GzipAndJsonArrayFiles) {
  const std::string path =
      test::write_temp_file("sft_data", "a.json", R"([{"text":"x"},{"text":"y"}])");
  auto r = read_json_records(path);
  ASSERT_EQ(r.records.size(), 2u);
  EXPECT_EQ(r.records[1].where, path + "[1]");
  TILLER_REQUIRE_SHARED(hh, "preference/hh_rlhf_harmless_base_test.jsonl.gz");
  RecordReadOptions options;
  options.max_records = 5;
  auto gz = read_json_records(hh, options);
  ASSERT_EQ(gz.records.size(), 5u);
  EXPECT_TRUE(gz.records[0].value.contains("chosen"));
}
