#include "prepare/prepare.h"

#include <malloc.h>
#include <sys/resource.h>
#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <fstream>
#include <mutex>
#include <thread>

#include "common/data/shards.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

namespace {

constexpr int64_t kMiB = int64_t{1} << 20;

// ---------------------------------------------------------------------------------------------
// Memory: the process's resident set, from /proc (Linux).

int64_t proc_status_kib(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(in, line))
    if (line.compare(0, n, key) == 0) return std::atoll(line.c_str() + n + 1);
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Exact duplicates: a flat open-addressing set of 64-bit text hashes (16 bytes a document at its
// fullest, against ~50 for a node-based std::unordered_set).

class HashSet {
 public:
  // Inserts h; false when it was already there.
  bool insert(uint64_t h) {
    if (h == 0) h = 1;  // 0 marks an empty slot
    if ((size_ + 1) * 2 > slots_.size()) grow();
    size_t i = h & (slots_.size() - 1);
    while (slots_[i] != 0) {
      if (slots_[i] == h) return false;
      i = (i + 1) & (slots_.size() - 1);
    }
    slots_[i] = h;
    ++size_;
    return true;
  }
  int64_t memory_bytes() const { return static_cast<int64_t>(slots_.size() * sizeof(uint64_t)); }

 private:
  void grow() {
    std::vector<uint64_t> old(std::max<size_t>(1024, slots_.size() * 2), 0);
    old.swap(slots_);
    size_ = 0;
    for (uint64_t h : old)
      if (h != 0) insert(h);
  }
  std::vector<uint64_t> slots_;
  size_t size_ = 0;
};

// Document sizes in powers of two: bucket b counts documents of [2^(b-1), 2^b) bytes.
struct Histogram {
  std::vector<int64_t> counts = std::vector<int64_t>(32, 0);
  void add(size_t bytes) {
    int b = 0;
    while (bytes > 0 && b < 31) {
      bytes >>= 1;
      ++b;
    }
    ++counts[static_cast<size_t>(b)];
  }
  nlohmann::json to_json() const {
    nlohmann::json buckets = nlohmann::json::array();
    for (size_t b = 0; b < counts.size(); ++b)
      if (counts[b] > 0)
        buckets.push_back({{"min_bytes", b == 0 ? 0 : int64_t{1} << (b - 1)},
                           {"max_bytes", (int64_t{1} << b) - 1},
                           {"documents", counts[b]}});
    return buckets;
  }
};

std::string excerpt(const std::string& text, size_t limit = 240) {
  if (text.size() <= limit) return text;
  size_t cut = limit;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;  // UTF-8
  return text.substr(0, cut) + "...";
}

// What one step did, for stats.json.
struct StepStats {
  std::string step;
  int64_t removed = 0, removed_bytes = 0, changed = 0;
  nlohmann::json examples = nlohmann::json::array();
  nlohmann::json extra = nlohmann::json::object();

  void quote(const PrepareConfig& c, nlohmann::json example) {
    if (static_cast<int64_t>(examples.size()) < c.examples) examples.push_back(std::move(example));
  }
  nlohmann::json to_json() const {
    nlohmann::json out = {
        {"step", step}, {"removed_documents", removed}, {"removed_bytes", removed_bytes}};
    if (changed > 0 || step == "normalize" || step == "boilerplate" || step == "pii")
      out["changed_documents"] = changed;
    out.update(extra);
    out["examples"] = examples;
    return out;
  }
};

// ---------------------------------------------------------------------------------------------
// The work of one batch of documents, done on a worker thread.

struct Processed {
  Document input;
  TextOutcome outcome;
  uint64_t hash = 0;
  Signature signature;
  std::vector<uint32_t> tokens;  // BOS first, as pretraining reads a document
};

struct Batch {
  std::vector<Processed> documents;
  int64_t bytes = 0;
  bool done = false;
};

void process(Batch& batch, const PrepareConfig& c, const Tokenizer& tokenizer) {
  for (auto& d : batch.documents) {
    d.outcome = apply_text_steps(d.input.text, c.steps);
    if (!d.outcome.removed_by.empty()) continue;
    d.hash = XXH3_64bits(d.outcome.text.data(), d.outcome.text.size());
    if (c.near_dedup) d.signature = minhash_signature(d.outcome.text, *c.near_dedup);
    const auto ids = tokenizer.encode(d.outcome.text, /*add_bos=*/true);
    d.tokens.assign(ids.begin(), ids.end());
  }
}

// Batches handed to the workers and taken back in order.
class WorkQueue {
 public:
  WorkQueue(int64_t workers, int64_t max_in_flight, const PrepareConfig& c,
            const Tokenizer& tokenizer)
      : max_in_flight_(max_in_flight) {
    for (int64_t i = 0; i < workers; ++i)
      threads_.emplace_back([this, &c, &tokenizer] { work(c, tokenizer); });
  }
  ~WorkQueue() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    changed_.notify_all();
    for (auto& t : threads_) t.join();
  }

  // Adds a batch; waits while max_in_flight are queued or being processed.
  void submit(std::unique_ptr<Batch> batch) {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(
        lock, [&] { return static_cast<int64_t>(in_flight_.size()) < max_in_flight_ || failure_; });
    rethrow_failure();
    in_flight_.push_back(std::move(batch));
    changed_.notify_all();
  }
  // The oldest batch once it is processed (nullptr when none is in flight).
  std::unique_ptr<Batch> take_oldest() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (in_flight_.empty()) return nullptr;
    changed_.wait(lock, [&] { return in_flight_.front()->done || failure_; });
    rethrow_failure();
    auto batch = std::move(in_flight_.front());
    in_flight_.pop_front();
    --next_unclaimed_;
    changed_.notify_all();
    return batch;
  }
  bool full() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(in_flight_.size()) >= max_in_flight_;
  }

 private:
  void work(const PrepareConfig& c, const Tokenizer& tokenizer) {
    for (;;) {
      Batch* batch = nullptr;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait(lock, [&] {
          return stopping_ || next_unclaimed_ < static_cast<int64_t>(in_flight_.size());
        });
        if (stopping_) return;
        batch = in_flight_[static_cast<size_t>(next_unclaimed_++)].get();
      }
      try {
        process(*batch, c, tokenizer);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!failure_) failure_ = std::make_unique<std::string>(e.what());
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        batch->done = true;
      }
      changed_.notify_all();
    }
  }
  void rethrow_failure() {
    if (failure_) throw Error(*failure_);
  }

  int64_t max_in_flight_;
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::unique_ptr<Batch>> in_flight_;
  int64_t next_unclaimed_ = 0;  // index into in_flight_ of the first batch no worker has taken
  std::unique_ptr<std::string> failure_;
  bool stopping_ = false;
};

// ---------------------------------------------------------------------------------------------
// The in-order half: deduplication, the split and the shards.

class Committer {
 public:
  Committer(const PrepareConfig& c, const std::string& dir, const Tokenizer& tokenizer,
            int64_t index_budget_bytes)
      : c_(c), index_budget_(index_budget_bytes) {
    const uint64_t fingerprint = tokenizer_fingerprint(tokenizer);
    const uint32_t token_bytes = shard_token_bytes(tokenizer.vocab_size());
    train_ = std::make_unique<ShardWriter>(dir, "train", token_bytes, fingerprint,
                                           tokenizer.vocab_size(), c.shard_tokens);
    if (c.validation_fraction > 0)
      val_ = std::make_unique<ShardWriter>(dir, "val", token_bytes, fingerprint,
                                           tokenizer.vocab_size(), c.shard_tokens);
    if (c.near_dedup) near_ = std::make_unique<NearDuplicateIndex>(*c.near_dedup);
    for (const char* step :
         {"normalize", "boilerplate", "c4", "gopher_quality", "gopher_repetition", "pii"})
      steps_.push_back({step});
    exact_.step = "exact_dedup";
    near_stats_.step = "near_dedup";
  }

  void commit(Batch& batch) {
    for (auto& d : batch.documents) commit(d);
    batch.documents = {};
    // glibc keeps freed memory in each thread's arena: hand it back, so that the resident set
    // follows what is held, not what was once held.
    malloc_trim(0);
    const int64_t index_bytes = exact_set_.memory_bytes() + (near_ ? near_->memory_bytes() : 0);
    peak_index_bytes = std::max(peak_index_bytes, index_bytes);
    check(index_bytes <= index_budget_,
          "data prepare: the deduplication indexes need " + std::to_string(index_bytes / kMiB) +
              " MiB for " + std::to_string(kept) + " documents, over their share of memory_mb (" +
              std::to_string(index_budget_ / kMiB) +
              " MiB, 5/8 of what the workers leave): raise memory_mb; nothing was written");
  }

  nlohmann::json finish(nlohmann::json& outputs) {
    outputs["train"] = shard_summary(train_->finish(), train_documents_, train_tokens_);
    if (val_) outputs["val"] = shard_summary(val_->finish(), val_documents_, val_tokens_);
    nlohmann::json steps = nlohmann::json::array();
    for (const auto& s : steps_) {
      if (!step_runs(s.step)) continue;
      steps.push_back(s.to_json());
    }
    if (c_.exact_dedup) steps.push_back(exact_.to_json());
    if (near_) {
      near_stats_.extra["index_bytes"] = near_->memory_bytes();
      steps.push_back(near_stats_.to_json());
    }
    return steps;
  }

  Histogram before, after;
  int64_t documents = 0, kept = 0;
  int64_t peak_index_bytes = 0;

 private:
  bool step_runs(const std::string& step) const {
    const TextSteps& s = c_.steps;
    if (step == "normalize") return s.normalize.has_value();
    if (step == "boilerplate") return s.boilerplate.has_value();
    if (step == "c4") return s.c4.has_value();
    if (step == "gopher_quality") return s.gopher_quality.has_value();
    if (step == "gopher_repetition") return s.gopher_repetition.has_value();
    return s.pii.has_value();
  }
  StepStats& step(const std::string& name) {
    for (auto& s : steps_)
      if (s.step == name) return s;
    throw Error("data prepare: no step " + name);
  }

  void commit(Processed& d) {
    ++documents;
    before.add(d.input.text.size());
    const TextOutcome& o = d.outcome;
    if (o.normalized_changed) ++step("normalize").changed;
    if (o.lines_removed > 0) {
      auto& s = step("boilerplate");
      ++s.changed;
      s.extra["lines_removed"] = s.extra.value("lines_removed", int64_t{0}) + o.lines_removed;
    }
    if (o.emails + o.ips + o.phones > 0) {
      auto& s = step("pii");
      ++s.changed;
      s.extra["emails"] = s.extra.value("emails", int64_t{0}) + o.emails;
      s.extra["ips"] = s.extra.value("ips", int64_t{0}) + o.ips;
      s.extra["phones"] = s.extra.value("phones", int64_t{0}) + o.phones;
    }
    if (!o.removed_by.empty()) {
      auto& s = step(o.removed_by);
      ++s.removed;
      s.removed_bytes += static_cast<int64_t>(d.input.text.size());
      s.quote(c_,
              {{"where", d.input.where}, {"reason", o.reason}, {"text", excerpt(d.input.text)}});
      return;
    }
    if (c_.exact_dedup && !exact_set_.insert(d.hash)) {
      ++exact_.removed;
      exact_.removed_bytes += static_cast<int64_t>(d.input.text.size());
      exact_.quote(c_, {{"where", d.input.where}, {"text", excerpt(o.text)}});
      return;
    }
    if (near_) {
      const int64_t original = near_->find_or_insert(d.signature, documents - 1);
      if (original >= 0) {
        ++near_stats_.removed;
        near_stats_.removed_bytes += static_cast<int64_t>(d.input.text.size());
        near_stats_.quote(c_, {{"where", d.input.where},
                               {"near_duplicate_of_document", original + 1},
                               {"text", excerpt(o.text)}});
        return;
      }
    }
    ++kept;
    after.add(o.text.size());
    std::vector<int64_t> ids(d.tokens.begin(), d.tokens.end());
    if (val_ && in_validation(d.hash)) {
      val_->add_document(ids);
      ++val_documents_;
      val_tokens_ += static_cast<int64_t>(ids.size());
    } else {
      train_->add_document(ids);
      ++train_documents_;
      train_tokens_ += static_cast<int64_t>(ids.size());
    }
  }

  // A document's side is fixed by its text and the seed: the same document lands in the same
  // split whatever else the corpus holds.
  bool in_validation(uint64_t text_hash) const {
    uint64_t state = text_hash ^ (c_.seed * 0x9e3779b97f4a7c15ull);
    state ^= state >> 33;
    state *= 0xff51afd7ed558ccdull;
    state ^= state >> 33;
    return static_cast<double>(state >> 11) * 0x1.0p-53 < c_.validation_fraction;
  }

  static nlohmann::json shard_summary(const std::vector<ShardFile>& shards, int64_t documents,
                                      int64_t tokens) {
    nlohmann::json files = nlohmann::json::array();
    for (const auto& s : shards) files.push_back(s.bin);
    return {{"documents", documents}, {"tokens", tokens}, {"shards", files}};
  }

  const PrepareConfig& c_;
  int64_t index_budget_;
  std::unique_ptr<ShardWriter> train_, val_;
  HashSet exact_set_;
  std::unique_ptr<NearDuplicateIndex> near_;
  std::vector<StepStats> steps_;
  StepStats exact_, near_stats_;
  int64_t train_documents_ = 0, train_tokens_ = 0, val_documents_ = 0, val_tokens_ = 0;
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

std::string tokenizer_file(const std::string& path) {
  if (!is_directory(path)) return path;
  for (const char* name : {"tokenizer.model", "tokenizer.json"})
    if (path_exists(path + "/" + name)) return path + "/" + name;
  throw Error(path + ": a directory without tokenizer.model or tokenizer.json");
}

PrepareConfig read_prepare_config(ConfigReader& r, ConfigErrors& errors, bool in_recipe) {
  PrepareConfig c;
  c.inputs = read_input_specs(r.raw("inputs"), r.path_of("inputs"), errors);
  c.tokenizer = r.required_string("tokenizer");
  if (!c.tokenizer.empty() && c.tokenizer[0] != '@' && !path_exists(c.tokenizer))
    errors.add(r.path_of("tokenizer"), c.tokenizer + " does not exist");
  if (!in_recipe) {
    c.output = r.required_string("output");
    c.seed = static_cast<uint64_t>(r.integer("seed", 0));
  }
  c.threads = r.integer("threads", 0);
  r.require(c.threads >= 0, "threads", "must be at least 1 (or 0: every core)");
  c.memory_mb = r.integer("memory_mb", c.memory_mb);
  r.require(c.memory_mb >= 16, "memory_mb", "must be at least 16");
  c.input.max_document_bytes = r.integer("max_document_bytes", c.input.max_document_bytes);
  r.require(
      c.input.max_document_bytes >= 1 && c.input.max_document_bytes <= c.memory_mb * kMiB / 16,
      "max_document_bytes", "must be at least 1 and at most memory_mb / 16");
  c.input.bad_documents = r.string("bad_documents", "error");
  r.one_of("bad_documents", c.input.bad_documents, {"error", "skip"});
  c.steps = read_text_steps(r, errors);
  c.exact_dedup = r.boolean("exact_dedup", false);
  if (r.has("near_dedup")) {
    const nlohmann::json& near = r.raw("near_dedup");
    if (!(near.is_boolean() && !near.get<bool>()))
      c.near_dedup = read_minhash_section(near, r.path_of("near_dedup"), errors);
  }
  c.validation_fraction = r.number("validation_fraction", 0.0);
  r.require(c.validation_fraction >= 0 && c.validation_fraction < 1, "validation_fraction",
            "must be in [0, 1)");
  c.shard_tokens = r.integer("shard_tokens", c.shard_tokens);
  r.require(c.shard_tokens >= 1, "shard_tokens", "must be at least 1");
  c.examples = r.integer("examples", c.examples);
  r.require(c.examples >= 0, "examples", "must be at least 0");
  return c;
}

nlohmann::json prepare_config_values(const PrepareConfig& c) {
  nlohmann::json v = {
      {"inputs", input_specs_values(c.inputs)},
      {"tokenizer", c.tokenizer},
      {"threads", c.threads},
      {"memory_mb", c.memory_mb},
      {"max_document_bytes", c.input.max_document_bytes},
      {"bad_documents", c.input.bad_documents},
      {"exact_dedup", c.exact_dedup},
      {"near_dedup", c.near_dedup ? minhash_values(*c.near_dedup) : nlohmann::json(false)},
      {"validation_fraction", c.validation_fraction},
      {"shard_tokens", c.shard_tokens},
      {"examples", c.examples}};
  v.update(text_steps_values(c.steps));
  if (!c.output.empty()) {
    v["output"] = c.output;
    v["seed"] = c.seed;
  }
  return v;
}

namespace {

// How memory_mb is shared. First what is held whatever the corpus: the tokenizer as loaded
// (measured: its model, its merge tables, the library's pages), ~3 MiB a worker (the tokenizer's
// word cache, the text steps' and MinHash's scratch) and 4 MiB of I/O buffers (the reader's, the
// shard writers'). Of the rest, 3/8 for the batches in flight, the one being read and the one being
// written included (each about 4x its text: the text, its cleaned copy and its tokens), and 5/8 for
// the deduplication indexes (~16 bytes a kept document for exact duplicates,
// NearDuplicateIndex::bytes_per_document() for near ones).
struct MemoryPlan {
  int64_t tokenizer_bytes = 0;
  int64_t max_in_flight = 0;  // batches handed to the workers
  int64_t batch_bytes = 0;
  int64_t index_budget = 0;
};

MemoryPlan plan_memory(const PrepareConfig& c, int64_t threads, int64_t tokenizer_bytes) {
  constexpr int64_t kPerWorker = 3 * kMiB, kIoBytes = 4 * kMiB;
  const int64_t budget = c.memory_mb * kMiB - tokenizer_bytes - threads * kPerWorker - kIoBytes;
  check(budget >= 8 * kMiB, "data prepare: memory_mb " + std::to_string(c.memory_mb) +
                                " leaves less than 8 MiB beside the tokenizer (" +
                                std::to_string(tokenizer_bytes / kMiB) + " MiB) and " +
                                std::to_string(threads) +
                                " workers (3 MiB each) and I/O buffers (4 MiB): raise memory_mb or "
                                "lower threads");
  MemoryPlan plan;
  plan.tokenizer_bytes = tokenizer_bytes;
  plan.max_in_flight = 2 * threads + 1;
  // Batches of 1 MiB at most: enough to amortise the hand-offs, small enough that every worker
  // has one even near the end of a small corpus.
  plan.batch_bytes =
      std::clamp<int64_t>(budget * 3 / 8 / 4 / (plan.max_in_flight + 2), 64 << 10, 1 << 20);
  plan.index_budget = budget * 5 / 8;
  return plan;
}

// Reads every document into batches, hands them to the workers and commits them in order, with a
// progress line every 5 seconds.
void run_pipeline(DocumentStream& stream, Committer& committer, const PrepareConfig& c,
                  const Tokenizer& tokenizer, int64_t threads, const MemoryPlan& plan,
                  const std::string& label, std::chrono::steady_clock::time_point start) {
  WorkQueue queue(threads, plan.max_in_flight, c, tokenizer);
  auto commit_oldest = [&] {
    auto batch = queue.take_oldest();
    if (!batch) return false;
    committer.commit(*batch);
    return true;
  };
  double last_progress = 0;
  for (bool more = true; more;) {
    auto batch = std::make_unique<Batch>();
    Document d;
    while (batch->bytes < plan.batch_bytes && (more = stream.next(d))) {
      batch->bytes += static_cast<int64_t>(d.text.size());
      batch->documents.push_back({std::move(d), {}, 0, {}, {}});
    }
    while (queue.full()) commit_oldest();
    if (!batch->documents.empty()) queue.submit(std::move(batch));
    const double elapsed = seconds_since(start);
    if (elapsed - last_progress >= 5) {
      last_progress = elapsed;
      std::printf("%s %.1f MB read, %lld documents, %lld kept, %.1f MB/s\n", label.c_str(),
                  stream.bytes_read() / 1e6, (long long)committer.documents,
                  (long long)committer.kept, stream.bytes_read() / 1e6 / elapsed);
      std::fflush(stdout);
    }
  }
  while (commit_oldest()) {
  }
}

// What stats.json says of a finished preparation.
nlohmann::json preparation_stats(const DocumentStream& stream, Committer& committer,
                                 const PrepareConfig& c, const std::string& tokenizer_path,
                                 const Tokenizer& tokenizer, int64_t threads,
                                 const MemoryPlan& plan, int64_t baseline_rss_kib, double seconds) {
  nlohmann::json outputs;
  const nlohmann::json steps = committer.finish(outputs);
  const int64_t peak_rss_kib = proc_status_kib("VmHWM:");
  return {{"input",
           {{"files", stream.files_read()},
            {"bytes", stream.bytes_read()},
            {"documents", committer.documents},
            {"skipped_not_utf8", stream.skipped_not_utf8()},
            {"skipped_too_long", stream.skipped_too_long()},
            {"skipped_malformed", stream.skipped_malformed()}}},
          {"steps", steps},
          {"output", outputs},
          {"kept_documents", committer.kept},
          {"document_bytes",
           {{"before", committer.before.to_json()}, {"after", committer.after.to_json()}}},
          {"tokenizer",
           {{"path", tokenizer_path},
            {"vocab_size", tokenizer.vocab_size()},
            {"fingerprint", tokenizer_fingerprint(tokenizer)}}},
          {"threads", threads},
          {"seconds", seconds},
          {"mb_per_s", stream.bytes_read() / 1e6 / std::max(seconds, 1e-9)},
          {"memory",
           {{"bound_mib", c.memory_mb},
            {"baseline_rss_mib", baseline_rss_kib / 1024.0},
            {"peak_rss_mib", peak_rss_kib / 1024.0},
            {"peak_above_baseline_mib", (peak_rss_kib - baseline_rss_kib) / 1024.0},
            {"peak_index_mib", static_cast<double>(committer.peak_index_bytes) / kMiB},
            {"tokenizer_mib", static_cast<double>(plan.tokenizer_bytes) / kMiB},
            {"batch_bytes", plan.batch_bytes},
            {"batches_in_flight", plan.max_in_flight}}}};
}

}  // namespace

nlohmann::json prepare_data(const PrepareConfig& c, const std::string& output_dir,
                            const std::string& label) {
  const auto start = std::chrono::steady_clock::now();
  // The peak is this preparation's: "5" resets the process's high-water mark (Linux 4.0+), which
  // an earlier stage of the same run may have raised.
  std::ofstream("/proc/self/clear_refs") << "5";
  // Buffers of 256 KiB and more are mapped and unmapped by themselves (glibc would otherwise raise
  // the threshold after the first free and keep such buffers in its heaps).
  mallopt(M_MMAP_THRESHOLD, 256 << 10);
  const int64_t baseline_rss_kib = proc_status_kib("VmRSS:");
  const std::string tokenizer_path = tokenizer_file(c.tokenizer);
  const Tokenizer tokenizer(tokenizer_path);
  const int64_t threads =
      c.threads > 0 ? c.threads : std::max<int64_t>(1, std::thread::hardware_concurrency());
  const MemoryPlan plan =
      plan_memory(c, threads, (proc_status_kib("VmRSS:") - baseline_rss_kib) * 1024);

  // "out/" and "out" are one directory: the staging one goes beside it, never inside it.
  std::string out = output_dir;
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  const std::string staging = out + ".incomplete";
  remove_all(staging);
  make_directories(staging);
  nlohmann::json stats;
  try {
    DocumentStream stream(c.inputs, c.input);
    Committer committer(c, staging, tokenizer, plan.index_budget);
    run_pipeline(stream, committer, c, tokenizer, threads, plan, label, start);
    check(committer.kept > 0, "data prepare: no document is left after the steps (" +
                                  std::to_string(committer.documents) +
                                  " read); nothing was written");
    stats = preparation_stats(stream, committer, c, tokenizer_path, tokenizer, threads, plan,
                              baseline_rss_kib, seconds_since(start));
    write_file_atomic(staging + "/stats.json", stats.dump(2) + "\n");
    write_file_atomic(staging + "/prepare.json", prepare_config_values(c).dump(2) + "\n");
  } catch (...) {
    remove_all(staging);
    throw;
  }
  remove_all(out);
  std::filesystem::rename(staging, out);
  return stats;
}

}  // namespace tiller
