// MinHash signatures and an LSH-banded index for near-duplicate removal in `tiller data prepare`
// (Broder 1997; Leskovec, Rajaraman & Ullman, "Mining of Massive Datasets", ch. 3).
//
// Use: worker threads compute minhash_signature() concurrently (a pure function); one thread then
// calls NearDuplicateIndex::find_or_insert() in document order, so that which documents are kept
// depends only on the corpus and the options, never on thread timing.
//
// Words: a document's bytes are split at ASCII whitespace and ASCII punctuation (both are
// separators, never part of a word); ASCII letters are lower-cased; every other byte (digits,
// UTF-8 sequences) is kept as is. "Hello, World!" and "hello world" have the same words.
// Shingles: every run of `shingle_words` consecutive words (words joined by one space), each
// hashed once with XXH3-64. A document with fewer words than shingle_words (none included) is one
// shingle of all its words.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/recipe/config_reader.h"

namespace tiller {

struct MinHashOptions {
  int64_t shingle_words = 5;   // words per shingle (word n-grams), >= 1
  int64_t permutations = 128;  // hash functions, i.e. values per signature
  int64_t bands = 32,
          rows = 4;  // LSH banding (bands * rows == permutations): banding_for(128, 0.8)
  // The Jaccard similarity at which a near-duplicate is found: LSH makes it a candidate with
  // probability >= 0.99 (banding_for) and verification passes it with probability >= 0.977 (the
  // estimate is allowed 2 standard errors below the threshold), so recall at the threshold is
  // >= 0.96. Pairs somewhat below it (down to about threshold - 4 standard errors, 0.14 at 128
  // permutations and 0.8) are removed with falling probability; unrelated documents never are.
  double threshold = 0.8;
  uint64_t seed = 1;  // picks the hash functions; signatures compare only under one seed
};

// The banding for a threshold: of the (bands, rows) with bands * rows == permutations, the one
// with the most rows (the fewest spurious candidates) whose S-curve 1 - (1 - t^rows)^bands makes a
// pair at the threshold t a candidate with probability >= 0.99 (one row a band if none does).
std::pair<int64_t, int64_t> banding_for(int64_t permutations, double threshold);

// Reads the near-duplicate section at `path`: `true` or {} gives the defaults; an object overrides
// shingle_words, permutations, bands, rows, threshold (in (0, 1]) and seed (>= 0). Without bands
// and rows, banding_for(permutations, threshold) chooses them; with one, the other is
// permutations / it. Every mistake (unknown key, wrong type, bands * rows != permutations) is
// added to `errors` with its path.
MinHashOptions read_minhash_section(const nlohmann::json& section, const std::string& path,
                                    ConfigErrors& errors);

// The options as the resolved recipe states them (every key, so that it parses back the same).
nlohmann::json minhash_values(const MinHashOptions& options);

// Where the banding's S-curve 1 - (1 - J^rows)^bands rises through 1/2, approximately
// (1/bands)^(1/rows): with threshold far below it, near-duplicates at the threshold are rarely even
// candidates (recall suffers); far above it, many candidates are verified and refused (time).
double lsh_threshold(int64_t bands, int64_t rows);

// One minimum per hash function, each a 32-bit value: 32 bits make a chance agreement of two
// different minima (2^-32) negligible beside the estimate's own error (sqrt(J(1-J)/k) ~ 0.035 at
// k = 128), and take half the memory of 64-bit values in the workers' queues.
using Signature = std::vector<uint32_t>;

// The document's signature: options.permutations values. Pure and thread-safe (per-thread scratch
// buffers only); the same text and options give the same signature on every machine.
Signature minhash_signature(std::string_view text, const MinHashOptions& options);

// The fraction of positions where two signatures (of one options.seed) agree: an unbiased estimate
// of the Jaccard similarity of the two documents' shingle sets. Throws Error on different lengths.
double estimated_jaccard(const Signature& a, const Signature& b);

// The kept documents' band keys and, for verification, a compact fingerprint of each signature.
//
// Layout: per band, one flat open-addressing table (linear probing, at most 3/4 full) of 8-byte
// entries {the band key's high 32 bits, a 32-bit document slot}; the low bits of those 32 place
// the entry, so growth needs nothing else, and two bands that agree only in these 32 bits are
// refused by verification. Per kept document: its id (8 bytes) and the low 8 bits of each signature
// value (permutations bytes), in fixed-size chunks that growth never copies. Verification
// estimates the Jaccard from those 8-bit values (b-bit minwise hashing, Li & Koenig 2010): two
// unequal minima agree in 8 bits with chance 1/256, which the estimate (m/k - 1/256) / (1 - 1/256)
// removes; its standard error is within 1% of the full signature's for J >= 0.5.
class NearDuplicateIndex {
 public:
  explicit NearDuplicateIndex(const MinHashOptions& options);

  // If an earlier inserted document shares a band with `signature` and their estimated Jaccard
  // reaches options.threshold less 2 of its standard errors there, returns that document's id (the
  // first found: bands in order, then in table order). Otherwise inserts the signature under `id`
  // and returns -1. `id` must be >= 0.
  int64_t find_or_insert(const Signature& signature, int64_t id);

  // Bytes held: band tables (their full capacity) and the kept documents' chunks.
  int64_t memory_bytes() const;
  // Bytes one more kept document adds, at most, amortised over table growth: its id and
  // fingerprint, and one entry per band at the tables' least fill (3/8, just after a table
  // doubles). A table doubles one band at a time, so growth holds at most one band's old table
  // beside the rest.
  int64_t bytes_per_document() const;
  int64_t documents() const { return documents_; }

 private:
  struct Entry {
    uint32_t fingerprint;
    uint32_t slot;  // kEmpty: free
  };
  struct Table {
    std::vector<Entry> entries;  // size a power of two
    int64_t used = 0;
  };

  static constexpr uint32_t kEmpty = 0xFFFFFFFFu;
  static constexpr int64_t kChunkDocuments = 4096;

  uint64_t band_key(const Signature& signature, int64_t band) const;
  const uint8_t* fingerprint_of(uint32_t slot) const;
  bool verified(const uint8_t* candidate, const uint8_t* query) const;
  // A table's position for a key is its fingerprint's low bits, so growth needs no other key bits.
  static void insert(Table& table, uint32_t fingerprint, uint32_t slot);
  static void grow(Table& table);

  MinHashOptions options_;
  int64_t min_agreements_;  // fingerprint agreements at which the estimate reaches the threshold
  std::vector<Table> tables_;
  std::vector<std::vector<uint8_t>> fingerprint_chunks_;  // kChunkDocuments * permutations bytes
  std::vector<std::vector<int64_t>> id_chunks_;           // kChunkDocuments ids
  int64_t documents_ = 0;
  std::vector<uint8_t> query_;  // scratch: the query's low 8 bits per value
  std::vector<uint32_t> keys_;  // scratch: the query's band fingerprints
};

}  // namespace tiller
