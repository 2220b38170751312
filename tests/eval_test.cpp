// Task evaluation: the task format's errors, the metric functions on hand-computed cases, the toy
// task generator, and end to end on stories260K (log-likelihoods against an independent
// teacher-forced pass, exact match 1 on the model's own greedy outputs, `--across` on a 2-point
// sweep layout).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "common/data/batching.h"
#include "common/data/sft_data.h"
#include "common/io/hf_dir.h"
#include "common/io/llama2c.h"
#include "common/rollout/generator.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "eval/make_task.h"
#include "eval/task_eval.h"
#include "tests/test_util.h"

namespace tiller {
namespace {

// `tiller ARGS`: exit status, stdout, stderr.
using CliRun = test::CliResult;
CliRun tiller(const std::vector<std::string>& args) {
  return test::run_tiller_cli(args);
}

// ---------------------------------------------------------------------------------------------

TEST(EvalTasks, ReadsGenerationAndChoiceItems) {
  const std::string dir = test::temp_dir("eval_tasks_ok");
  const std::string path = test::write_file(
      dir + "/t.jsonl",
      "{\"prompt\": \"Tom saw\", \"target\": \" a dog.\"}\n"
      "\n"
      "{\"prompt\": \"Lily\", \"choices\": [\" ran.\", \" sat.\"], \"answer\": 1, \"id\": 7}\n"
      "{\"prompt\": \"A\", \"target\": \" b\", \"choices\": [\" b\", \" c\"], \"answer\": 0}\n");
  const auto items = eval::read_task_file(path);
  ASSERT_EQ(items.size(), 3u);
  EXPECT_TRUE(items[0].has_target);
  EXPECT_EQ(items[0].target, " a dog.");
  EXPECT_TRUE(items[0].choices.empty());
  EXPECT_FALSE(items[1].has_target);
  EXPECT_EQ(items[1].choices, (std::vector<std::string>{" ran.", " sat."}));
  EXPECT_EQ(items[1].answer, 1);
  EXPECT_EQ(items[1].where, path + ":3");
  EXPECT_TRUE(items[2].has_target && items[2].choices.size() == 2);
}

TEST(EvalTasks, ErrorsNameFileLineAndField) {
  const std::string dir = test::temp_dir("eval_tasks_bad");
  const std::string good = "{\"prompt\": \"p\", \"target\": \" t\"}\n";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{\"prompt\": \"p\", \"target\": ", "invalid JSON"},
      {"[1, 2]", "expected a JSON object"},
      {"{\"target\": \" t\"}", "\"prompt\""},
      {"{\"prompt\": 3, \"target\": \" t\"}", "\"prompt\""},
      {"{\"prompt\": \"p\"}", "needs \"target\""},
      {"{\"prompt\": \"p\", \"target\": 5}", "\"target\""},
      {"{\"prompt\": \"p\", \"target\": \"\"}", "\"target\" is empty"},
      {"{\"prompt\": \"p\", \"choices\": [\" a\"], \"answer\": 0}", "\"choices\""},
      {"{\"prompt\": \"p\", \"choices\": \" a\", \"answer\": 0}", "\"choices\""},
      {"{\"prompt\": \"p\", \"choices\": [\" a\", 2], \"answer\": 0}", "\"choices\"[1]"},
      {"{\"prompt\": \"p\", \"choices\": [\" a\", \" b\"]}", "\"answer\" is missing"},
      {"{\"prompt\": \"p\", \"choices\": [\" a\", \" b\"], \"answer\": 2}", "\"answer\""},
      {"{\"prompt\": \"p\", \"choices\": [\" a\", \" b\"], \"answer\": \"0\"}", "\"answer\""},
      {"{\"prompt\": \"p\", \"target\": \" t\", \"answer\": 0}", "\"answer\" without"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string path = test::write_file(dir + "/bad" + std::to_string(i) + ".jsonl",
                                              good + good + cases[i].first + "\n" + good);
    const std::string message = test::error_of([&] { eval::read_task_file(path); });
    EXPECT_NE(message.find(path + ":3"), std::string::npos) << cases[i].first << " -> " << message;
    EXPECT_NE(message.find(cases[i].second), std::string::npos)
        << cases[i].first << " -> " << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
  EXPECT_NE(test::error_of([&] {
              eval::read_task_file(dir + "/missing.jsonl");
            }).find(dir + "/missing.jsonl"),
            std::string::npos);
  EXPECT_NE(
      test::error_of([&] { eval::read_task_file(test::write_file(dir + "/empty.jsonl", "")); }),
      "");
}

// ---------------------------------------------------------------------------------------------

TEST(EvalMetrics, EditDistanceOverTokenIds) {
  EXPECT_EQ(eval::edit_distance({}, {}), 0);
  EXPECT_EQ(eval::edit_distance({1, 2, 3}, {}), 3);
  EXPECT_EQ(eval::edit_distance({}, {4, 5}), 2);
  EXPECT_EQ(eval::edit_distance({1, 2, 3}, {1, 2, 3}), 0);
  EXPECT_EQ(eval::edit_distance({1, 2, 3}, {1, 9, 3}), 1);  // one substitution
  EXPECT_EQ(eval::edit_distance({1, 2, 3}, {1, 3}), 1);     // one deletion
  EXPECT_EQ(eval::edit_distance({1, 3}, {1, 2, 3}), 1);     // one insertion
  EXPECT_EQ(eval::edit_distance({1, 2, 3, 4}, {2, 3, 4, 5}), 2);
  // kitten -> sitting: 3 (k->s, e->i, +g), as ids
  const std::vector<int64_t> kitten = {'k', 'i', 't', 't', 'e', 'n'};
  const std::vector<int64_t> sitting = {'s', 'i', 't', 't', 'i', 'n', 'g'};
  EXPECT_EQ(eval::edit_distance(kitten, sitting), 3);
  EXPECT_EQ(eval::edit_distance(sitting, kitten), 3);
}

TEST(EvalMetrics, ChoiceProbabilitiesAndBrier) {
  const auto p = eval::choice_probabilities({std::log(0.2), std::log(0.1), std::log(0.1)});
  ASSERT_EQ(p.size(), 3u);
  EXPECT_NEAR(p[0], 0.5, 1e-12);
  EXPECT_NEAR(p[1], 0.25, 1e-12);
  EXPECT_NEAR(p[2], 0.25, 1e-12);
  // (0.5 - 1)^2 + 0.25^2 + 0.25^2 = 0.375; answer 1: 0.25 + 0.5625 + 0.0625 = 0.875
  EXPECT_NEAR(eval::brier_score(p, 0), 0.375, 1e-12);
  EXPECT_NEAR(eval::brier_score(p, 1), 0.875, 1e-12);
  EXPECT_NEAR(eval::brier_score({1, 0, 0, 0}, 0), 0, 1e-12);
  EXPECT_NEAR(eval::brier_score({0, 1}, 0), 2, 1e-12);
  // Stable for very negative log-likelihoods (summed over long choices).
  const auto q = eval::choice_probabilities({-5000, -5000 - std::log(3.0)});
  EXPECT_NEAR(q[0], 0.75, 1e-12);
  EXPECT_NEAR(q[1], 0.25, 1e-12);
}

TEST(EvalMetrics, ExactMatchTrimsWhitespaceOnly) {
  EXPECT_TRUE(eval::exact_match(" the park.", "the park."));
  EXPECT_TRUE(eval::exact_match("the park.\n", " the park. "));
  EXPECT_TRUE(eval::exact_match("\t\r\nx", "x"));
  EXPECT_FALSE(eval::exact_match("the park", "the park."));
  EXPECT_FALSE(eval::exact_match("the  park.", "the park."));  // inner whitespace counts
  EXPECT_FALSE(eval::exact_match("The park.", "the park."));
  EXPECT_TRUE(eval::exact_match("  ", ""));
  EXPECT_EQ(eval::trim("  a b \n"), "a b");
}

// ---------------------------------------------------------------------------------------------

TEST(EvalMakeTask, SplitsSentences) {
  EXPECT_EQ(eval::split_sentences("One day, Tom ran.  He was happy! Was he? yes"),
            (std::vector<std::string>{"One day, Tom ran.", "He was happy!", "Was he?", "yes"}));
  EXPECT_EQ(eval::split_sentences("Mr.Smith 3.5 apples."),
            (std::vector<std::string>{"Mr.Smith 3.5 apples."}));
}

TEST(EvalMakeTask, ItemsAreDeterministicAndWellFormed) {
  std::vector<std::string> documents;
  const char* animals[] = {"cat", "dog", "bird", "fish", "frog", "duck", "cow"};
  const char* places[] = {"the big park", "a small house", "the green hill", "the old tree"};
  for (int i = 0; i < 30; ++i)
    documents.push_back("One day the " + std::string(animals[i % 7]) + " went to " + places[i % 4] +
                        ". It said \"hi\" to me. Then the " + animals[(i + 3) % 7] + " sat near " +
                        places[(i + 1) % 4] + " with a friend " + std::to_string(i) + ".");
  eval::MakeTaskOptions o;
  o.count = 12;
  o.seed = 7;
  o.target_words = 2;
  const auto a = eval::make_task_items(documents, o);
  const auto b = eval::make_task_items(documents, o);
  ASSERT_EQ(a.size(), 12u);
  EXPECT_EQ(a, b);
  o.seed = 8;
  EXPECT_NE(eval::make_task_items(documents, o), a);
  std::set<std::string> sentences;
  for (const auto& d : documents)
    for (const auto& s : eval::split_sentences(d)) sentences.insert(s);
  for (const auto& item : a) {
    const std::string prompt = item.at("prompt"), target = item.at("target");
    EXPECT_EQ(target[0], ' ');
    EXPECT_EQ(std::count(target.begin(), target.end(), ' '), 2) << target;  // " w1 w2"
    EXPECT_EQ(sentences.count(prompt + target), 1u) << prompt + target;
    EXPECT_EQ(prompt.find('"'), std::string::npos);
    const auto choices = item.at("choices").get<std::vector<std::string>>();
    ASSERT_EQ(choices.size(), 4u);
    EXPECT_EQ(choices.at(item.at("answer").get<size_t>()), target);
    EXPECT_EQ(std::set<std::string>(choices.begin(), choices.end()).size(), 4u);
  }
  // Read back as a task file.
  const std::string dir = test::temp_dir("eval_make_task");
  std::string text;
  for (const auto& item : a) text += item.dump() + "\n";
  const auto items = eval::read_task_file(test::write_file(dir + "/t.jsonl", text));
  EXPECT_EQ(items.size(), 12u);
  // Too few distinct endings is an error.
  o.choices = 100;
  EXPECT_NE(test::error_of([&] { eval::make_task_items(documents, o); }).find("distinct"),
            std::string::npos);
}

TEST(EvalMakeTask, HeldOutDocumentsAreNeverInATrainingChunk) {
  TILLER_REQUIRE_SHARED(tok_path, "models/stories260K/tok512.model");
  const Tokenizer tok(tok_path);
  std::vector<std::string> documents;
  for (int i = 0; i < 400; ++i)
    documents.push_back("Story " + std::to_string(i) +
                        ": the little fox found a shiny stone in box " +
                        std::to_string(i * 7919 % 1000) + ".");
  const std::string dir = test::temp_dir("eval_held_out");
  std::string text;
  for (const auto& d : documents) text += d + "\n";
  const std::string path = test::write_file(dir + "/corpus.txt", text);
  EXPECT_EQ(read_text_documents(path, false, nullptr), documents);
  const int64_t max_seq_len = 32;
  const double fraction = 0.2;
  const uint64_t seed = 1234;
  const auto held = eval::held_out_documents(documents, tok, max_seq_len, fraction, seed);
  EXPECT_GT(held.size(), 10u);
  EXPECT_LT(held.size(), 200u);
  // Against the pretrain stage's own loading and split: no training example holds any held-out
  // document's text (each document's tokens are unique: it has its own number).
  auto all = load_text_examples(path, tok, max_seq_len, false, nullptr);
  std::vector<Example> train, val;
  split_validation(all, fraction, seed, &train, &val);
  for (int64_t d : held) {
    const auto ids = tok.encode(documents[d], true);
    const auto head = tok.encode("Story " + std::to_string(d) + ":", true);  // unique to d
    ASSERT_TRUE(std::equal(head.begin(), head.end(), ids.begin()));
    for (const auto& e : train)
      EXPECT_EQ(std::search(e.tokens.begin(), e.tokens.end(), head.begin(), head.end()),
                e.tokens.end())
          << "document " << d << " is in a training chunk";
  }

  // The CLI reads the split from a run's resolved recipe and the stage's tokenizer.
  const std::string run_dir = dir + "/run";
  make_directories(run_dir + "/pretrain/final");
  test::write_file(run_dir + "/pretrain/final/tokenizer.model", test::read_bytes(tok_path));
  const nlohmann::json recipe = {{"run", {{"dir", run_dir}, {"seed", seed}}},
                                 {"stages",
                                  {{{"name", "pretrain"},
                                    {"type", "pretrain"},
                                    {"tokenizer", tok_path},
                                    {"model", {{"shape", "stories260k"}}},
                                    {"data", {{"train", path}, {"val_fraction", fraction}}},
                                    {"train", {{"steps", 1}, {"max_seq_len", max_seq_len}}}}}}};
  test::write_file(run_dir + "/recipe.json", recipe.dump(2));
  CliRun cli = tiller({"eval", "make-task", "--from", path, "--out", dir + "/t.jsonl", "--count",
                       "1000", "--target-words", "2", "--held-out-of", run_dir + "/pretrain"});
  ASSERT_EQ(cli.code, 0) << cli.err;
  std::set<std::string> held_sentences;
  for (int64_t d : held) held_sentences.insert(documents[d]);
  const auto items = eval::read_task_file(dir + "/t.jsonl");
  EXPECT_EQ(items.size(), held.size()) << cli.out << cli.err;  // one sentence per document
  for (const auto& item : items)
    EXPECT_EQ(held_sentences.count(item.prompt + item.target), 1u) << item.prompt + item.target;
  // A stage trained on another file is refused.
  const std::string other = test::write_file(dir + "/other.txt", text);
  cli = tiller({"eval", "make-task", "--from", other, "--out", dir + "/u.jsonl", "--held-out-of",
                run_dir + "/pretrain"});
  EXPECT_EQ(cli.code, 1);
  EXPECT_NE(cli.err.find("pretrained on"), std::string::npos) << cli.err;
}

// ---------------------------------------------------------------------------------------------
// End to end on stories260K

// stories260K as an HF directory under `dir`; "" when the shared model is absent.
std::string stories260k_dir(const std::string& dir) {
  return test::stories260k_hf_dir(dir);
}

const std::vector<std::string> kTextPrompts = {"Once upon a time",
                                               "Lily went to the",
                                               "Tom had a big",
                                               "The cat saw a",
                                               "One day, a little girl named",
                                               "The sun was",
                                               "Ben and his mom"};

// Greedy continuations of kTextPrompts (6 tokens, cut at EOS) as a task file: target = the model's
// own output, and a choice item with it as the right answer. Prompts whose output has a newline
// are left out.
std::string own_greedy_task(const std::string& model_dir, const std::string& path) {
  Transformer model = load_hf_model(model_dir);
  model->eval();
  Tokenizer tok(tokenizer_path_in(model_dir));
  std::vector<std::vector<int64_t>> prompts;
  for (const auto& p : kTextPrompts) prompts.push_back(tok.encode(p, true));
  SamplingOptions sampling;
  sampling.temperature = 0;
  sampling.max_new_tokens = 6;
  sampling.eos_id = tok.eos_id();
  sampling.pad_id = tok.pad_id();
  sampling.full_pass_logprobs = false;
  const auto batch = generate(*model, prompts, sampling);
  std::string text;
  for (size_t i = 0; i < kTextPrompts.size(); ++i) {
    const std::string target = continuation_text(tok, prompts[i], batch.response(i), tok.eos_id());
    if (target.find('\n') != std::string::npos || eval::trim(target).empty()) continue;
    text += nlohmann::json{{"prompt", kTextPrompts[i]},
                           {"target", target},
                           {"choices", {" banana boat.", target, " was red."}},
                           {"answer", 1}}
                .dump() +
            "\n";
  }
  return test::write_file(path, text);
}

TEST(EvalEndToEnd, LoglikIsTeacherForcedAndOwnGreedyOutputsMatchExactly) {
  const std::string dir = test::temp_dir("eval_e2e");
  const std::string model_dir = stories260k_dir(dir + "/m");
  if (model_dir.empty()) GTEST_SKIP() << "skipped: stories260K not found under ../shared/data";
  const std::string tasks = own_greedy_task(model_dir, dir + "/own.jsonl");
  const auto items = eval::read_task_file(tasks);
  ASSERT_GE(items.size(), 4u);

  Transformer model = load_hf_model(model_dir);
  model->eval();
  Tokenizer tok(tokenizer_path_in(model_dir));
  eval::EvalOptions options;
  options.max_new_tokens = 6;
  options.batch_size = 3;  // several batches, both for scoring and generation
  const auto r = eval::evaluate_tasks(*model, tok, items, options);
  EXPECT_EQ(r.items, static_cast<int64_t>(items.size()));
  EXPECT_EQ(r.generation_items, r.items);
  EXPECT_EQ(r.choice_items, r.items);
  EXPECT_EQ(r.exact_match, 1.0);
  EXPECT_EQ(r.edit_distance, 0.0);

  // The log-likelihood of each target, recomputed one unpadded sequence at a time.
  torch::NoGradGuard no_grad;
  double mean = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const auto context = tok.encode(items[i].prompt, true);
    const auto whole = tok.encode(items[i].prompt + items[i].target, true);
    ASSERT_TRUE(std::equal(context.begin(), context.end(), whole.begin()));
    const auto ids = torch::tensor(whole, torch::kLong).unsqueeze(0);
    const auto logp =
        torch::log_softmax(model->forward(ids, torch::ones_like(ids)).to(torch::kDouble), -1)[0];
    double sum = 0;
    for (size_t t = context.size(); t < whole.size(); ++t)
      sum += logp[t - 1][whole[t]].item<double>();
    const auto& item = r.per_item[i];
    EXPECT_EQ(item.loglik_tokens, static_cast<int64_t>(whole.size() - context.size()));
    EXPECT_NEAR(item.loglik_sum, sum, 1e-4) << items[i].where;
    EXPECT_EQ(item.target_ids, std::vector<int64_t>(whole.begin() + context.size(), whole.end()));
    // The choice equal to the target scores the same, to fp32 rounding (other batch, padding).
    EXPECT_NEAR(item.choice_logliks[1], sum, 1e-4);
    mean += sum / static_cast<double>(whole.size() - context.size());
  }
  EXPECT_NEAR(r.loglik_per_token, mean / static_cast<double>(items.size()), 1e-6);
  EXPECT_GT(r.p_correct, 0.5);  // its own continuation beats "banana boat." and "was red."

  // The CLI reports the same numbers.
  CliRun cli = tiller({"eval", "--model", model_dir, "--tasks", tasks, "--max-new-tokens", "6",
                       "--threads", "1", "--json"});
  ASSERT_EQ(cli.code, 0) << cli.err;
  const auto j = nlohmann::json::parse(cli.out);
  EXPECT_EQ(j.at("exact_match").get<double>(), 1.0);
  EXPECT_NEAR(j.at("loglik_per_token").get<double>(), r.loglik_per_token, 1e-5);
  EXPECT_NEAR(j.at("brier").get<double>(), r.brier, 1e-5);
  EXPECT_EQ(j.at("per_item").size(), items.size());
  cli = tiller({"eval", "--model", model_dir, "--tasks", tasks, "--threads", "1"});
  ASSERT_EQ(cli.code, 0) << cli.err;
  EXPECT_NE(cli.out.find("exact match"), std::string::npos) << cli.out;
  EXPECT_NE(cli.out.find("Brier score"), std::string::npos) << cli.out;

  // Bad input: one error line naming file:line, exit 1.
  const std::string bad =
      test::write_file(dir + "/bad.jsonl", test::read_bytes(tasks) +
                                               "{\"prompt\": \"x\", \"choices\": "
                                               "[\" a\", \" b\"], \"answer\": 5}\n");
  cli = tiller({"eval", "--model", model_dir, "--tasks", bad});
  EXPECT_EQ(cli.code, 1);
  ASSERT_EQ(test::lines_of(cli.err).size(), 1u) << cli.err;
  EXPECT_NE(cli.err.find(bad + ":" + std::to_string(items.size() + 1)), std::string::npos)
      << cli.err;
  EXPECT_NE(cli.err.find("\"answer\""), std::string::npos) << cli.err;
  cli = tiller({"eval", "--tasks", tasks});
  EXPECT_EQ(cli.code, 1);
  EXPECT_NE(cli.err.find("--model"), std::string::npos) << cli.err;
}

TEST(EvalEndToEnd, AcrossASweepPrintsRowsByNAndDrawsBothPanels) {
  const std::string dir = test::temp_dir("eval_across");
  const std::string sweep = dir + "/sweep";
  const std::string big = stories260k_dir(sweep + "/points/p01_big/pretrain/final");
  if (big.empty()) GTEST_SKIP() << "skipped: stories260K not found under ../shared/data";
  // A smaller model on the same vocabulary, random weights.
  ModelConfig c = test::llama_config(512, 16, 32, 1, 2, 2, 128);
  Transformer small(c);
  small->init_weights(3);
  SaveOptions options;
  options.tokenizer_path = tokenizer_path_in(big);
  save_hf_model(*small, sweep + "/points/p00_small/pretrain/final", options);
  const Transformer big_model = load_hf_model(big);
  const double n_small = static_cast<double>(c.non_embedding_parameter_count());
  const double n_big = static_cast<double>(big_model->config.non_embedding_parameter_count());
  // The point directories also hold an earlier stage; the row's loss picks the measured one.
  save_hf_model(*small, sweep + "/points/p01_big/base/final", options);
  test::write_file(sweep + "/points/p01_big/base/complete.json", "{\"final_val_loss\": 9.5}\n");
  test::write_file(sweep + "/points/p01_big/pretrain/complete.json",
                   "{\"final_val_loss\": 1.25}\n");
  test::write_file(sweep + "/points/p00_small/pretrain/complete.json",
                   "{\"final_val_loss\": 6.0}\n");
  const std::string runs = test::write_file(
      sweep + "/runs.jsonl",
      nlohmann::json{{"point", "p01_big"}, {"N", n_big}, {"D", 1e6}, {"loss", 1.25}}.dump() + "\n" +
          nlohmann::json{{"point", "p00_small"}, {"N", n_small}, {"D", 1e6}, {"loss", 6.0}}.dump() +
          "\n");
  const std::string tasks = own_greedy_task(big, dir + "/own.jsonl");

  CliRun cli = tiller({"eval", "--across", runs, "--tasks", tasks, "--svg", dir + "/chart.svg",
                       "--max-new-tokens", "6", "--threads", "1"});
  ASSERT_EQ(cli.code, 0) << cli.err;
  const auto lines = test::lines_of(cli.out);
  std::vector<std::string> table;
  for (const auto& line : lines)
    if (line.find("p0") != std::string::npos) table.push_back(line);
  ASSERT_EQ(table.size(), 2u) << cli.out;
  EXPECT_NE(table[0].find("p00_small"), std::string::npos) << cli.out;  // sorted by N
  EXPECT_NE(table[1].find("p01_big"), std::string::npos) << cli.out;
  EXPECT_NE(cli.out.find("exact"), std::string::npos);
  EXPECT_NE(cli.out.find("brier"), std::string::npos);
  const std::string svg = test::read_bytes(dir + "/chart.svg");
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  EXPECT_NE(svg.find("data-panel=\"discontinuous\""), std::string::npos);
  EXPECT_NE(svg.find("data-panel=\"continuous\""), std::string::npos);
  EXPECT_NE(svg.find("data-series=\"exact match\""), std::string::npos);
  EXPECT_NE(svg.find("data-series=\"multiple-choice accuracy\""), std::string::npos);
  EXPECT_NE(svg.find("data-series=\"exp(log-likelihood per token)\""), std::string::npos);
  EXPECT_NE(svg.find("data-series=\"1 - edit distance / target length\""), std::string::npos);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");

  cli = tiller({"eval", "--across", runs, "--tasks", tasks, "--max-new-tokens", "6", "--threads",
                "1", "--json"});
  ASSERT_EQ(cli.code, 0) << cli.err;
  const auto j = nlohmann::json::parse(cli.out);
  ASSERT_EQ(j.at("rows").size(), 2u);
  EXPECT_EQ(j["rows"][0].at("N").get<double>(), n_small);
  EXPECT_EQ(j["rows"][1].at("point"), "p01_big");
  EXPECT_EQ(j["rows"][1].at("exact_match").get<double>(), 1.0);  // its own outputs
  EXPECT_LT(j["rows"][0].at("loglik_per_token").get<double>(),
            j["rows"][1].at("loglik_per_token").get<double>());

  // A row whose point has no model: one error line naming runs.jsonl:line.
  const std::string broken = test::write_file(
      sweep + "/broken.jsonl", test::read_bytes(runs) + "{\"point\": \"p09\", \"N\": 5}\n");
  cli = tiller({"eval", "--across", broken, "--tasks", tasks});
  EXPECT_EQ(cli.code, 1);
  EXPECT_NE(cli.err.find(broken + ":3"), std::string::npos) << cli.err;
  EXPECT_EQ(test::lines_of(cli.err).size(), 1u) << cli.err;
}

TEST(EvalEndToEnd, MakeTaskFromACorpusIsReproducible) {
  TILLER_REQUIRE_SHARED(corpus, "corpus/tinystories_head.txt");
  const std::string dir = test::temp_dir("eval_make_task_cli");
  for (const char* name : {"a", "b"}) {
    CliRun cli =
        tiller({"eval", "make-task", "--from", corpus, "--out", dir + "/" + name + ".jsonl",
                "--count", "25", "--seed", "5", "--target-words", "3"});
    ASSERT_EQ(cli.code, 0) << cli.err;
    EXPECT_NE(cli.out.find("wrote 25 items"), std::string::npos) << cli.out;
  }
  EXPECT_EQ(test::read_bytes(dir + "/a.jsonl"), test::read_bytes(dir + "/b.jsonl"));
  EXPECT_EQ(eval::read_task_file(dir + "/a.jsonl").size(), 25u);
  CliRun cli =
      tiller({"eval", "make-task", "--from", dir + "/none.txt", "--out", dir + "/c.jsonl"});
  EXPECT_EQ(cli.code, 1);
  EXPECT_NE(cli.err.find(dir + "/none.txt"), std::string::npos) << cli.err;
}

}  // namespace
}  // namespace tiller
