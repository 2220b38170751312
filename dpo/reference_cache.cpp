#include "dpo/reference_cache.h"

#include <nlohmann/json.hpp>

#include <cstdio>

#include "common/dist/process_group.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "dpo/pair_log_probs.h"

namespace tiller {

namespace {

// FNV-1a, 64 bits: a stable digest (not a security measure).
struct Fnv {
  uint64_t h = 0xcbf29ce484222325ull;
  void add(const void* data, size_t size) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < size; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  }
  void add(const std::string& s) { add(s.data(), s.size() + 1); }
  void add(int64_t v) { add(&v, sizeof v); }
  std::string hex() const {
    char out[17];
    std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(h));
    return out;
  }
};

std::string chunk_path(const std::string& dir, int64_t chunk) {
  char name[32];
  std::snprintf(name, sizeof name, "/chunk-%06lld.json", static_cast<long long>(chunk));
  return dir + name;
}

// The cache's fingerprint file: written before the first chunk, checked on every later build.
void claim_cache_dir(const ReferenceCacheOptions& o, size_t pairs) {
  const std::string path = o.dir + "/fingerprint.json";
  const nlohmann::json want = {
      {"fingerprint", o.fingerprint}, {"pairs", pairs}, {"chunk_pairs", o.chunk_pairs}};
  if (path_exists(path)) {
    const nlohmann::json have = read_json_file(path);
    check(have == want, "stage " + o.stage + ": the reference log-prob cache " + o.dir +
                            " was made for another reference model, data or template (" +
                            "fingerprint " + have.value("fingerprint", std::string("?")) +
                            ", this run's " + o.fingerprint + "); delete " + o.dir +
                            " to rebuild it");
    return;
  }
  if (dist::is_main()) {
    make_directories(o.dir);
    write_file_atomic(path, want.dump(1) + "\n");
  }
}

std::vector<double> numbers(const nlohmann::json& chunk, const char* key, size_t count,
                            const std::string& path) {
  check(chunk.contains(key) && chunk[key].is_array() && chunk[key].size() == count,
        path + ": expected \"" + key + "\" with " + std::to_string(count) + " numbers");
  return chunk[key].get<std::vector<double>>();
}

}  // namespace

std::string reference_fingerprint(TransformerImpl& reference,
                                  const std::vector<const std::vector<PreferencePair>*>& pair_sets,
                                  const std::string& template_name, int64_t max_seq_len) {
  Fnv d;
  for (const auto& item : reference.named_parameters()) {
    const auto w = item.value().detach().to(torch::kCPU, torch::kFloat).contiguous();
    d.add(item.key());
    for (int64_t size : w.sizes()) d.add(size);
    d.add(w.data_ptr<float>(), static_cast<size_t>(w.numel()) * sizeof(float));
  }
  d.add(template_name);
  d.add(max_seq_len);
  for (const auto* pairs : pair_sets)
    for (const PreferencePair& p : *pairs) {
      for (const auto* seq : {&p.chosen, &p.rejected}) {
        d.add(static_cast<int64_t>(seq->size()));
        d.add(seq->data(), seq->size() * sizeof(int64_t));
      }
      d.add(p.chosen_prompt_tokens);
      d.add(p.rejected_prompt_tokens);
    }
  return d.hex();
}

ReferenceCacheBuild build_reference_cache(TransformerImpl& reference,
                                          const std::vector<PreferencePair>& pairs,
                                          const ReferenceCacheOptions& o) {
  check(o.chunk_pairs >= 1 && o.micro_batch >= 1, "reference cache: bad chunk or batch size");
  claim_cache_dir(o, pairs.size());
  const auto order = identity_order(pairs.size());
  const auto n = static_cast<int64_t>(pairs.size());
  ReferenceCacheBuild out;
  out.chunks = (n + o.chunk_pairs - 1) / o.chunk_pairs;
  torch::NoGradGuard no_grad;
  const bool was_training = reference.is_training();
  reference.eval();
  for (int64_t chunk = 0; chunk < out.chunks; ++chunk) {
    const int64_t begin = chunk * o.chunk_pairs, end = std::min(n, begin + o.chunk_pairs);
    const auto count = static_cast<size_t>(end - begin);
    const std::string path = chunk_path(o.dir, chunk);
    std::vector<double> chosen, rejected;
    if (path_exists(path)) {
      const nlohmann::json saved = read_json_file(path);
      chosen = numbers(saved, "chosen", count, path);
      rejected = numbers(saved, "rejected", count, path);
    } else {
      for (int64_t at = begin; at < end; at += o.micro_batch) {
        const PairSlice slice{pairs, order, static_cast<size_t>(at),
                              static_cast<size_t>(std::min(o.micro_batch, end - at))};
        const SideLogProbs l = pair_log_probs(reference, slice, o.pad_id, o.share_prefixes);
        const auto c = l.chosen.to(torch::kCPU, torch::kDouble),
                   r = l.rejected.to(torch::kCPU, torch::kDouble);
        for (int64_t i = 0; i < c.size(0); ++i) {
          chosen.push_back(c[i].item<double>());
          rejected.push_back(r[i].item<double>());
        }
      }
      if (dist::is_main())
        write_file_atomic(path, nlohmann::json{{"chosen", chosen}, {"rejected", rejected}}.dump());
      ++out.chunks_computed;
    }
    out.logps.chosen.insert(out.logps.chosen.end(), chosen.begin(), chosen.end());
    out.logps.rejected.insert(out.logps.rejected.end(), rejected.begin(), rejected.end());
  }
  if (was_training) reference.train();
  return out;
}

}  // namespace tiller
