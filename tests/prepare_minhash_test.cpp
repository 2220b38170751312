// MinHash signatures and the LSH index (prepare/minhash.h): the estimate follows the true shingle
// Jaccard, planted near-duplicates are found in a corpus of distinct documents, decisions do not
// depend on thread timing, and the section reader reports its mistakes with paths.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/util/error.h"
#include "prepare/minhash.h"

namespace tiller {
namespace {

using Words = std::vector<std::string>;

// The documented word rule, written again: ASCII whitespace and punctuation separate words; ASCII
// letters are lower-cased.
Words words_of(const std::string& text) {
  Words words;
  std::string word;
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 128 && (std::isspace(c) || std::ispunct(c))) {
      if (!word.empty()) words.push_back(word);
      word.clear();
    } else {
      word.push_back(static_cast<char>(c < 128 ? std::tolower(c) : c));
    }
  }
  if (!word.empty()) words.push_back(word);
  return words;
}

std::set<std::string> shingles(const Words& words, size_t n) {
  std::set<std::string> out;
  const size_t count = words.size() < n ? 1 : words.size() - n + 1;
  for (size_t s = 0; s < count; ++s) {
    std::string shingle;
    for (size_t i = s; i < std::min(s + n, words.size()); ++i)
      shingle += (i == s ? "" : " ") + words[i];
    out.insert(shingle);
  }
  return out;
}

double true_jaccard(const std::string& a, const std::string& b, size_t n = 5) {
  const auto sa = shingles(words_of(a), n), sb = shingles(words_of(b), n);
  size_t common = 0;
  for (const auto& s : sa) common += sb.count(s);
  return static_cast<double>(common) / static_cast<double>(sa.size() + sb.size() - common);
}

std::string join(const Words& words) {
  std::string text;
  for (const auto& w : words) text += (text.empty() ? "" : " ") + w;
  return text;
}

// Documents of words drawn from a Zipfian (s = 1) vocabulary of 5,000 made-up words, as natural
// text's word frequencies are: frequent words recur across documents, so that documents are not
// trivially distinct.
class Corpus {
 public:
  explicit Corpus(uint64_t seed) : rng_(seed) {
    std::uniform_int_distribution<int> length(2, 9), letter('a', 'z');
    std::set<std::string> seen;
    double total = 0;
    while (vocabulary_.size() < 5000) {
      std::string w;
      for (int i = length(rng_); i > 0; --i) w.push_back(static_cast<char>(letter(rng_)));
      if (!seen.insert(w).second) continue;
      vocabulary_.push_back(w);
      total += 1.0 / static_cast<double>(vocabulary_.size());
      cdf_.push_back(total);
    }
    for (double& c : cdf_) c /= total;
  }

  std::string word() {
    const double u = std::uniform_real_distribution<double>(0, 1)(rng_);
    const auto i = std::lower_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin();
    return vocabulary_[static_cast<size_t>(std::min<ptrdiff_t>(i, 4999))];
  }

  Words document(int min_words, int max_words) {
    Words words(
        static_cast<size_t>(std::uniform_int_distribution<int>(min_words, max_words)(rng_)));
    for (auto& w : words) w = word();
    return words;
  }

  // `edits` random edits, each a substitution, insertion or deletion of one word.
  Words edited(Words words, int edits) {
    for (int e = 0; e < edits; ++e) {
      const auto at = std::uniform_int_distribution<size_t>(0, words.size() - 1)(rng_);
      switch (std::uniform_int_distribution<int>(0, 2)(rng_)) {
        case 0:
          words[at] = word();
          break;
        case 1:
          words.insert(words.begin() + static_cast<ptrdiff_t>(at), word());
          break;
        default:
          words.erase(words.begin() + static_cast<ptrdiff_t>(at));
          break;
      }
    }
    return words;
  }

  std::mt19937_64& rng() { return rng_; }

 private:
  std::mt19937_64 rng_;
  std::vector<std::string> vocabulary_;
  std::vector<double> cdf_;
};

TEST(PrepareMinHash, TheEstimateFollowsTheTrueShingleJaccard) {
  const MinHashOptions options;  // 128 permutations
  const double k = static_cast<double>(options.permutations);
  Corpus corpus(7);
  double worst_in_sd = 0, sum_error = 0;
  int pairs = 0;
  for (const double fraction : {0.0, 0.01, 0.03, 0.06, 0.1, 0.2, 0.35, 0.6}) {
    for (int trial = 0; trial < 6; ++trial) {
      const Words original = corpus.document(150, 300);
      const int edits =
          static_cast<int>(std::lround(fraction * static_cast<double>(original.size())));
      const std::string a = join(original), b = join(corpus.edited(original, edits));
      const double truth = true_jaccard(a, b);
      const double estimate =
          estimated_jaccard(minhash_signature(a, options), minhash_signature(b, options));
      // The estimate is a mean of k Bernoulli(J) agreements: standard error sqrt(J(1-J)/k). Four
      // of them, plus one agreement's worth for rounding, fails by chance about once in 16,000.
      const double sd = std::sqrt(truth * (1 - truth) / k);
      EXPECT_NEAR(estimate, truth, 4 * sd + 1 / k)
          << "edited " << edits << " of " << original.size() << " words";
      if (sd > 0) worst_in_sd = std::max(worst_in_sd, std::abs(estimate - truth) / sd);
      sum_error += estimate - truth;
      ++pairs;
    }
  }
  // An unbiased estimator: the mean error over 48 pairs is far below one pair's standard error.
  const double mean_error = sum_error / pairs;
  std::printf("[minhash] %d pairs: mean error %+.4f, worst %.2f standard errors\n", pairs,
              mean_error, worst_in_sd);
  EXPECT_LT(std::abs(mean_error), 0.02);
}

TEST(PrepareMinHash, PlantedNearDuplicatesAreFoundAndDistinctDocumentsKept) {
  // Defaults: 5-word shingles, 128 permutations in 32 bands of 4 rows, threshold 0.8.
  const MinHashOptions options;
  Corpus corpus(2024);
  struct Document {
    std::string text;
    int family;      // the original it was made from
    int kind;        // 0 original, 1 near-duplicate, 2 exact copy
    double jaccard;  // true shingle Jaccard to its original
    double time;     // order in the corpus
  };
  std::vector<Document> documents;
  std::uniform_real_distribution<double> uniform(0, 1);
  // Distinct documents of 100-300 words; a tenth open with one of five 12-word boilerplate lines
  // (as web pages share headers), which distinct documents must survive.
  std::vector<Words> boilerplate;
  for (int i = 0; i < 5; ++i) boilerplate.push_back(corpus.document(12, 12));
  std::vector<Words> originals;
  for (int i = 0; i < 2000; ++i) {
    Words words = corpus.document(100, 300);
    if (i % 10 == 0) {
      const Words& head = boilerplate[static_cast<size_t>(i / 10 % 5)];
      words.insert(words.begin(), head.begin(), head.end());
    }
    originals.push_back(words);
    documents.push_back({join(words), i, 0, 1.0, static_cast<double>(i)});
  }
  // Near-duplicates: 1% of the words edited (at least one edit). One edit changes at most 5 of
  // the ~200 shingles, so the true Jaccard is about (S - 5e) / (S + 5e) ~ 0.9 > 0.8.
  // Each copy appears at a random place after its original.
  for (int i = 0; i < 300; ++i) {
    const int family = static_cast<int>(corpus.rng()() % 2000);
    const Words& original = originals[static_cast<size_t>(family)];
    const double time = family + 1 + uniform(corpus.rng()) * (2000 - family);
    if (i < 200) {
      const int edits = std::max(1, static_cast<int>(std::lround(0.01 * original.size())));
      const std::string text = join(corpus.edited(original, edits));
      documents.push_back({text, family, 1, true_jaccard(join(original), text), time});
    } else {
      documents.push_back({join(original), family, 2, 1.0, time});
    }
  }
  std::stable_sort(documents.begin(), documents.end(),
                   [](const Document& a, const Document& b) { return a.time < b.time; });

  double min_jaccard = 1, sum_jaccard = 0;
  for (const auto& d : documents)
    if (d.kind == 1) {
      min_jaccard = std::min(min_jaccard, d.jaccard);
      sum_jaccard += d.jaccard;
    }
  ASSERT_GT(min_jaccard, options.threshold + 0.03) << "the planted near-duplicates are too far";

  NearDuplicateIndex index(options);
  int found[3] = {0, 0, 0}, total[3] = {0, 0, 0}, wrong_family = 0;
  for (size_t id = 0; id < documents.size(); ++id) {
    const Document& d = documents[id];
    const int64_t match =
        index.find_or_insert(minhash_signature(d.text, options), static_cast<int64_t>(id));
    ++total[d.kind];
    if (match < 0) continue;
    ++found[d.kind];
    if (d.kind != 0 && documents[static_cast<size_t>(match)].family != d.family) ++wrong_family;
  }
  const double recall = static_cast<double>(found[1]) / total[1];
  const double false_positives = static_cast<double>(found[0]) / total[0];
  std::printf(
      "[minhash] planted near-duplicates: true Jaccard min %.3f mean %.3f; LSH threshold %.3f, "
      "threshold %.2f\n"
      "[minhash] recall %.4f (%d/%d), false positives %.4f (%d/%d), exact copies %d/%d; index "
      "%lld bytes for %lld documents, %lld bytes per document at most\n",
      min_jaccard, sum_jaccard / total[1], lsh_threshold(options.bands, options.rows),
      options.threshold, recall, found[1], total[1], false_positives, found[0], total[0], found[2],
      total[2], static_cast<long long>(index.memory_bytes()),
      static_cast<long long>(index.documents()),
      static_cast<long long>(index.bytes_per_document()));
  EXPECT_GE(recall, 0.95);
  EXPECT_LT(false_positives, 0.01);
  EXPECT_EQ(found[2], total[2]) << "every exact copy is a duplicate";
  EXPECT_EQ(wrong_family, 0) << "a copy was matched to a document it was not made from";
  EXPECT_EQ(index.documents(), total[0] + total[1] + total[2] - found[0] - found[1] - found[2]);
}

TEST(PrepareMinHash, AHalfEditedDocumentIsNotADuplicate) {
  const MinHashOptions options;
  Corpus corpus(11);
  for (int trial = 0; trial < 20; ++trial) {
    const Words original = corpus.document(200, 200);
    const Words half = corpus.edited(original, 100);
    const double truth = true_jaccard(join(original), join(half));
    ASSERT_LT(truth, 0.3);
    NearDuplicateIndex index(options);
    EXPECT_EQ(index.find_or_insert(minhash_signature(join(original), options), 0), -1);
    EXPECT_EQ(index.find_or_insert(minhash_signature(join(half), options), 1), -1)
        << "true Jaccard " << truth;
    // The original itself still is one.
    EXPECT_EQ(index.find_or_insert(minhash_signature(join(original), options), 2), 0);
  }
}

TEST(PrepareMinHash, WordsIgnoreCaseAndPunctuation) {
  const MinHashOptions options;
  const std::string text = "Hello, World! This is--a TEST of the (word) rule; it's fine.";
  EXPECT_EQ(minhash_signature(text, options),
            minhash_signature("hello world this is a test of the word rule it s fine", options));
  EXPECT_EQ(minhash_signature("  hello\tworld\n", options),
            minhash_signature("hello world", options));
  // UTF-8 bytes are part of words: "café" is not "caf".
  EXPECT_NE(minhash_signature("un café au lait noir ici", options),
            minhash_signature("un caf au lait noir ici", options));
  // Fewer words than a shingle: one shingle of all the words, so word order and each word count.
  EXPECT_EQ(minhash_signature("Two words", options), minhash_signature("two, words", options));
  EXPECT_NE(minhash_signature("two words", options), minhash_signature("words two", options));
  EXPECT_EQ(estimated_jaccard(minhash_signature("two words", options),
                              minhash_signature("two other", options)),
            0.0);
  EXPECT_EQ(minhash_signature("", options), minhash_signature(" ,.; ", options));
  EXPECT_EQ(minhash_signature("", options).size(), 128u);
}

TEST(PrepareMinHash, SignaturesAndDecisionsDoNotDependOnThreads) {
  MinHashOptions options;
  Corpus corpus(3);
  std::vector<std::string> texts;
  for (int i = 0; i < 400; ++i) {
    const Words words = corpus.document(150, 300);
    texts.push_back(join(words));
    if (i % 4 == 0) texts.push_back(join(corpus.edited(words, 1)));
  }
  std::vector<Signature> serial;
  for (const auto& t : texts) serial.push_back(minhash_signature(t, options));
  EXPECT_EQ(minhash_signature(texts[0], options), serial[0]);

  // Two workers, one forwards over the even documents, one backwards over the odd ones, each
  // first warming its per-thread state with another seed's functions.
  std::vector<Signature> threaded(texts.size());
  auto work = [&](size_t parity, bool backwards) {
    MinHashOptions other = options;
    other.seed = 99;
    minhash_signature(texts[1], other);
    for (size_t j = 0; j < texts.size(); ++j) {
      const size_t i = backwards ? texts.size() - 1 - j : j;
      if (i % 2 == parity) threaded[i] = minhash_signature(texts[i], options);
    }
  };
  std::thread even(work, 0, false), odd(work, 1, true);
  even.join();
  odd.join();
  EXPECT_EQ(threaded, serial);

  NearDuplicateIndex first(options), second(options);
  int duplicates = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const int64_t a = first.find_or_insert(serial[i], static_cast<int64_t>(i));
    EXPECT_EQ(a, second.find_or_insert(threaded[i], static_cast<int64_t>(i)));
    duplicates += a >= 0;
  }
  EXPECT_GE(duplicates, 90);  // the 100 one-word edits, nearly all

  MinHashOptions reseeded = options;
  reseeded.seed = 2;
  EXPECT_NE(minhash_signature(texts[0], reseeded), serial[0]);
}

TEST(PrepareMinHash, MemoryStaysWithinTheForecast) {
  const MinHashOptions options;
  NearDuplicateIndex index(options);
  const int64_t empty = index.memory_bytes();
  std::mt19937_64 rng(5);
  const int64_t n = 50000;
  // One chunk (4,096 documents' ids and fingerprints) is allocated at once.
  const int64_t chunk = 4096 * (options.permutations + 8);
  Signature signature(128);
  for (int64_t i = 0; i < n; ++i) {
    for (auto& v : signature) v = static_cast<uint32_t>(rng());
    ASSERT_EQ(index.find_or_insert(signature, i), -1);
    ASSERT_LE(index.memory_bytes(), empty + chunk + (i + 1) * index.bytes_per_document())
        << "after " << i + 1 << " documents";
  }
  EXPECT_EQ(index.documents(), n);
  std::printf("[minhash] %lld random documents: %lld bytes (%.1f per document; forecast %lld)\n",
              static_cast<long long>(n), static_cast<long long>(index.memory_bytes()),
              static_cast<double>(index.memory_bytes() - empty) / static_cast<double>(n),
              static_cast<long long>(index.bytes_per_document()));
}

TEST(PrepareMinHash, TheSectionReaderStatesAndChecksItsKeys) {
  {
    ConfigErrors errors;
    const MinHashOptions o = read_minhash_section(true, "prepare.near_dedup", errors);
    EXPECT_TRUE(errors.empty());
    EXPECT_EQ(minhash_values(o), minhash_values(MinHashOptions{}));
    read_minhash_section(nlohmann::json::object(), "prepare.near_dedup", errors);
    EXPECT_TRUE(errors.empty());
  }
  {
    ConfigErrors errors;
    const nlohmann::json section = {{"shingle_words", 3}, {"permutations", 64}, {"bands", 8},
                                    {"rows", 8},          {"threshold", 0.7},   {"seed", 42}};
    const MinHashOptions o = read_minhash_section(section, "prepare.near_dedup", errors);
    EXPECT_TRUE(errors.empty());
    EXPECT_EQ(o.shingle_words, 3);
    EXPECT_EQ(o.permutations, 64);
    EXPECT_EQ(o.seed, 42u);
    EXPECT_EQ(minhash_values(o), section);  // the resolved values parse back the same
    EXPECT_EQ(minhash_signature("a b c d", o).size(), 64u);
  }
  auto errors_of = [](const nlohmann::json& section) {
    ConfigErrors errors;
    read_minhash_section(section, "prepare.near_dedup", errors);
    return errors.list();
  };
  auto mentions = [](const std::vector<std::string>& list, const std::string& what) {
    for (const auto& e : list)
      if (e.find(what) != std::string::npos) return true;
    return false;
  };
  auto list = errors_of({{"bands", 10}});
  ASSERT_EQ(list.size(), 1u);
  EXPECT_TRUE(mentions(list, "prepare.near_dedup")) << list[0];
  EXPECT_TRUE(mentions(list, "10 * 12 = 120")) << list[0];
  EXPECT_TRUE(mentions(list, "permutations (128)")) << list[0];

  list = errors_of({{"band", 16}});
  ASSERT_EQ(list.size(), 1u);
  EXPECT_TRUE(mentions(list, "prepare.near_dedup.band: unknown key")) << list[0];

  for (const double bad : {0.0, -0.5, 1.5}) {
    list = errors_of({{"threshold", bad}});
    ASSERT_EQ(list.size(), 1u) << bad;
    EXPECT_TRUE(mentions(list, "prepare.near_dedup.threshold")) << list[0];
  }
  EXPECT_TRUE(errors_of({{"threshold", 1.0}}).empty());
  EXPECT_TRUE(mentions(errors_of({{"shingle_words", 0}}), "prepare.near_dedup.shingle_words"));
  EXPECT_TRUE(mentions(errors_of({{"seed", -1}}), "prepare.near_dedup.seed"));
  EXPECT_TRUE(mentions(errors_of("yes"), "prepare.near_dedup"));
  EXPECT_TRUE(mentions(errors_of(false), "prepare.near_dedup"));

  EXPECT_NEAR(lsh_threshold(16, 8), std::pow(1.0 / 16, 1.0 / 8), 1e-12);
  EXPECT_NEAR(lsh_threshold(16, 8), 0.7071, 1e-4);
  MinHashOptions bad;
  bad.bands = 10;
  EXPECT_THROW(NearDuplicateIndex{bad}, Error);
  EXPECT_THROW(estimated_jaccard(Signature(128), Signature(64)), Error);
}

// The threshold is where recall is promised: pairs whose true Jaccard sits just above it (in
// [t, t + 0.05]) are found at >= 0.95, at the default threshold and at a lower one, and the
// banding chosen for a threshold makes such a pair a candidate with probability >= 0.99.
TEST(PrepareMinHash, PairsJustAboveTheThresholdAreFound) {
  EXPECT_EQ(banding_for(128, 0.8), std::make_pair(MinHashOptions{}.bands, MinHashOptions{}.rows));
  for (const double threshold : {0.8, 0.6}) {
    ConfigErrors errors;
    const MinHashOptions options =
        read_minhash_section({{"threshold", threshold}}, "near_dedup", errors);
    ASSERT_TRUE(errors.empty());
    const double candidate =
        1 - std::pow(1 - std::pow(threshold, options.rows), static_cast<double>(options.bands));
    EXPECT_GE(candidate, 0.99) << options.bands << " x " << options.rows;
    Corpus corpus(threshold == 0.8 ? 7 : 8);
    int pairs = 0, found = 0;
    while (pairs < 300) {
      const Words original = corpus.document(150, 250);
      // Edit one word at a time until the true Jaccard falls into [t, t + 0.05].
      Words copy = original;
      double jaccard = 1;
      while (jaccard > threshold + 0.05) {
        copy = corpus.edited(copy, 1);
        jaccard = true_jaccard(join(original), join(copy));
      }
      if (jaccard < threshold) continue;
      NearDuplicateIndex index(options);
      index.find_or_insert(minhash_signature(join(original), options), 0);
      found += index.find_or_insert(minhash_signature(join(copy), options), 1) == 0;
      ++pairs;
    }
    const double recall = static_cast<double>(found) / pairs;
    std::printf(
        "[minhash] threshold %.2f (%lld bands x %lld rows): recall %.3f of %d pairs with "
        "true Jaccard in [t, t + 0.05]\n",
        threshold, static_cast<long long>(options.bands), static_cast<long long>(options.rows),
        recall, pairs);
    EXPECT_GE(recall, 0.95);
  }
}

}  // namespace
}  // namespace tiller
