#include "common/data/synthetic.h"

#include <nlohmann/json.hpp>

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

nlohmann::json manifest_of(const SyntheticDataOptions& o) {
  return {{"generator", "tiller synthetic stories v2"},
          {"seed", o.seed},
          {"corpus_stories", o.corpus_stories},
          {"sft_examples", o.sft_examples},
          {"preference_pairs", o.preference_pairs},
          {"prompts", o.prompts},
          {"ground_truth", {{"rule", "regex"}, {"pattern", synthetic_happy_ending_pattern()}}}};
}

}  // namespace

const char* synthetic_happy_ending_pattern() {
  return "\\b(happy|smiled)\\b";
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
  write_file_atomic(manifest_path, manifest.dump(2) + "\n");  // last: marks the set complete
  return true;
}

}  // namespace tiller
