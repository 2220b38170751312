// SFT and pretraining data: records in the layouts users bring, tokenized into examples whose
// trainable tokens carry the loss.
#pragma once
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/tokenizer/chat_template.h"

namespace tiller {

class Tokenizer;

// One training sequence: tokens[i] is a target (predicted from tokens[0..i)) when trainable[i].
struct Example {
  std::vector<int64_t> tokens;
  std::vector<uint8_t> trainable;
};

// Examples by index, what batching plans and builds batches from: held in memory (SFT, the text
// path of pretraining) or read on demand (the chunks of token shards, common/data/shards.h), so
// that a corpus larger than memory is never materialised. Implementations are read-only and
// const-safe.
class ExampleSource {
 public:
  virtual ~ExampleSource() = default;
  virtual int64_t size() const = 0;
  // Tokens in example i (what packing needs, without reading the example).
  virtual int64_t length(int64_t i) const = 0;
  virtual Example at(int64_t i) const = 0;
};

// Examples in a vector: a view of one the caller keeps alive, or one it hands over.
class InMemoryExamples : public ExampleSource {
 public:
  explicit InMemoryExamples(const std::vector<Example>& view) : examples_(&view) {}
  explicit InMemoryExamples(std::vector<Example>&& owned)
      : owned_(std::move(owned)), examples_(&owned_) {}
  InMemoryExamples(const InMemoryExamples&) = delete;
  InMemoryExamples& operator=(const InMemoryExamples&) = delete;

  int64_t size() const override { return static_cast<int64_t>(examples_->size()); }
  int64_t length(int64_t i) const override {
    return static_cast<int64_t>((*examples_)[static_cast<size_t>(i)].tokens.size());
  }
  Example at(int64_t i) const override { return (*examples_)[static_cast<size_t>(i)]; }
  const Example& ref(int64_t i) const { return (*examples_)[static_cast<size_t>(i)]; }

 private:
  std::vector<Example> owned_;
  const std::vector<Example>* examples_;
};

// Some examples of another source, by their indices there (a train/validation split).
class ExampleSubset : public ExampleSource {
 public:
  ExampleSubset(std::shared_ptr<const ExampleSource> base, std::vector<int64_t> indices)
      : base_(std::move(base)), indices_(std::move(indices)) {}
  int64_t size() const override { return static_cast<int64_t>(indices_.size()); }
  int64_t length(int64_t i) const override { return base_->length(index(i)); }
  Example at(int64_t i) const override { return base_->at(index(i)); }

 private:
  int64_t index(int64_t i) const { return indices_[static_cast<size_t>(i)]; }
  std::shared_ptr<const ExampleSource> base_;
  std::vector<int64_t> indices_;
};

// A JSON list of {"role","content"} messages (roles system, user, assistant); errors name
// `where` and `field`.
std::vector<Message> messages_from_json(const nlohmann::json& list, const std::string& where,
                                        const std::string& field);

// A record in one of the SFT layouts as a conversation. format: "messages"
// ({"messages":[{"role","content"}]}), "prompt_completion" ({"prompt","completion"}, each a string
// or a message list), "alpaca" ({"instruction","input","output"}). Throws tiller::Error naming
// `where` on a missing field, a wrong type or a conversation with no assistant turn.
std::vector<Message> conversation_from_record(const nlohmann::json& record,
                                              const std::string& format,
                                              const std::string& template_name,
                                              const std::string& where);

struct SftDataOptions {
  std::string path;
  std::string format = "messages";
  std::string template_name = "chatml";
  int64_t max_seq_len = 512;
  bool train_on_prompt = false;
  bool skip_bad_lines = false;
  int64_t max_records = -1;
};

struct DataStats {
  int64_t records = 0;    // records read
  int64_t skipped = 0;    // malformed records skipped (skip_bad_lines)
  int64_t truncated = 0;  // examples cut to max_seq_len (prompt first, then the response tail)
  int64_t dropped = 0;    // examples with nothing left to train on
  int64_t tokens = 0;     // tokens in the examples kept
};

// Reads, templates, tokenizes and truncates an SFT file.
std::vector<Example> load_sft_examples(const SftDataOptions& options, const Tokenizer& tokenizer,
                                       DataStats* stats);

// Truncates to max_len keeping the response: prompt tokens after BOS go first, then the tail,
// except a trained EOS at the very end, which stays the last token. Returns true when cut.
bool truncate_keeping_response(Example& example, int64_t max_len, int64_t eos_id);

// The documents of a pretraining text file: its non-empty lines, or the "text" of each JSONL
// record (a record without one is an error naming file:line unless skip_bad_lines).
std::vector<std::string> read_text_documents(const std::string& path, bool skip_bad_lines,
                                             DataStats* stats);

// The documents each encoded with BOS, back to back: pretraining's token stream. With
// max_tokens > 0, encoding stops once the stream holds at least that many.
std::vector<int64_t> bos_token_stream(const std::vector<std::string>& documents,
                                      const Tokenizer& tokenizer, int64_t max_tokens = 0);

// Pretraining: documents (non-empty lines of a text file, or {"text"} JSONL records) each
// prefixed with BOS, concatenated, and cut into examples of max_seq_len tokens, all trainable.
std::vector<Example> load_text_examples(const std::string& path, const Tokenizer& tokenizer,
                                        int64_t max_seq_len, bool skip_bad_lines, DataStats* stats);

}  // namespace tiller
