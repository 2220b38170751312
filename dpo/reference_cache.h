// The reference model's log-probabilities of every preference pair, computed once before DPO
// trains and kept in the run directory, so that the reference model is not held in memory (nor
// run) while the policy trains.
//
// RUN_DIR/<stage>/reference_logps/: fingerprint.json, then chunk-NNNNNN.json files of `chunk_pairs`
// pairs each ({"chosen": [...], "rejected": [...]}, summed log-probs as round-trip decimals),
// each written atomically. A run killed while building the cache resumes from the chunks done.
// The fingerprint covers the reference weights and every pair's tokens (hence the data files,
// their order and split, the template and max_seq_len): a cache made for another reference, data
// or template is refused with one line that says how to rebuild it.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "common/data/preference_data.h"
#include "common/model/transformer.h"

namespace tiller {

// The reference's summed response log-probabilities, pair by pair.
struct ReferenceLogProbs {
  std::vector<double> chosen, rejected;
};

// A hex digest of a model's weights (names, shapes, bytes) and of the pairs' tokens.
std::string reference_fingerprint(TransformerImpl& reference,
                                  const std::vector<const std::vector<PreferencePair>*>& pair_sets,
                                  const std::string& template_name, int64_t max_seq_len);

struct ReferenceCacheOptions {
  std::string dir;          // RUN_DIR/<stage>/reference_logps
  std::string fingerprint;  // reference_fingerprint(...)
  std::string stage;        // for messages
  int64_t chunk_pairs = 256;
  int64_t micro_batch = 8;  // pairs per forward
  int64_t pad_id = 0;
  bool share_prefixes = true;  // pair_log_probs's
};

struct ReferenceCacheBuild {
  ReferenceLogProbs logps;
  int64_t chunks = 0, chunks_computed = 0;  // chunks in all, and computed by this call
};

// Reads the cache of `pairs`, computing (with `reference`, no autograd) and writing the chunks
// that are missing. Throws tiller::Error when the directory holds a cache with another
// fingerprint.
ReferenceCacheBuild build_reference_cache(TransformerImpl& reference,
                                          const std::vector<PreferencePair>& pairs,
                                          const ReferenceCacheOptions& options);

}  // namespace tiller
