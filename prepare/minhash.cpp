#include "prepare/minhash.h"

#include <tuple>

#include <xxhash.h>  // XXH3_64bits_withSeed: shingle and band hashes

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/util/error.h"

namespace tiller {

namespace {

// 1/256: the chance that two unequal 32-bit minima agree in their low 8 bits.
constexpr double kChanceAgreement = 1.0 / 256.0;
// The tables double when 3/4 full, so each is at least 3/8 full after its first doubling.
constexpr int64_t kInitialTableEntries = 1024;

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The hash functions: function i maps a shingle's XXH3 hash h to the high 32 bits of
// a_i * h + b_i (mod 2^64), a_i odd (multiply-add-shift, Dietzfelbinger 1996). h is already a
// well-mixed 64-bit hash, so one XXH3 per shingle serves all k functions, and the loop over them
// is plain 64-bit multiply-add that the compiler vectorises.
struct HashFunctions {
  uint64_t seed = 0;
  std::vector<uint64_t> a, b;
};

const HashFunctions& hash_functions(const MinHashOptions& options) {
  thread_local HashFunctions cached;
  const auto k = static_cast<size_t>(options.permutations);
  if (cached.a.size() != k || cached.seed != options.seed) {
    cached.seed = options.seed;
    cached.a.resize(k);
    cached.b.resize(k);
    uint64_t state = options.seed ^ 0x6D696E6861736821ull;  // "minhash!"
    for (size_t i = 0; i < k; ++i) {
      cached.a[i] = splitmix64(state) | 1;
      cached.b[i] = splitmix64(state);
    }
  }
  return cached;
}

// Byte classes: 0 separator (ASCII whitespace or punctuation), else the byte as it enters a word
// (ASCII letters lower-cased).
struct ByteClasses {
  unsigned char map[256];
  ByteClasses() {
    for (int c = 0; c < 256; ++c) {
      const bool space = c == ' ' || (c >= '\t' && c <= '\r');
      const bool punct = (c >= '!' && c <= '/') || (c >= ':' && c <= '@') ||
                         (c >= '[' && c <= '`') || (c >= '{' && c <= '~');
      map[c] = static_cast<unsigned char>(space || punct ? 0 : (c >= 'A' && c <= 'Z' ? c + 32 : c));
    }
  }
};

// signature[i] = min(signature[i], hash function i of h), for i < k.
inline void take_minimum_loop(uint32_t* __restrict signature, const uint64_t* __restrict a,
                              const uint64_t* __restrict b, int64_t k, uint64_t h) {
  for (int64_t i = 0; i < k; ++i) {
    const auto value = static_cast<uint32_t>((a[i] * h + b[i]) >> 32);
    signature[i] = value < signature[i] ? value : signature[i];
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// The same loop compiled for AVX2 (4 lanes of 64-bit multiply-add instead of SSE2's 2), chosen at
// run time: the build targets baseline x86-64.
__attribute__((target("avx2"))) void take_minimum_avx2(uint32_t* __restrict signature,
                                                       const uint64_t* __restrict a,
                                                       const uint64_t* __restrict b, int64_t k,
                                                       uint64_t h) {
  take_minimum_loop(signature, a, b, k, h);
}
const bool kHasAvx2 = __builtin_cpu_supports("avx2");
#endif

void take_minimum(uint32_t* signature, const uint64_t* a, const uint64_t* b, int64_t k,
                  uint64_t h) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (kHasAvx2) return take_minimum_avx2(signature, a, b, k, h);
#endif
  take_minimum_loop(signature, a, b, k, h);
}

}  // namespace

std::pair<int64_t, int64_t> banding_for(int64_t permutations, double threshold) {
  for (int64_t rows = permutations; rows >= 1; --rows) {
    if (permutations % rows != 0) continue;
    const int64_t bands = permutations / rows;
    const double candidate = 1 - std::pow(1 - std::pow(threshold, static_cast<double>(rows)),
                                          static_cast<double>(bands));
    if (candidate >= 0.99) return {bands, rows};
  }
  return {permutations, 1};
}

MinHashOptions read_minhash_section(const nlohmann::json& section, const std::string& path,
                                    ConfigErrors& errors) {
  MinHashOptions o;
  if (section.is_boolean() && section.get<bool>()) return o;
  if (!section.is_object()) {
    errors.add(path, std::string("expected true or an object, got ") + section.dump());
    return o;
  }
  ConfigReader r(section, path, errors);
  o.shingle_words = r.integer("shingle_words", o.shingle_words);
  o.permutations = r.integer("permutations", o.permutations);
  const bool has_bands = r.has("bands"), has_rows = r.has("rows");
  o.bands = r.integer("bands", 0);
  o.rows = r.integer("rows", 0);
  o.threshold = r.number("threshold", o.threshold);
  const int64_t seed = r.integer("seed", static_cast<int64_t>(o.seed));
  r.require(seed >= 0, "seed", "must be >= 0");
  o.seed = static_cast<uint64_t>(seed);
  r.require(o.shingle_words >= 1, "shingle_words", "must be at least 1");
  r.require(o.permutations >= 1 && o.permutations <= 4096, "permutations", "must be in [1, 4096]");
  r.require(!has_bands || o.bands >= 1, "bands", "must be at least 1");
  r.require(!has_rows || o.rows >= 1, "rows", "must be at least 1");
  r.require(o.threshold > 0 && o.threshold <= 1, "threshold", "must be in (0, 1]");
  if (o.permutations < 1 || o.threshold <= 0 || o.threshold > 1) return o;
  if (!has_bands && !has_rows) {
    std::tie(o.bands, o.rows) = banding_for(o.permutations, o.threshold);
  } else if (!has_rows && o.bands >= 1) {
    o.rows = o.permutations / o.bands;
  } else if (!has_bands && o.rows >= 1) {
    o.bands = o.permutations / o.rows;
  }
  if (o.bands >= 1 && o.rows >= 1 && o.bands * o.rows != o.permutations)
    errors.add(path, "bands * rows (" + std::to_string(o.bands) + " * " + std::to_string(o.rows) +
                         " = " + std::to_string(o.bands * o.rows) + ") must equal permutations (" +
                         std::to_string(o.permutations) + ")");
  return o;
}

nlohmann::json minhash_values(const MinHashOptions& o) {
  return {{"shingle_words", o.shingle_words},
          {"permutations", o.permutations},
          {"bands", o.bands},
          {"rows", o.rows},
          {"threshold", o.threshold},
          {"seed", o.seed}};
}

double lsh_threshold(int64_t bands, int64_t rows) {
  return std::pow(1.0 / static_cast<double>(bands), 1.0 / static_cast<double>(rows));
}

Signature minhash_signature(std::string_view text, const MinHashOptions& options) {
  check(options.permutations >= 1,
        "minhash_signature: permutations " + std::to_string(options.permutations) + " < 1");
  static const ByteClasses classes;
  const HashFunctions& functions = hash_functions(options);
  const int64_t k = options.permutations;
  const auto n = static_cast<size_t>(std::max<int64_t>(options.shingle_words, 1));

  // The words, lower-cased, each followed by one space; starts[i]: where word i begins.
  thread_local std::string words;
  thread_local std::vector<size_t> starts;
  words.clear();
  starts.clear();
  words.reserve(text.size() + 1);
  bool in_word = false;
  for (const char ch : text) {
    const unsigned char c = classes.map[static_cast<unsigned char>(ch)];
    if (c == 0) {
      if (in_word) words.push_back(' ');
      in_word = false;
      continue;
    }
    if (!in_word) starts.push_back(words.size());
    in_word = true;
    words.push_back(static_cast<char>(c));
  }
  if (in_word) words.push_back(' ');
  starts.push_back(words.size());  // the end of the last word's space

  Signature signature(static_cast<size_t>(k), 0xFFFFFFFFu);
  const size_t count = starts.size() - 1;  // words
  const size_t shingles = count < n ? 1 : count - n + 1;
  for (size_t s = 0; s < shingles; ++s) {
    // Shingle s: words s .. s+n-1 joined by single spaces (without the last word's space).
    const size_t begin = count == 0 ? 0 : starts[s];
    const size_t end = count == 0 ? 0 : starts[std::min(s + n, count)] - 1;
    const uint64_t h = XXH3_64bits_withSeed(words.data() + begin, end - begin, options.seed);
    take_minimum(signature.data(), functions.a.data(), functions.b.data(), k, h);
  }
  // A worker keeps its scratch between documents, but not a huge document's.
  if (words.capacity() > (size_t{1} << 24)) {
    std::string().swap(words);
    std::vector<size_t>().swap(starts);
  }
  return signature;
}

double estimated_jaccard(const Signature& a, const Signature& b) {
  check(a.size() == b.size(), "estimated_jaccard: signatures of " + std::to_string(a.size()) +
                                  " and " + std::to_string(b.size()) +
                                  " values (made with different permutations)");
  if (a.empty()) return 0;
  int64_t agree = 0;
  for (size_t i = 0; i < a.size(); ++i) agree += a[i] == b[i];
  return static_cast<double>(agree) / static_cast<double>(a.size());
}

NearDuplicateIndex::NearDuplicateIndex(const MinHashOptions& options) : options_(options) {
  check(options.permutations >= 1 && options.bands >= 1 && options.rows >= 1 &&
            options.bands * options.rows == options.permutations,
        "near-duplicate index: bands * rows (" + std::to_string(options.bands) + " * " +
            std::to_string(options.rows) + ") must equal permutations (" +
            std::to_string(options.permutations) + ")");
  // The least agreement m of k 8-bit values a pair at the threshold reaches with probability
  // ~0.977: at Jaccard t, m/k has mean p = t (1 - c) + c and standard error sqrt(p (1 - p) / k).
  const double k = static_cast<double>(options.permutations);
  const double p = options.threshold * (1 - kChanceAgreement) + kChanceAgreement;
  min_agreements_ =
      static_cast<int64_t>(std::ceil(k * (p - 2 * std::sqrt(p * (1 - p) / k)) - 1e-9));
  min_agreements_ = std::clamp<int64_t>(min_agreements_, 1, options.permutations);
  tables_.resize(static_cast<size_t>(options.bands));
  for (Table& t : tables_) t.entries.assign(kInitialTableEntries, Entry{0, kEmpty});
}

uint64_t NearDuplicateIndex::band_key(const Signature& signature, int64_t band) const {
  return XXH3_64bits_withSeed(signature.data() + band * options_.rows,
                              static_cast<size_t>(options_.rows) * sizeof(uint32_t),
                              static_cast<uint64_t>(band));
}

const uint8_t* NearDuplicateIndex::fingerprint_of(uint32_t slot) const {
  return fingerprint_chunks_[slot / kChunkDocuments].data() +
         (slot % kChunkDocuments) * options_.permutations;
}

bool NearDuplicateIndex::verified(const uint8_t* candidate, const uint8_t* query) const {
  int64_t agree = 0;
  for (int64_t i = 0; i < options_.permutations; ++i) agree += candidate[i] == query[i];
  return agree >= min_agreements_;
}

void NearDuplicateIndex::grow(Table& table) {
  const std::vector<Entry> old = std::move(table.entries);
  table.entries.assign(old.size() * 2, Entry{0, kEmpty});
  table.used = 0;
  // From a free entry onwards, so that no cluster is split at the array's end: entries of one key
  // keep their insertion order, and "the first found" stays the earliest inserted.
  const size_t size = old.size();
  size_t first_free = 0;
  while (old[first_free].slot != kEmpty) ++first_free;
  for (size_t i = 0; i < size; ++i) {
    const Entry& e = old[(first_free + i) & (size - 1)];
    if (e.slot != kEmpty) insert(table, e.fingerprint, e.slot);
  }
}

void NearDuplicateIndex::insert(Table& table, uint32_t fingerprint, uint32_t slot) {
  const size_t mask = table.entries.size() - 1;
  size_t position = fingerprint & mask;
  while (table.entries[position].slot != kEmpty) position = (position + 1) & mask;
  table.entries[position] = Entry{fingerprint, slot};
  ++table.used;
}

int64_t NearDuplicateIndex::find_or_insert(const Signature& signature, int64_t id) {
  const int64_t k = options_.permutations;
  check(static_cast<int64_t>(signature.size()) == k,
        "near-duplicate index: a signature of " + std::to_string(signature.size()) +
            " values; the index holds " + std::to_string(k));
  check(id >= 0, "near-duplicate index: document id " + std::to_string(id) + " < 0");
  query_.resize(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) query_[i] = static_cast<uint8_t>(signature[i]);
  keys_.resize(tables_.size());
  for (size_t band = 0; band < tables_.size(); ++band) {
    keys_[band] = static_cast<uint32_t>(band_key(signature, static_cast<int64_t>(band)) >> 32);
    const Table& table = tables_[band];
    const size_t mask = table.entries.size() - 1;
    for (size_t position = keys_[band] & mask; table.entries[position].slot != kEmpty;
         position = (position + 1) & mask) {
      const Entry& e = table.entries[position];
      if (e.fingerprint == keys_[band] && verified(fingerprint_of(e.slot), query_.data()))
        return id_chunks_[e.slot / kChunkDocuments][e.slot % kChunkDocuments];
    }
  }

  check(documents_ < static_cast<int64_t>(kEmpty),
        "near-duplicate index: more than 2^32 - 1 kept documents");
  const int64_t slot = documents_++;
  if (slot % kChunkDocuments == 0) {
    fingerprint_chunks_.emplace_back(static_cast<size_t>(kChunkDocuments * k));
    id_chunks_.emplace_back(static_cast<size_t>(kChunkDocuments));
  }
  std::memcpy(fingerprint_chunks_.back().data() + (slot % kChunkDocuments) * k, query_.data(),
              static_cast<size_t>(k));
  id_chunks_.back()[slot % kChunkDocuments] = id;
  for (size_t band = 0; band < tables_.size(); ++band) {
    Table& table = tables_[band];
    if (4 * (table.used + 1) > 3 * static_cast<int64_t>(table.entries.size())) grow(table);
    insert(table, keys_[band], static_cast<uint32_t>(slot));
  }
  return -1;
}

int64_t NearDuplicateIndex::memory_bytes() const {
  int64_t bytes = static_cast<int64_t>(sizeof(*this));
  for (const Table& t : tables_)
    bytes += static_cast<int64_t>(t.entries.capacity() * sizeof(Entry));
  for (const auto& c : fingerprint_chunks_) bytes += static_cast<int64_t>(c.capacity());
  for (const auto& c : id_chunks_) bytes += static_cast<int64_t>(c.capacity() * sizeof(int64_t));
  return bytes;
}

int64_t NearDuplicateIndex::bytes_per_document() const {
  // An entry per band at 3/8 fill: 8 / (3/8) bytes.
  return options_.permutations + static_cast<int64_t>(sizeof(int64_t)) +
         options_.bands * static_cast<int64_t>(sizeof(Entry)) * 8 / 3;
}

}  // namespace tiller
