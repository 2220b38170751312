// The emergence suite: k-shot example selection, the instruction constraint checkers, the
// arithmetic generator and answer extraction, the mirage rule on constructed curves, the answer
// log-likelihood on stories260K against a direct computation, and `tiller eval emergence` end to
// end with its bad-input paths.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <set>

#include "common/io/hf_dir.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "eval/emergence.h"
#include "eval/emergence_data.h"
#include "eval/fewshot.h"
#include "eval/instruction_checks.h"
#include "eval/mirage.h"
#include "eval/task_eval.h"
#include "report/emergence_report.h"
#include "tests/test_util.h"

namespace tiller {
namespace {

int64_t line_count(const std::string& text) {
  return static_cast<int64_t>(std::count(text.begin(), text.end(), '\n'));
}

eval::TaskItem item(const std::string& prompt, const std::string& target,
                    const std::string& group = "") {
  eval::TaskItem t;
  t.prompt = prompt;
  t.target = target;
  t.has_target = true;
  t.group = group;
  t.where = "items.jsonl:" + prompt;
  return t;
}

std::vector<eval::TaskItem> numbered_pool(int n, const std::string& group = "") {
  std::vector<eval::TaskItem> pool;
  for (int i = 0; i < n; ++i) pool.push_back(item("p" + std::to_string(i), " t", group));
  return pool;
}

// ---------------------------------------------------------------------------------------------
// k-shot selection

TEST(FewShot, SelectsKDistinctExamplesDeterministicallyByTheSeed) {
  const auto pool = numbered_pool(20);
  const auto test = item("q", " a");
  for (int64_t k : {0, 1, 4, 8}) {
    const auto shots = eval::select_shots(pool, test, 3, k, 7);
    EXPECT_EQ(static_cast<int64_t>(shots.size()), k);
    EXPECT_EQ(std::set<size_t>(shots.begin(), shots.end()).size(), shots.size());
    EXPECT_EQ(shots, eval::select_shots(pool, test, 3, k, 7));
  }
  // Another seed or another item draws other examples; k is a prefix of k + 1.
  EXPECT_NE(eval::select_shots(pool, test, 3, 8, 7), eval::select_shots(pool, test, 3, 8, 8));
  EXPECT_NE(eval::select_shots(pool, test, 3, 8, 7), eval::select_shots(pool, test, 4, 8, 7));
  const auto four = eval::select_shots(pool, test, 3, 4, 7);
  const auto five = eval::select_shots(pool, test, 3, 5, 7);
  EXPECT_TRUE(std::equal(four.begin(), four.end(), five.begin()));
}

TEST(FewShot, NeverUsesTheTestItemItselfAndKeepsToItsGroup) {
  // The pool is the test file: each item's examples are the others.
  auto pool = numbered_pool(9);
  for (size_t i = 0; i < pool.size(); ++i) {
    const auto shots = eval::select_shots(pool, pool[i], i, 8, 1);
    ASSERT_EQ(shots.size(), 8u);
    for (size_t s : shots) EXPECT_NE(pool[s].prompt, pool[i].prompt);
  }
  auto mixed = numbered_pool(5, "add");
  for (const auto& x : numbered_pool(5, "mul")) mixed.push_back(item(x.prompt + "m", " t", "mul"));
  for (size_t s : eval::select_shots(mixed, item("q", " a", "mul"), 0, 5, 1))
    EXPECT_EQ(mixed[s].group, "mul");
  // k larger than what the pool offers: one message naming the item and the counts.
  const std::string error = test::error_of([&] { eval::select_shots(pool, pool[0], 0, 9, 1); });
  EXPECT_NE(error.find("items.jsonl:p0"), std::string::npos) << error;
  EXPECT_NE(error.find("needs 9 examples but the pool has only 8 eligible"), std::string::npos)
      << error;
}

TEST(FewShot, WritesTheExamplesBeforeThePrompt) {
  const std::vector<eval::TaskItem> pool = {item("1 @ 1 =", " 2"), item("2 @ 1 =", " 3")};
  eval::FewShotOptions options;
  options.k = 2;
  options.separator = " | ";
  const auto out = eval::with_shots({item("3 @ 1 =", " 4")}, pool, options);
  ASSERT_EQ(out.size(), 1u);
  const std::string a = "1 @ 1 = 2 | 2 @ 1 = 3 | 3 @ 1 =", b = "2 @ 1 = 3 | 1 @ 1 = 2 | 3 @ 1 =";
  EXPECT_TRUE(out[0].prompt == a || out[0].prompt == b) << out[0].prompt;
  EXPECT_EQ(out[0].target, " 4");
  options.k = 0;
  EXPECT_EQ(eval::with_shots({item("x", " y")}, pool, options)[0].prompt, "x");
}

// ---------------------------------------------------------------------------------------------
// Instruction constraints

bool met(const nlohmann::json& j, const std::string& response) {
  return eval::constraint_met(eval::parse_constraint(j, "t.jsonl:1"), response);
}

TEST(InstructionChecks, EachConstraintPassesAndFails) {
  const nlohmann::json count = {{"type", "word_count"}, {"min_words", 2}, {"max_words", 3}};
  EXPECT_TRUE(met(count, " two words"));
  EXPECT_TRUE(met(count, "one two  three\n"));
  EXPECT_FALSE(met(count, "one"));
  EXPECT_FALSE(met(count, "one two three four"));
  const nlohmann::json required = {{"type", "required_words"}, {"words", {"sun", "Warm"}}};
  EXPECT_TRUE(met(required, "the SUN is warm."));
  EXPECT_FALSE(met(required, "the sunny day is warm"));  // whole words only
  const nlohmann::json forbidden = {{"type", "forbidden_words"}, {"words", {"rain"}}};
  EXPECT_TRUE(met(forbidden, "rainbow sky"));
  EXPECT_FALSE(met(forbidden, "cold Rain!"));
  EXPECT_TRUE(met({{"type", "lowercase"}}, "all small words"));
  EXPECT_FALSE(met({{"type", "lowercase"}}, "one Capital"));
  EXPECT_FALSE(met({{"type", "lowercase"}}, "123"));  // no letter at all
  EXPECT_TRUE(met({{"type", "uppercase"}}, "ALL BIG 42"));
  EXPECT_FALSE(met({{"type", "uppercase"}}, "ALL BIg"));
  const nlohmann::json lines = {{"type", "line_count"}, {"lines", 2}};
  EXPECT_TRUE(met(lines, "first\n\nsecond\n"));
  EXPECT_FALSE(met(lines, "just one"));
  const nlohmann::json ends = {{"type", "ends_with"}, {"phrase", "the end"}};
  EXPECT_TRUE(met(ends, "and that was the end \n"));
  EXPECT_FALSE(met(ends, "the end is near"));
}

TEST(InstructionChecks, MalformedConstraintsNameTheItemAndTheField) {
  const auto error = [](const nlohmann::json& j) {
    return test::error_of([&j] { eval::parse_constraint(j, "t.jsonl:4"); });
  };
  EXPECT_NE(error({{"type", "rhymes"}}).find("t.jsonl:4: unknown constraint type \"rhymes\""),
            std::string::npos);
  EXPECT_NE(error({{"type", "lowercase"}, {"words", {"a"}}}).find("unknown key \"words\""),
            std::string::npos);
  EXPECT_NE(error({{"type", "word_count"}, {"min_words", 3}}).find("\"max_words\""),
            std::string::npos);
  EXPECT_NE(error({{"type", "word_count"}, {"min_words", 3}, {"max_words", 2}})
                .find("min_words 3 > max_words 2"),
            std::string::npos);
  EXPECT_NE(error({{"type", "required_words"}, {"words", {"two words"}}}).find("single words"),
            std::string::npos);
  // In a task file: the reference target must meet its own constraints.
  const std::string dir = test::temp_dir("emergence_bad_constraint");
  const std::string path = test::write_file(
      dir + "/t.jsonl",
      "{\"prompt\": \"Write 2 words.\", \"target\": \" one\", \"constraints\": [{\"type\": "
      "\"word_count\", \"min_words\": 2, \"max_words\": 2}]}\n");
  const std::string e = test::error_of([&path] { eval::read_task_file(path); });
  EXPECT_NE(e.find(path + ":1: constraints[0]: the target"), std::string::npos) << e;
}

// ---------------------------------------------------------------------------------------------
// Arithmetic and answer extraction

TEST(EmergenceData, ArithmeticIsWorkedStepByStepAndTestProblemsAreHeldOut) {
  const eval::ArithmeticProblem p{3, 4, 5, 6};
  EXPECT_EQ(p.answer(), 17);
  EXPECT_EQ(eval::arithmetic_prompt(p), "Q: 3 + 4 * 5 - 6 = ? A:");
  EXPECT_EQ(eval::arithmetic_target(p, false), " #### 17");
  EXPECT_EQ(eval::arithmetic_target(p, true), " 4 * 5 = 20, 3 + 20 = 23, 23 - 6 = 17 #### 17");

  eval::EmergenceDataOptions options;
  options.corpus_lines = 3000;
  options.test_items = 40;
  options.pool_items = 20;
  const auto a = eval::make_emergence_suite(options);
  const auto b = eval::make_emergence_suite(options);
  EXPECT_EQ(a.corpus, b.corpus);  // one seed, one suite
  EXPECT_EQ(a.steps_worked, b.steps_worked);
  ASSERT_EQ(a.steps_worked.size(), 40u);
  std::string corpus;
  for (const auto& line : a.corpus) corpus += line + "\n";
  for (size_t i = 0; i < a.steps_worked.size(); ++i) {
    const auto& worked = a.steps_worked[i];
    const std::string prompt = worked["prompt"];
    EXPECT_EQ(corpus.find(prompt), std::string::npos) << prompt << " is in the corpus";
    EXPECT_EQ(prompt, a.steps_direct[i]["prompt"].get<std::string>());
    EXPECT_EQ(eval::extract_answer(worked["target"], "####"),
              eval::extract_answer(a.steps_direct[i]["target"], "####"));
    EXPECT_GE(std::stoi(eval::extract_answer(worked["target"], "####")), 0);
  }
  uint64_t state = 5;
  for (const auto& q : eval::draw_arithmetic(50, /*held_out=*/true, 1, state))
    EXPECT_TRUE(eval::arithmetic_held_out(q, 1));
  for (const auto& q : eval::draw_arithmetic(50, /*held_out=*/false, 1, state)) {
    EXPECT_FALSE(eval::arithmetic_held_out(q, 1));
    EXPECT_LE(q.d, q.a + q.b * q.c);
  }
  for (const auto& x : a.instructions)
    EXPECT_EQ(corpus.find(x["prompt"].get<std::string>()), std::string::npos);
}

TEST(EmergenceData, ExtractsTheNumberAfterTheLastMarker) {
  EXPECT_EQ(eval::extract_answer(" 4 * 5 = 20 #### 17", "####"), "17");
  EXPECT_EQ(eval::extract_answer("#### 1 then #### -3.5 |", "####"), "-3.5");
  EXPECT_EQ(eval::extract_answer("####12abc", "####"), "12");
  EXPECT_EQ(eval::extract_answer("#### x 12", "####"), "");
  EXPECT_EQ(eval::extract_answer("17", "####"), "");
  EXPECT_EQ(eval::extract_answer("#### 7.", "####"), "7");
  size_t begin = 0;
  EXPECT_EQ(eval::extract_answer("ab ####  42", "####", &begin), "42");
  EXPECT_EQ(begin, 9u);
}

// ---------------------------------------------------------------------------------------------
// The mirage rule

TEST(MirageRule, ReadsConstructedCurves) {
  const std::vector<double> x = {3, 3.5, 4, 4.5, 5, 5.5, 6, 6.5};
  const eval::MirageRule rule;
  // Exact match at 0 until one size, then high: sharp. The log-likelihood rising on a line.
  const auto jump = eval::discontinuous_shape(x, {0, 0, 0, 0, 0.02, 0.6, 0.7, 0.75}, 100, rule);
  EXPECT_EQ(jump.reading, "sharp");
  EXPECT_NEAR(jump.step_share, 0.58 / 0.75, 1e-12);
  std::vector<double> line;
  for (double v : x) line.push_back(-3 + 0.4 * v);
  const auto smooth = eval::continuous_shape(x, line, rule);
  EXPECT_EQ(smooth.reading, "smooth");
  EXPECT_NEAR(smooth.r2, 1.0, 1e-12);
  EXPECT_NEAR(smooth.slope, 0.4, 1e-12);
  EXPECT_EQ(eval::mirage_verdict(jump, smooth).rfind("mirage-like", 0), 0u);
  // A steady climb is gradual; a flat zero is flat; a drop is no jump.
  const auto reading = [&](const std::vector<double>& y, int64_t items) {
    return eval::discontinuous_shape(x, y, items, rule).reading;
  };
  EXPECT_EQ(reading({0, .1, .2, .3, .4, .5, .6, .7}, 100), "gradual");
  EXPECT_EQ(reading({0, 0, 0.01, 0, 0, 0.02, 0, 0}, 100), "flat");
  EXPECT_EQ(reading({.8, .8, .8, .1, .1, .1, .1, .1}, 100), "gradual");
  const auto zero = eval::discontinuous_shape(x, std::vector<double>(8, 0), 100, rule);
  EXPECT_EQ(eval::mirage_verdict(zero, smooth).rfind("below threshold", 0), 0u);
  // Noise: 0.02 -> 0.08 over 100 items is within 2 standard errors (2 * 0.03): flat; the same
  // curve over 10,000 items is a sharp jump.
  const std::vector<double> small = {0.02, 0.02, 0.02, 0.02, 0.08, 0.08, 0.08, 0.08};
  EXPECT_EQ(reading(small, 100), "flat");
  const auto measured = eval::discontinuous_shape(x, small, 10000, rule);
  EXPECT_EQ(measured.reading, "sharp");
  EXPECT_NEAR(measured.step_noise, 2 * std::sqrt((0.02 * 0.98 + 0.08 * 0.92) / 10000), 1e-12);
  // One rise of 0.3 among wobbles of 0.1 over 100 items: beyond the noise, most of the range.
  EXPECT_EQ(reading({0.1, 0.2, 0.1, 0.2, 0.5, 0.4, 0.5, 0.4}, 100), "sharp");
  // A continuous curve with its own jump is irregular: "sharp in both".
  const auto step = eval::continuous_shape(x, {-3, -3, -3, -3, -1, -1, -1, -1}, rule);
  EXPECT_EQ(step.reading, "irregular");
  EXPECT_EQ(eval::mirage_verdict(jump, step).rfind("sharp in both", 0), 0u);
  // Sizes out of order are refused.
  EXPECT_NE(test::error_of([&] {
              eval::continuous_shape({2, 1}, {0, 1}, rule);
            }).find("increasing order"),
            std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// On a real model

// log p(whole[from:] | whole[:from]) by one unpadded forward pass.
double direct_loglik(TransformerImpl& model, const std::vector<int64_t>& whole, size_t from) {
  torch::NoGradGuard no_grad;
  const auto ids = torch::tensor(whole, torch::kLong).unsqueeze(0);
  const auto logp =
      torch::log_softmax(model.forward(ids, torch::ones_like(ids)).to(torch::kDouble), -1)[0];
  double sum = 0;
  for (size_t t = from; t < whole.size(); ++t) sum += logp[t - 1][whole[t]].item<double>();
  return sum;
}

TEST(EmergenceEndToEnd, AnswerLoglikEqualsADirectComputationOnStories260K) {
  const std::string dir = test::temp_dir("emergence_loglik");
  const std::string model_dir = test::stories260k_hf_dir(dir + "/m");
  if (model_dir.empty()) GTEST_SKIP() << "skipped: stories260K not found under ../shared/data";
  const std::string tasks = test::write_file(
      dir + "/t.jsonl",
      "{\"prompt\": \"Lily had 3 cats and\", \"target\": \" 2 dogs. #### 5\", "
      "\"answer_after\": \"####\"}\n"
      "{\"prompt\": \"Tom saw\", \"target\": \" a big dog\", \"constraints\": [{\"type\": "
      "\"forbidden_words\", \"words\": [\"qqqz\"]}, {\"type\": \"word_count\", \"min_words\": 0, "
      "\"max_words\": 99}]}\n"
      "{\"prompt\": \"The sun\", \"target\": \" zzzq\", \"constraints\": [{\"type\": "
      "\"required_words\", \"words\": [\"zzzq\"]}, {\"type\": \"word_count\", \"min_words\": 0, "
      "\"max_words\": 99}], \"until\": [\".\"], \"max_new_tokens\": 5}\n");
  const std::string pool =
      test::write_file(dir + "/pool.jsonl",
                       "{\"prompt\": \"Once upon a time\", \"target\": \" there\"}\n"
                       "{\"prompt\": \"The cat\", \"target\": \" ran.\"}\n");
  eval::FewShotOptions shots;
  shots.k = 2;
  const auto items =
      eval::with_shots(eval::read_task_file(tasks), eval::read_task_file(pool), shots);
  Transformer model = load_hf_model(model_dir);
  model->eval();
  Tokenizer tok(tokenizer_path_in(model_dir));
  const auto r = eval::evaluate_tasks(*model, tok, items, eval::EvalOptions{});

  // The answer after "####", given the 2-shot prompt and the target up to the marker.
  const std::string head = items[0].prompt + " 2 dogs. ####";
  const auto context = tok.encode(head, true);
  const auto whole = tok.encode(head + " 5", true);
  ASSERT_TRUE(std::equal(context.begin(), context.end(), whole.begin()));
  EXPECT_NEAR(r.per_item[0].answer_loglik_sum, direct_loglik(*model, whole, context.size()), 1e-4);
  EXPECT_EQ(r.per_item[0].answer_loglik_tokens,
            static_cast<int64_t>(whole.size() - context.size()));
  // The greedy budget is the whole target's tokens (the steps and the answer), not the answer's.
  const auto prompt0 = tok.encode(items[0].prompt, true);
  const auto target0 = tok.encode(items[0].prompt + items[0].target, true);
  EXPECT_EQ(r.per_item[0].target_ids,
            std::vector<int64_t>(target0.begin() + static_cast<std::ptrdiff_t>(prompt0.size()),
                                 target0.end()));
  EXPECT_EQ(r.per_item[0].output_ids.size(), r.per_item[0].target_ids.size());
  // Without a marker the answer is the whole target.
  const auto prompt1 = tok.encode(items[1].prompt, true);
  const auto whole1 = tok.encode(items[1].prompt + items[1].target, true);
  EXPECT_NEAR(r.per_item[1].answer_loglik_sum, direct_loglik(*model, whole1, prompt1.size()), 1e-4);
  EXPECT_EQ(r.per_item[1].answer_loglik_sum, r.per_item[1].loglik_sum);
  EXPECT_NEAR(r.answer_loglik_per_token,
              (r.per_item[0].answer_loglik_sum / r.per_item[0].answer_loglik_tokens +
               r.per_item[1].answer_loglik_sum / r.per_item[1].answer_loglik_tokens +
               r.per_item[2].answer_loglik_sum / r.per_item[2].answer_loglik_tokens) /
                  3,
              1e-9);
  // Instruction items: exact match is the strict pass; the fraction met is the companion.
  EXPECT_TRUE(r.per_item[1].exact);
  EXPECT_FALSE(r.per_item[2].exact);  // the model never writes "zzzq"
  EXPECT_EQ(r.per_item[2].constraints_met, 1);
  EXPECT_EQ(r.per_item[2].output.find('.'), std::string::npos) << r.per_item[2].output;
  EXPECT_EQ(r.instruction_items, 2);
  EXPECT_DOUBLE_EQ(r.constraint_fraction, (1.0 + 0.5) / 2);
}

// A suite of the synthetic tasks (few items) with two sizes of stories260K (the same model
// under two N) in a runs.jsonl.
struct SmallSuite {
  std::string dir, runs, suite;
};
SmallSuite small_suite(const std::string& name) {
  SmallSuite s;
  s.dir = test::temp_dir(name);
  const std::string model = test::stories260k_hf_dir(s.dir + "/m");
  if (model.empty()) return s;
  eval::EmergenceDataOptions options;
  options.corpus_lines = 10;
  options.test_items = 3;
  options.pool_items = 9;
  s.suite = eval::write_emergence_suite(s.dir + "/suite", options);
  s.runs = test::write_file(s.dir + "/runs.jsonl",
                            "{\"N\": 2e5, \"model\": \"m\"}\n{\"N\": 1e5, \"model\": \"m\"}\n");
  return s;
}

TEST(EmergenceEndToEnd, WritesTheTableTheFiguresAndTheReadings) {
  const SmallSuite s = small_suite("emergence_cli");
  if (s.runs.empty()) GTEST_SKIP() << "skipped: stories260K not found under ../shared/data";
  // Written beside runs.jsonl by default, where `tiller report SWEEP_DIR` finds it.
  const auto cli = test::run_tiller_cli(
      {"eval", "emergence", "--across", s.runs, "--suite", s.suite, "--threads", "1"});
  ASSERT_EQ(cli.code, 0) << cli.err;
  const auto j = read_json_file(s.dir + "/emergence/emergence.json");
  // 9 + 3 + 3 + 3 variants (suite.json: infer_op at k = 0..8, the others at 0..2), 2 sizes each.
  EXPECT_EQ(j.at("rows").size(), 36u);
  EXPECT_EQ(j.at("readings").size(), 18u);
  EXPECT_LT(j["rows"][0]["N"].get<double>(), j["rows"][1]["N"].get<double>());  // sorted by N
  EXPECT_EQ(j["rows"][0]["task"], "infer_op");
  EXPECT_EQ(j["readings"][0]["discontinuous"]["reading"], "flat");  // the same model twice
  for (const char* figure : {"in_context", "step_by_step", "instructions"}) {
    const std::string svg = test::read_bytes(s.dir + "/emergence/" + figure + ".svg");
    EXPECT_NE(svg.find("data-panel=\"discontinuous\""), std::string::npos) << figure;
    EXPECT_NE(svg.find("data-panel=\"continuous\""), std::string::npos) << figure;
  }
  const std::string md = test::read_bytes(s.dir + "/emergence/emergence.md");
  for (const char* row :
       {"| steps_worked | 0 | exact match |", "| steps_direct | 1 | exact match |",
        "| instructions | 1 | constraints met |"})
    EXPECT_NE(md.find(row), std::string::npos) << row << "\n" << md;
  EXPECT_NE(md.find("**infer_op k=8**"), std::string::npos) << md;
  // The sweep's report shows the figures inline and each reading.
  const std::string section = render_emergence_section(s.dir);
  EXPECT_NE(section.find("<h2>Emergence</h2>"), std::string::npos);
  for (const char* figure : {"in_context", "step_by_step", "instructions"})
    EXPECT_NE(section.find(std::string("tiller eval emergence: ") + figure), std::string::npos);
  EXPECT_EQ(section.find("<?xml"), std::string::npos);
  EXPECT_NE(section.find(j["readings"][17]["verdict"].get<std::string>()), std::string::npos);
  EXPECT_EQ(render_emergence_section(s.dir + "/m"), "");  // nothing there: no section
}

TEST(EmergenceEndToEnd, BadInputIsOneLineAndNoOutput) {
  const SmallSuite s = small_suite("emergence_bad");
  if (s.runs.empty()) GTEST_SKIP() << "skipped: stories260K not found under ../shared/data";
  const auto run = [&s](const std::string& suite_text) {
    const std::string suite = test::write_file(s.dir + "/suite/bad.json", suite_text);
    return test::run_tiller_cli(
        {"eval", "emergence", "--across", s.runs, "--suite", suite, "--out", s.dir + "/out"});
  };
  // k larger than the pool: 8 solved examples of the pool's 9, the item itself never among them.
  auto cli =
      run("{\"tasks\": [{\"name\": \"a\", \"items\": \"steps_direct.jsonl\", \"pool\": "
          "\"steps_direct.jsonl\", \"shots\": [3]}]}");
  EXPECT_EQ(cli.code, 1);
  EXPECT_EQ(line_count(cli.err), 1) << cli.err;
  EXPECT_NE(cli.err.find("needs 3 examples but the pool has only 2 eligible"), std::string::npos)
      << cli.err;
  // An unknown key and a negative shot count, reported together with their paths.
  cli =
      run("{\"tasks\": [{\"name\": \"a\", \"items\": \"x.jsonl\", \"shot\": [1], \"shots\": "
          "[-1]}]}");
  EXPECT_EQ(cli.code, 1);
  EXPECT_NE(cli.err.find("tasks[0].shot"), std::string::npos) << cli.err;
  EXPECT_NE(cli.err.find("tasks[0].shots"), std::string::npos) << cli.err;
  // A malformed line of a task file names file:line.
  test::write_file(s.dir + "/suite/broken.jsonl",
                   "{\"prompt\": \"a\", \"target\": \" b\"}\n{oops\n");
  cli = run("{\"tasks\": [{\"name\": \"a\", \"items\": \"broken.jsonl\"}]}");
  EXPECT_EQ(cli.code, 1);
  EXPECT_EQ(line_count(cli.err), 1) << cli.err;
  EXPECT_NE(cli.err.find("broken.jsonl:2"), std::string::npos) << cli.err;
  EXPECT_FALSE(path_exists(s.dir + "/out"));  // nothing written
  // Plain `eval` with k-shot: the pool is required.
  cli = test::run_tiller_cli({"eval", "--model", s.dir + "/m", "--tasks",
                              s.dir + "/suite/steps_direct.jsonl", "--num-fewshot", "2"});
  EXPECT_EQ(cli.code, 1);
  EXPECT_NE(cli.err.find("--fewshot-pool"), std::string::npos) << cli.err;
}

}  // namespace
}  // namespace tiller
