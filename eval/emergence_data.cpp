#include "eval/emergence_data.h"

#include <algorithm>
#include <cctype>
#include <set>

#include "common/data/batching.h"  // splitmix64
#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller::eval {
namespace {

constexpr const char* kSeparator = " | ";

uint64_t next(uint64_t& state) {
  return splitmix64(state);
}
int64_t below(uint64_t& state, int64_t n) {
  return static_cast<int64_t>(next(state) % static_cast<uint64_t>(n));
}

// Whether a key (a problem, an instruction kind) is in the held-out tenth for the seed.
bool held_out_key(const std::string& key, uint64_t seed) {
  uint64_t state = seed * 0x100000001B3ULL;
  for (unsigned char ch : key) state = (state ^ ch) * 0x100000001B3ULL;
  return splitmix64(state) % 10 == 0;
}

std::string join(const std::vector<std::string>& parts, const std::string& separator) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) out += (i > 0 ? separator : "") + parts[i];
  return out;
}

// ---------------------------------------------------------------------------------------------
// In-context: a hidden operation per line, read from the examples.

struct Operation {
  const char* name;
  int64_t (*apply)(int64_t, int64_t);
};
const std::vector<Operation>& operations() {
  static const std::vector<Operation> ops = {{"add", [](int64_t a, int64_t b) { return a + b; }},
                                             {"sub", [](int64_t a, int64_t b) { return a - b; }},
                                             {"mul", [](int64_t a, int64_t b) { return a * b; }}};
  return ops;
}

// One example "a @ b = r" (a >= b, so that the operands do not give the operation away).
nlohmann::json infer_op_item(const Operation& op, uint64_t& state) {
  int64_t a = below(state, 10), b = below(state, 10);
  if (a < b) std::swap(a, b);
  return {{"prompt", std::to_string(a) + " @ " + std::to_string(b) + " ="},
          {"target", " " + std::to_string(op.apply(a, b))},
          {"group", op.name}};
}

std::string infer_op_line(uint64_t& state) {
  const Operation& op = operations()[static_cast<size_t>(below(state, 3))];
  std::vector<std::string> examples;
  for (int64_t i = 0, n = 2 + below(state, 9); i < n; ++i) {
    const auto item = infer_op_item(op, state);
    examples.push_back(item["prompt"].get<std::string>() + item["target"].get<std::string>());
  }
  return join(examples, kSeparator);
}

// ---------------------------------------------------------------------------------------------
// Step by step: a + b * c - d.

ArithmeticProblem draw_problem(uint64_t& state) {
  ArithmeticProblem p;
  p.a = below(state, 10), p.b = below(state, 10), p.c = below(state, 10);
  p.d = below(state, std::min<int64_t>(10, p.a + p.b * p.c + 1));
  return p;
}

nlohmann::json arithmetic_item(const ArithmeticProblem& p, bool worked) {
  return {{"prompt", arithmetic_prompt(p)},
          {"target", arithmetic_target(p, worked)},
          {"answer_after", "####"}};
}

std::string arithmetic_line(uint64_t seed, uint64_t& state) {
  const bool worked = below(state, 2) == 0;
  std::vector<std::string> examples;
  for (int64_t i = 0, n = 1 + below(state, 4); i < n; ++i) {
    ArithmeticProblem p = draw_problem(state);
    while (arithmetic_held_out(p, seed)) p = draw_problem(state);
    examples.push_back(arithmetic_prompt(p) + arithmetic_target(p, worked));
  }
  return join(examples, kSeparator);
}

// ---------------------------------------------------------------------------------------------
// Instructions: "Write N words about TOPIC[, using "W"][, in capitals|lowercase][, ending with
// "E"]. Answer:" and a response that complies.

struct Topic {
  const char* name;
  std::vector<std::string> words;
};
const std::vector<Topic>& topics() {
  static const std::vector<Topic> list = {
      {"the sun", {"hot", "bright", "sky", "warm", "light", "day", "yellow", "shine"}},
      {"a cat", {"soft", "fur", "purr", "milk", "paws", "nap", "tail", "meow"}},
      {"the sea", {"blue", "wave", "fish", "salt", "boat", "sand", "deep", "wet"}},
      {"a tree", {"green", "leaf", "bark", "tall", "root", "wood", "branch", "shade"}},
      {"the rain", {"cloud", "drop", "grey", "puddle", "storm", "cold", "mud", "splash"}},
      {"a bird", {"wing", "nest", "song", "fly", "feather", "egg", "beak", "tweet"}}};
  return list;
}
const std::vector<std::string>& endings() {
  static const std::vector<std::string> list = {"bye", "yes", "now", "done"};
  return list;
}

struct Instruction {
  int64_t topic = 0, words = 3;
  int64_t required = -1;    // index into the topic's words, -1: none
  int64_t letter_case = 0;  // 0 unspecified, 1 lowercase, 2 capitals
  int64_t ending = -1;      // index into endings(), -1: none
  std::string key() const {
    return std::to_string(topic) + "/" + std::to_string(words) + "/" + std::to_string(required) +
           "/" + std::to_string(letter_case) + "/" + std::to_string(ending);
  }
};

Instruction draw_instruction(uint64_t& state) {
  Instruction in;
  in.topic = below(state, static_cast<int64_t>(topics().size()));
  in.words = 3 + below(state, 5);
  in.required = below(state, 2) == 0 ? -1 : below(state, 8);
  in.letter_case = below(state, 3);
  in.ending = below(state, 2) == 0 ? -1 : below(state, static_cast<int64_t>(endings().size()));
  return in;
}

std::string instruction_prompt(const Instruction& in) {
  const Topic& topic = topics()[static_cast<size_t>(in.topic)];
  std::string text = "Write " + std::to_string(in.words) + " words about " + topic.name;
  if (in.required >= 0) text += ", using \"" + topic.words[static_cast<size_t>(in.required)] + "\"";
  if (in.letter_case == 1) text += ", in lowercase";
  if (in.letter_case == 2) text += ", in capitals";
  if (in.ending >= 0) text += ", ending with \"" + endings()[static_cast<size_t>(in.ending)] + "\"";
  return text + ". Answer:";
}

// A compliant response: the topic's words in a seeded order, the required one among them, the
// ending last.
std::string instruction_response(const Instruction& in, uint64_t& state) {
  const Topic& topic = topics()[static_cast<size_t>(in.topic)];
  std::vector<int64_t> order = seeded_permutation(8, next(state));
  if (in.required >= 0) {
    order.erase(std::find(order.begin(), order.end(), in.required));
    order.insert(order.begin() + below(state, in.words - (in.ending >= 0 ? 1 : 0)), in.required);
  }
  std::vector<std::string> words;
  for (int64_t i = 0; i < in.words - (in.ending >= 0 ? 1 : 0); ++i)
    words.push_back(topic.words[static_cast<size_t>(order[static_cast<size_t>(i)])]);
  if (in.ending >= 0) words.push_back(endings()[static_cast<size_t>(in.ending)]);
  std::string text = " " + join(words, " ");
  if (in.letter_case == 2)
    for (char& ch : text) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  return text;
}

nlohmann::json instruction_item(const Instruction& in, uint64_t& state) {
  nlohmann::json constraints = nlohmann::json::array(
      {{{"type", "word_count"}, {"min_words", in.words}, {"max_words", in.words}}});
  const Topic& topic = topics()[static_cast<size_t>(in.topic)];
  if (in.required >= 0)
    constraints.push_back(
        {{"type", "required_words"},
         {"words", nlohmann::json::array({topic.words[static_cast<size_t>(in.required)]})}});
  if (in.letter_case == 1) constraints.push_back({{"type", "lowercase"}});
  if (in.letter_case == 2) constraints.push_back({{"type", "uppercase"}});
  if (in.ending >= 0) {
    std::string ending = endings()[static_cast<size_t>(in.ending)];
    if (in.letter_case == 2)
      for (char& ch : ending) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    constraints.push_back({{"type", "ends_with"}, {"phrase", ending}});
  }
  const std::string response = instruction_response(in, state);
  // Room for the response and a few tokens more; the output ends at the example separator.
  return {{"prompt", instruction_prompt(in)},
          {"target", response},
          {"constraints", constraints},
          {"until", nlohmann::json::array({"|"})},
          {"max_new_tokens", 4 * in.words + 8}};
}

std::string instruction_line(uint64_t seed, uint64_t& state) {
  std::vector<std::string> examples;
  for (int64_t i = 0, n = 1 + below(state, 4); i < n; ++i) {
    Instruction in = draw_instruction(state);
    while (held_out_key(in.key(), seed)) in = draw_instruction(state);
    examples.push_back(instruction_prompt(in) + instruction_response(in, state));
  }
  return join(examples, kSeparator);
}

// `count` distinct instruction items, all held out or none.
std::vector<nlohmann::json> draw_instruction_items(int64_t count, bool held_out, uint64_t seed,
                                                   uint64_t& state) {
  std::set<std::string> seen;
  std::vector<nlohmann::json> items;
  for (int64_t tries = 0; static_cast<int64_t>(items.size()) < count; ++tries) {
    check(tries < 1000000,
          "make-suite: cannot draw " + std::to_string(count) + " distinct instruction items");
    const Instruction in = draw_instruction(state);
    if (held_out_key(in.key(), seed) != held_out || !seen.insert(in.key()).second) continue;
    items.push_back(instruction_item(in, state));
  }
  return items;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

std::string arithmetic_prompt(const ArithmeticProblem& p) {
  return "Q: " + std::to_string(p.a) + " + " + std::to_string(p.b) + " * " + std::to_string(p.c) +
         " - " + std::to_string(p.d) + " = ? A:";
}

std::string arithmetic_target(const ArithmeticProblem& p, bool worked) {
  const std::string answer = " #### " + std::to_string(p.answer());
  if (!worked) return answer;
  const int64_t product = p.b * p.c, sum = p.a + product;
  return " " + std::to_string(p.b) + " * " + std::to_string(p.c) + " = " + std::to_string(product) +
         ", " + std::to_string(p.a) + " + " + std::to_string(product) + " = " +
         std::to_string(sum) + ", " + std::to_string(sum) + " - " + std::to_string(p.d) + " = " +
         std::to_string(p.answer()) + answer;
}

bool arithmetic_held_out(const ArithmeticProblem& p, uint64_t seed) {
  return held_out_key(std::to_string(p.a) + "+" + std::to_string(p.b) + "*" + std::to_string(p.c) +
                          "-" + std::to_string(p.d),
                      seed);
}

std::vector<ArithmeticProblem> draw_arithmetic(int64_t count, bool held_out, uint64_t seed,
                                               uint64_t& state) {
  std::set<std::string> seen;
  std::vector<ArithmeticProblem> problems;
  for (int64_t tries = 0; static_cast<int64_t>(problems.size()) < count; ++tries) {
    check(tries < 1000000,
          "make-suite: cannot draw " + std::to_string(count) + " distinct arithmetic problems");
    const ArithmeticProblem p = draw_problem(state);
    if (arithmetic_held_out(p, seed) != held_out || !seen.insert(arithmetic_prompt(p)).second)
      continue;
    problems.push_back(p);
  }
  return problems;
}

SuiteFiles make_emergence_suite(const EmergenceDataOptions& o) {
  check(o.corpus_lines >= 1 && o.test_items >= 1 && o.pool_items >= 9,
        "make-suite: --corpus-lines and --items must be >= 1 and --pool-items >= 9 (8 shots "
        "and the item itself)");
  check(o.test_items <= 500 && o.pool_items <= 500,
        "make-suite: --items and --pool-items are at most 500 (the held-out problems are few)");
  SuiteFiles f;
  uint64_t state = o.seed;
  for (int64_t i = 0; i < o.corpus_lines; ++i) {
    const int64_t kind = below(state, 10);  // 4 in-context, 4 arithmetic, 2 instructions
    f.corpus.push_back(kind < 4   ? infer_op_line(state)
                       : kind < 8 ? arithmetic_line(o.seed, state)
                                  : instruction_line(o.seed, state));
  }
  for (int64_t i = 0; i < o.test_items; ++i)
    f.infer_op.push_back(infer_op_item(operations()[static_cast<size_t>(i % 3)], state));
  for (const auto& op : operations())
    for (int64_t i = 0; i < o.pool_items; ++i) f.infer_op_pool.push_back(infer_op_item(op, state));
  for (const auto& p : draw_arithmetic(o.test_items, /*held_out=*/true, o.seed, state)) {
    f.steps_direct.push_back(arithmetic_item(p, false));
    f.steps_worked.push_back(arithmetic_item(p, true));
  }
  for (const auto& p : draw_arithmetic(o.pool_items, /*held_out=*/false, o.seed, state)) {
    f.steps_direct_pool.push_back(arithmetic_item(p, false));
    f.steps_worked_pool.push_back(arithmetic_item(p, true));
  }
  f.instructions = draw_instruction_items(o.test_items, /*held_out=*/true, o.seed, state);
  f.instructions_pool = draw_instruction_items(o.pool_items, /*held_out=*/false, o.seed, state);
  return f;
}

std::string write_emergence_suite(const std::string& dir, const EmergenceDataOptions& options) {
  const SuiteFiles f = make_emergence_suite(options);
  make_directories(dir);
  auto write_items = [&dir](const std::string& name, const std::vector<nlohmann::json>& items) {
    std::string text;
    for (const auto& item : items) text += item.dump() + "\n";
    write_file_atomic(dir + "/" + name, text);
  };
  write_file_atomic(dir + "/corpus.txt", join(f.corpus, "\n") + "\n");
  write_items("infer_op.jsonl", f.infer_op);
  write_items("infer_op_pool.jsonl", f.infer_op_pool);
  write_items("steps_direct.jsonl", f.steps_direct);
  write_items("steps_direct_pool.jsonl", f.steps_direct_pool);
  write_items("steps_worked.jsonl", f.steps_worked);
  write_items("steps_worked_pool.jsonl", f.steps_worked_pool);
  write_items("instructions.jsonl", f.instructions);
  write_items("instructions_pool.jsonl", f.instructions_pool);
  auto task = [](const std::string& name, const std::string& figure,
                 std::vector<int64_t> shots) -> nlohmann::json {
    return {{"name", name},
            {"figure", figure},
            {"items", name + ".jsonl"},
            {"pool", name + "_pool.jsonl"},
            {"shots", shots},
            {"seed", 1},
            {"separator", kSeparator}};
  };
  // A corpus line of arithmetic or instructions holds 1 to 4 examples, but the models of
  // recipes/emergence_sweep.json train on 192-token windows: with k = 3 a worked prompt and its
  // answer are 212 tokens and an instruction prompt alone 221, past the positions they trained,
  // so those tasks run at k = 0..2 (infer_op lines hold up to 10 short examples).
  const std::vector<int64_t> up_to_two = {0, 1, 2};
  const nlohmann::json suite = {{"tasks",
                                 {task("infer_op", "in_context", {0, 1, 2, 3, 4, 5, 6, 7, 8}),
                                  task("steps_direct", "step_by_step", up_to_two),
                                  task("steps_worked", "step_by_step", up_to_two),
                                  task("instructions", "instructions", up_to_two)}},
                                {"made_by",
                                 {{"seed", options.seed},
                                  {"corpus_lines", options.corpus_lines},
                                  {"test_items", options.test_items},
                                  {"pool_items", options.pool_items}}}};
  write_file_atomic(dir + "/suite.json", suite.dump(2) + "\n");
  return dir + "/suite.json";
}

}  // namespace tiller::eval
