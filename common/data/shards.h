// Token shards: tokenised documents on disk (written by `tiller data prepare` through
// ShardWriter), read by pretraining through memory maps (TokenShards). Format: docs/data.md,
// "Token shards".
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/data/sft_data.h"

namespace tiller {

class Tokenizer;

// A prepared directory holds, per split ("train", "val"), SPLIT-00000.bin (tokens) with
// SPLIT-00000.idx (document offsets), SPLIT-00001.bin/.idx, ... Every number little-endian.
//
// .bin: 64-byte header, then token_count tokens of token_bytes each.
//   0  char[8] "TLRSHARD"   8 u32 version (1)   12 u32 token_bytes (2 or 4)
//   16 u64 token_count      24 u64 tokenizer_fingerprint   32 u64 vocab_size   40..63 zero
// .idx: 64-byte header, then document_count + 1 u64 token offsets into the .bin (first 0, last
//   token_count, non-decreasing): document d is tokens [offset[d], offset[d + 1]).
//   0  char[8] "TLRINDEX"   8 u32 version (1)   12 u32 reserved (0)
//   16 u64 document_count   24 u64 token_count (the .bin's)   32 u64 tokenizer_fingerprint
//   40..63 zero
// A document's tokens are what pretraining consumes: tokenizer.encode(text, add_bos=true).
constexpr int64_t kShardHeaderBytes = 64;
constexpr uint32_t kShardVersion = 1;

// XXH3-64 of the vocabulary: its size, every piece in id order (SentencePiece: with its score and
// kind, which decide how text is cut), and the BOS and EOS ids. The same vocabulary gives the
// same fingerprint whichever file it was loaded from.
uint64_t tokenizer_fingerprint(const Tokenizer& tokenizer);
// A fingerprint as errors print it: 16 hex digits.
std::string fingerprint_hex(uint64_t fingerprint);

// The narrowest token width for a vocabulary: 2 bytes when every id fits (vocab_size <= 65536),
// else 4.
uint32_t shard_token_bytes(int64_t vocab_size);

// "SPLIT-NNNNN" (five digits), the stem of a shard's .bin and .idx.
std::string shard_stem(const std::string& split, int64_t index);

// One shard as written or read: its file names (without the directory) and sizes.
struct ShardFile {
  std::string bin, idx;
  int64_t documents = 0, tokens = 0;
};

// The fields of a .bin's header.
struct ShardHeader {
  uint32_t version = 0, token_bytes = 0;
  uint64_t token_count = 0, fingerprint = 0, vocab_size = 0;
};

// Reads and checks the header of a .bin (magic, version, token width; not the file's size);
// throws tiller::Error naming the path. Cheap: for recipe checks.
ShardHeader read_shard_header(const std::string& bin_path);

// Whether DIR holds SPLIT-00000.bin (a split's first shard).
bool has_shard_split(const std::string& dir, const std::string& split);

// Writes one split's shards. Memory stays bounded whatever the data's size: tokens go out
// through a 1 MiB buffer, document offsets through a 64 KiB one straight into the .idx body (its
// header is filled in when the shard is closed). A shard ends at the first document boundary at
// which it holds max_shard_tokens or more. Every file is written as NAME.tmp and renamed only by
// finish(); a writer destroyed without finish() (an error on the way) removes its temporaries,
// so a directory never holds a half-written shard.
class ShardWriter {
 public:
  // token_bytes: 2 or 4 (shard_token_bytes(vocab_size)); creates dir if needed.
  ShardWriter(const std::string& dir, const std::string& split, uint32_t token_bytes,
              uint64_t fingerprint, int64_t vocab_size, int64_t max_shard_tokens);
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // Appends one document. Throws tiller::Error on an id outside [0, vocab_size) or one that does
  // not fit token_bytes (>= 2^16 with 2).
  void add_document(const std::vector<int64_t>& ids);
  // Closes the last shard, renames every shard into place (fsynced) and removes this split's
  // shards of an earlier run numbered beyond the new ones. No documents: no shard. Returns the
  // shards written, in order.
  std::vector<ShardFile> finish();

  int64_t documents() const { return total_documents_; }
  int64_t tokens() const { return total_tokens_; }

 private:
  class Output;
  void open_shard();
  void close_shard();

  std::string dir_, split_;
  uint32_t token_bytes_;
  uint64_t fingerprint_;
  int64_t vocab_size_, max_shard_tokens_;
  std::unique_ptr<Output> bin_, idx_;  // the open shard's files (null between shards)
  std::vector<ShardFile> written_;     // closed shards, still under .tmp names until finish()
  int64_t shard_documents_ = 0, shard_tokens_ = 0;
  int64_t total_documents_ = 0, total_tokens_ = 0;
  bool finished_ = false;
};

// A split's shards, memory-mapped read-only, as one stream of tokens and a list of documents.
// Opening checks every shard and index: magic, version, token width, sizes against the headers
// (a truncated file is named with its sizes), the index agreeing with its shard, offsets from 0,
// non-decreasing, ending at the shard's token count, and the tokenizer fingerprint; read() checks
// each token against the vocabulary as it converts it. Errors are one line naming the file.
class TokenShards {
 public:
  // Every DIR/SPLIT-NNNNN.bin with its .idx, numbered from 00000 without a gap; `fingerprint`
  // and `vocab_size` are the tokenizer's that will read them.
  TokenShards(const std::string& dir, const std::string& split, uint64_t fingerprint,
              int64_t vocab_size);
  TokenShards(const std::string& dir, const std::string& split, const Tokenizer& tokenizer);
  ~TokenShards();
  TokenShards(const TokenShards&) = delete;
  TokenShards& operator=(const TokenShards&) = delete;

  int64_t token_count() const { return token_count_; }
  int64_t document_count() const { return document_count_; }
  const std::vector<ShardFile>& shards() const { return files_; }
  const std::string& dir() const { return dir_; }

  // Tokens [begin, begin + count) of the split's stream (the shards one after another) into out.
  void read(int64_t begin, int64_t count, int64_t* out) const;
  // Document d's tokens as [begin, end) of the stream.
  std::pair<int64_t, int64_t> document_span(int64_t d) const;
  std::vector<int64_t> document(int64_t d) const;

 private:
  struct Mapped;
  size_t shard_of_token(int64_t position) const;
  size_t shard_of_document(int64_t d) const;

  std::string dir_;
  int64_t vocab_size_;
  std::vector<ShardFile> files_;
  std::vector<std::unique_ptr<Mapped>> mapped_;
  int64_t token_count_ = 0, document_count_ = 0;
};

// Pretraining examples cut from a split's stream exactly as load_text_examples cuts the text
// path's: chunk c is tokens [c * max_seq_len, (c + 1) * max_seq_len), every token trained but the
// first; the tail shorter than max_seq_len is left out. Read from the maps on demand.
class ShardChunks : public ExampleSource {
 public:
  ShardChunks(std::shared_ptr<const TokenShards> shards, int64_t max_seq_len);
  int64_t size() const override { return chunks_; }
  int64_t length(int64_t) const override { return max_seq_len_; }
  Example at(int64_t i) const override;
  const TokenShards& shards() const { return *shards_; }

 private:
  std::shared_ptr<const TokenShards> shards_;
  int64_t max_seq_len_, chunks_;
};

}  // namespace tiller
