#include "common/data/synthetic.h"

#include <nlohmann/json.hpp>

#include <utility>
#include <vector>

#include "common/data/batching.h"  // splitmix64
#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

namespace {

// Picks and coins from splitmix64: the same stories on every platform.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() { return splitmix64(state_); }
  const std::string& pick(const std::vector<std::string>& options) {
    return options[next() % options.size()];
  }
  bool coin() { return next() & 1; }

 private:
  uint64_t state_;
};

const std::vector<std::string> kNames = {"Tom", "Lily", "Sam", "Mia", "Ben", "Anna", "Max", "Zoe"};
const std::vector<std::string> kAnimals = {"cat",  "dog",  "bird",  "fish",
                                           "frog", "duck", "bunny", "bear"};
const std::vector<std::string> kObjects = {"ball", "kite", "box",  "apple",
                                           "hat",  "book", "drum", "boat"};
const std::vector<std::string> kPlaces = {"park",   "garden", "house", "lake",
                                          "forest", "beach",  "farm",  "school"};
const std::vector<std::string> kColors = {"red", "blue", "green", "yellow", "big", "little"};

struct Story {
  std::string prompt;      // the instruction that asks for it
  std::string middle;      // the first two sentences
  std::string happy, sad;  // the two possible endings
};

Story make_story(Rng& rng) {
  const std::string name = rng.pick(kNames), animal = rng.pick(kAnimals),
                    object = rng.pick(kObjects), place = rng.pick(kPlaces),
                    color = rng.pick(kColors), color2 = rng.pick(kColors);
  Story s;
  switch (rng.next() % 3) {
    case 0:
      s.prompt = "Tell me a story about " + name + " and a " + animal + ".";
      break;
    case 1:
      s.prompt = "Write a short story about a " + animal + " in the " + place + ".";
      break;
    default:
      s.prompt = "Tell a story about " + name + " at the " + place + ".";
      break;
  }
  s.middle = name + " went to the " + place + " and saw a " + color + " " + animal + ".";
  switch (rng.next() % 3) {
    case 0:
      s.middle += " The " + animal + " had a " + color2 + " " + object + ".";
      break;
    case 1:
      s.middle += " " + name + " gave the " + animal + " a " + color2 + " " + object + ".";
      break;
    default:
      s.middle += " The " + animal + " wanted to play with the " + object + ".";
      break;
  }
  switch (rng.next() % 3) {
    case 0:
      s.happy = name + " and the " + animal + " played all day and " + name + " was happy.";
      break;
    case 1:
      s.happy = "The " + animal + " smiled and " + name + " smiled too.";
      break;
    default:
      s.happy = "They shared the " + object + " and everyone was happy.";
      break;
  }
  switch (rng.next() % 3) {
    case 0:
      s.sad = "The " + animal + " ran away and " + name + " was sad.";
      break;
    case 1:
      s.sad = "The " + object + " broke and " + name + " cried.";
      break;
    default:
      s.sad = "It began to rain and " + name + " went home alone.";
      break;
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Arithmetic

struct Problem {
  int64_t a = 0, b = 0;
  char op = '+';
};

int64_t result_of(const Problem& p) {
  return p.op == '+' ? p.a + p.b : p.op == '-' ? p.a - p.b : p.a * p.b;
}

std::string expression_of(const Problem& p) {
  return std::to_string(p.a) + " " + p.op + " " + std::to_string(p.b);
}

std::string question_of(const Problem& p) {
  return "What is " + expression_of(p) + "?";
}

// "23 + 45 = 68. #### 68": the sum written out, then the answer after the marker.
std::string worked_answer_of(const Problem& p) {
  const std::string result = std::to_string(result_of(p));
  return expression_of(p) + " = " + result + ". " + synthetic_answer_marker() + " " + result;
}

// Every problem the options allow: + over [0, max_operand]^2, - with a >= b (no negative
// results), * over [0, max_factor]^2.
std::vector<Problem> all_problems(const SyntheticArithmeticOptions& o) {
  std::vector<Problem> problems;
  for (const char op : o.operations) {
    const int64_t top = op == '*' ? o.max_factor : o.max_operand;
    for (int64_t a = 0; a <= top; ++a)
      for (int64_t b = 0; b <= (op == '-' ? a : top); ++b) problems.push_back({a, b, op});
  }
  return problems;
}

// A tenth of the problems, fixed by the problem and the seed, never seen in training.
bool is_held_out(const Problem& p, uint64_t seed) {
  uint64_t state = seed ^ (static_cast<uint64_t>(p.a) * 1000003u +
                           static_cast<uint64_t>(p.b) * 1009u + static_cast<uint64_t>(p.op));
  return splitmix64(state) % 10 == 0;
}

void check_arithmetic_options(const SyntheticArithmeticOptions& o) {
  check(o.corpus_problems >= 1 && o.sft_examples >= 1 && o.prompts >= 1,
        "synthetic data: every arithmetic count must be at least 1");
  check(o.max_operand >= 1 && o.max_operand <= 999 && o.max_factor >= 1 && o.max_factor <= 999,
        "synthetic data: arithmetic max_operand and max_factor must be in [1, 999]");
  check(!o.operations.empty() && o.operations.find_first_not_of("+-*") == std::string::npos,
        "synthetic data: arithmetic operations must be some of \"+-*\", got \"" + o.operations +
            "\"");
}

// The contents of arithmetic_corpus.txt, arithmetic_sft.jsonl and arithmetic_prompts.jsonl, by
// file name.
std::vector<std::pair<std::string, std::string>> arithmetic_files(
    uint64_t seed, const SyntheticArithmeticOptions& o) {
  check_arithmetic_options(o);
  const std::vector<Problem> problems = all_problems(o);
  // With 100 or more, both sides of the split are all but certainly non-empty (checked below).
  check(problems.size() >= 100,
        "synthetic data: too few arithmetic problems to hold a tenth out (" +
            std::to_string(problems.size()) +
            ", at least 100 needed): raise max_operand or max_factor");
  std::vector<Problem> seen, held_out;
  for (const Problem& p : problems) (is_held_out(p, seed) ? held_out : seen).push_back(p);
  check(!seen.empty() && !held_out.empty(),
        "synthetic data: with this seed no arithmetic problem is held out; choose another seed");
  // Separate streams, as for the stories.
  Rng corpus_rng(seed * 256 + 160), sft_rng(seed * 256 + 161), prompt_rng(seed * 256 + 162);
  auto draw = [](Rng& rng, const std::vector<Problem>& from) {
    return from[rng.next() % from.size()];
  };
  std::string corpus, sft, prompts;
  for (int64_t i = 0; i < o.corpus_problems; ++i) {
    const Problem p = draw(corpus_rng, seen);
    corpus += question_of(p) + " " + worked_answer_of(p) + "\n";
  }
  for (int64_t i = 0; i < o.sft_examples; ++i) {
    const Problem p = draw(sft_rng, seen);
    sft += nlohmann::json{{"prompt", question_of(p)}, {"completion", worked_answer_of(p)}}.dump() +
           "\n";
  }
  for (int64_t i = 0; i < o.prompts; ++i) {
    const Problem p = draw(prompt_rng, held_out);
    prompts += nlohmann::json{{"prompt", question_of(p)}, {"answer", std::to_string(result_of(p))}}
                   .dump() +
               "\n";
  }
  return {{"arithmetic_corpus.txt", corpus},
          {"arithmetic_sft.jsonl", sft},
          {"arithmetic_prompts.jsonl", prompts}};
}

nlohmann::json manifest_of(const SyntheticDataOptions& o) {
  nlohmann::json manifest = {
      {"generator", "tiller synthetic stories v2"},
      {"seed", o.seed},
      {"corpus_stories", o.corpus_stories},
      {"sft_examples", o.sft_examples},
      {"preference_pairs", o.preference_pairs},
      {"prompts", o.prompts},
      {"ground_truth", {{"rule", "regex"}, {"pattern", synthetic_happy_ending_pattern()}}}};
  const SyntheticArithmeticOptions& a = o.arithmetic;
  // Absent when off, so that a story-only directory written before arithmetic existed stays valid.
  if (a.enabled)
    manifest["arithmetic"] = {{"generator", "tiller synthetic arithmetic v1"},
                              {"corpus_problems", a.corpus_problems},
                              {"sft_examples", a.sft_examples},
                              {"prompts", a.prompts},
                              {"max_operand", a.max_operand},
                              {"max_factor", a.max_factor},
                              {"operations", a.operations},
                              {"held_out", "a tenth of all problems, by hash with the seed"}};
  return manifest;
}

}  // namespace

const char* synthetic_happy_ending_pattern() {
  return "\\b(happy|smiled)\\b";
}

const char* synthetic_answer_marker() {
  return "####";
}

bool write_synthetic_dataset(const SyntheticDataOptions& o) {
  check(!o.dir.empty(), "synthetic data: no directory given");
  check(o.corpus_stories >= 1 && o.sft_examples >= 1 && o.preference_pairs >= 1 && o.prompts >= 2,
        "synthetic data: every count must be at least 1 (prompts at least 2)");
  const std::string manifest_path = o.dir + "/manifest.json";
  const nlohmann::json manifest = manifest_of(o);
  if (path_exists(manifest_path)) {
    try {
      if (read_json_file(manifest_path) == manifest) return false;
    } catch (const Error&) {
      // unreadable: written again below
    }
  }
  // Made before anything is written: options the arithmetic cannot meet leave the directory alone.
  std::vector<std::pair<std::string, std::string>> files;
  if (o.arithmetic.enabled) files = arithmetic_files(o.seed, o.arithmetic);
  make_directories(o.dir);
  // Separate streams, so that changing one count leaves the other files as they were.
  Rng corpus_rng(o.seed * 4 + 0), sft_rng(o.seed * 4 + 1), pair_rng(o.seed * 4 + 2),
      prompt_rng(o.seed * 4 + 3);
  std::string corpus, sft, pairs, prompts;
  for (int64_t i = 0; i < o.corpus_stories; ++i) {
    const Story s = make_story(corpus_rng);
    // Half the stories follow their instruction, so the tokenizer and the base know its words.
    if (corpus_rng.coin()) corpus += s.prompt + " ";
    corpus += s.middle + " " + (corpus_rng.coin() ? s.happy : s.sad) + "\n";
  }
  for (int64_t i = 0; i < o.sft_examples; ++i) {
    const Story s = make_story(sft_rng);
    const std::string completion = s.middle + " " + (sft_rng.coin() ? s.happy : s.sad);
    sft += nlohmann::json{{"prompt", s.prompt}, {"completion", completion}}.dump() + "\n";
  }
  for (int64_t i = 0; i < o.preference_pairs; ++i) {
    const Story s = make_story(pair_rng);
    pairs += nlohmann::json{{"prompt", s.prompt},
                            {"chosen", s.middle + " " + s.happy},
                            {"rejected", s.middle + " " + s.sad}}
                 .dump() +
             "\n";
  }
  for (int64_t i = 0; i < o.prompts; ++i)
    prompts += nlohmann::json{{"prompt", make_story(prompt_rng).prompt}}.dump() + "\n";
  write_file_atomic(o.dir + "/corpus.txt", corpus);
  write_file_atomic(o.dir + "/sft.jsonl", sft);
  write_file_atomic(o.dir + "/preferences.jsonl", pairs);
  write_file_atomic(o.dir + "/prompts.jsonl", prompts);
  for (const auto& [name, contents] : files) write_file_atomic(o.dir + "/" + name, contents);
  write_file_atomic(manifest_path, manifest.dump(2) + "\n");  // last: marks the set complete
  return true;
}

}  // namespace tiller
