// The synthetic world of the emergence suite (`tiller eval make-suite`): one seed writes a
// pretraining corpus and the tasks that probe it, so that a sweep of small models trained on the
// corpus can be measured on in-context learning, step-by-step arithmetic and instruction
// following. Three kinds of document, one a line, each a run of examples joined by " | ":
//   in-context:   "7 @ 3 = 10 | 5 @ 2 = 7 | ..."   one hidden operation per line (+, -, *)
//   arithmetic:   "Q: 3 + 4 * 5 - 6 = ? A: 4 * 5 = 20, 3 + 20 = 23, 23 - 6 = 17 #### 17 | ..."
//                 worked, or "Q: ... A: #### 17" direct, one style per line
//   instructions: "Write 4 words about the sun, using \"warm\". Answer: warm sky hot day | ..."
// A tenth of the arithmetic problems and of the instruction kinds (chosen by a hash of the
// problem and the seed) never appear in the corpus: the test items come from them. The facts
// of the in-context task (7 + 3) do appear: what it tests is reading the operation from the
// examples, not a new fact.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace tiller::eval {

struct EmergenceDataOptions {
  uint64_t seed = 1;
  int64_t corpus_lines = 20000;  // corpus.txt
  int64_t test_items = 120;      // per task
  int64_t pool_items = 120;      // k-shot examples per task (per group for the in-context task)
};

// a + b * c - d over digits, with d <= a + b * c (the answer is never negative).
struct ArithmeticProblem {
  int64_t a = 0, b = 0, c = 0, d = 0;
  int64_t answer() const { return a + b * c - d; }
};

// "Q: 3 + 4 * 5 - 6 = ? A:"
std::string arithmetic_prompt(const ArithmeticProblem& p);
// " 4 * 5 = 20, 3 + 20 = 23, 23 - 6 = 17 #### 17" (worked) or " #### 17" (direct).
std::string arithmetic_target(const ArithmeticProblem& p, bool worked);
// Whether the problem is one of the held-out tenth for this seed.
bool arithmetic_held_out(const ArithmeticProblem& p, uint64_t seed);
// `count` distinct problems drawn with the seed (state), all held out or none.
std::vector<ArithmeticProblem> draw_arithmetic(int64_t count, bool held_out, uint64_t seed,
                                               uint64_t& state);

// The items of one task of the suite, as task-file JSON objects.
struct SuiteFiles {
  std::vector<std::string> corpus;
  std::vector<nlohmann::json> infer_op, infer_op_pool, steps_direct, steps_direct_pool,
      steps_worked, steps_worked_pool, instructions, instructions_pool;
};
SuiteFiles make_emergence_suite(const EmergenceDataOptions& options);

// Writes corpus.txt, the task files and suite.json (which names them, with the shots each is
// evaluated at) into dir. Options out of range are a tiller::Error. Returns suite.json's path.
std::string write_emergence_suite(const std::string& dir, const EmergenceDataOptions& options);

}  // namespace tiller::eval
