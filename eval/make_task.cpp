#include "eval/make_task.h"

#include <cctype>
#include <set>
#include <sstream>

#include "common/data/batching.h"
#include "common/util/error.h"

namespace tiller::eval {
namespace {

std::vector<std::string> words_of(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> words;
  std::string word;
  while (in >> word) words.push_back(word);
  return words;
}

std::string join(const std::vector<std::string>& words, size_t begin, size_t end) {
  std::string out;
  for (size_t i = begin; i < end; ++i) out += (i > begin ? " " : "") + words[i];
  return out;
}

}  // namespace

std::vector<std::string> split_sentences(const std::string& paragraph) {
  std::vector<std::string> sentences;
  std::string current;
  auto flush = [&] {
    const auto words = words_of(current);
    if (!words.empty()) sentences.push_back(join(words, 0, words.size()));
    current.clear();
  };
  for (size_t i = 0; i < paragraph.size(); ++i) {
    const char c = paragraph[i];
    current += c;
    const bool end_mark = c == '.' || c == '!' || c == '?';
    if (end_mark &&
        (i + 1 == paragraph.size() || std::isspace(static_cast<unsigned char>(paragraph[i + 1]))))
      flush();
  }
  flush();
  return sentences;
}

std::vector<int64_t> held_out_documents(const std::vector<std::string>& documents,
                                        const Tokenizer& tok, int64_t max_seq_len,
                                        double val_fraction, uint64_t seed) {
  check(max_seq_len >= 2, "held-out split: max_seq_len must be at least 2");
  check(val_fraction > 0, "held-out split: the stage has no validation fraction");
  std::vector<std::pair<int64_t, int64_t>> spans;  // [begin, end) of each document in the stream
  int64_t length = 0;
  for (const auto& d : documents) {
    const int64_t n = static_cast<int64_t>(tok.encode(d, /*add_bos=*/true).size());
    spans.emplace_back(length, length + n);
    length += n;
  }
  const int64_t chunks = length / max_seq_len;
  check(chunks >= 2, "held-out split: fewer than two chunks of max_seq_len tokens");
  // The stage's own split, applied to stand-ins that carry each chunk's index.
  std::vector<Example> all(chunks), train, validation;
  for (int64_t c = 0; c < chunks; ++c) all[c].tokens = {c};
  split_validation(all, val_fraction, seed, &train, &validation);
  std::vector<bool> trained(chunks, false);
  for (const auto& e : train) trained[e.tokens[0]] = true;
  std::vector<int64_t> out;
  for (size_t d = 0; d < spans.size(); ++d) {
    bool seen = false;
    for (int64_t c = spans[d].first / max_seq_len;
         c <= (spans[d].second - 1) / max_seq_len && c < chunks; ++c)
      seen = seen || trained[c];
    if (!seen) out.push_back(static_cast<int64_t>(d));
  }
  return out;
}

std::vector<nlohmann::json> make_task_items(const std::vector<std::string>& documents,
                                            const MakeTaskOptions& o, std::string* note) {
  check(o.count >= 1, "make-task: --count must be at least 1");
  check(o.target_words >= 1, "make-task: --target-words must be at least 1");
  check(o.choices >= 2, "make-task: --choices must be at least 2");
  struct Sentence {
    std::string prompt, ending;
  };
  std::vector<Sentence> sentences;
  std::vector<std::string> endings;  // distinct, in order of first appearance
  std::set<std::string> seen;
  const size_t k = static_cast<size_t>(o.target_words);
  for (const auto& document : documents) {
    for (const auto& sentence : split_sentences(document)) {
      if (sentence.find('"') != std::string::npos) continue;  // dialogue: quotes split oddly
      const auto words = words_of(sentence);
      if (words.size() < k + static_cast<size_t>(o.min_prompt_words) ||
          static_cast<int64_t>(words.size()) > o.max_sentence_words)
        continue;
      Sentence s{join(words, 0, words.size() - k), join(words, words.size() - k, words.size())};
      if (seen.insert(s.ending).second) endings.push_back(s.ending);
      sentences.push_back(std::move(s));
    }
  }
  check(static_cast<int64_t>(endings.size()) >= o.choices,
        "make-task: only " + std::to_string(endings.size()) + " distinct " +
            std::to_string(o.target_words) + "-word endings among " +
            std::to_string(sentences.size()) + " usable sentences; need at least " +
            std::to_string(o.choices) + " (use more text or fewer --target-words)");
  const int64_t n = static_cast<int64_t>(sentences.size());
  const int64_t count = std::min(o.count, n);
  if (note && count < o.count)
    *note = "only " + std::to_string(n) + " usable sentences: " + std::to_string(count) +
            " items instead of " + std::to_string(o.count);
  const auto order = seeded_permutation(n, o.seed);
  uint64_t state = o.seed ^ 0x5851f42d4c957f2dull;
  std::vector<nlohmann::json> items;
  for (int64_t i = 0; i < count; ++i) {
    const Sentence& s = sentences[order[i]];
    std::vector<std::string> choices;
    std::set<std::string> used = {s.ending};
    while (static_cast<int64_t>(choices.size()) + 1 < o.choices) {
      const std::string& candidate = endings[splitmix64(state) % endings.size()];
      if (used.insert(candidate).second) choices.push_back(" " + candidate);
    }
    const int64_t answer = static_cast<int64_t>(splitmix64(state) % o.choices);
    choices.insert(choices.begin() + answer, " " + s.ending);
    items.push_back({{"prompt", s.prompt},
                     {"target", " " + s.ending},
                     {"choices", choices},
                     {"answer", answer}});
  }
  return items;
}

}  // namespace tiller::eval
