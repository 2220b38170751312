#include "common/data/shards.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>

#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "common/util/files.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "token shards are little-endian; this reader maps them as they are"
#endif

namespace tiller {

namespace {

constexpr char kShardMagic[8] = {'T', 'L', 'R', 'S', 'H', 'A', 'R', 'D'};
constexpr char kIndexMagic[8] = {'T', 'L', 'R', 'I', 'N', 'D', 'E', 'X'};

std::string errno_text() {
  return std::strerror(errno);
}

template <typename T>
void put(unsigned char* header, size_t at, T value) {
  std::memcpy(header + at, &value, sizeof(T));
}

template <typename T>
T get(const unsigned char* header, size_t at) {
  T value;
  std::memcpy(&value, header + at, sizeof(T));
  return value;
}

void hash_u64(XXH3_state_t* state, uint64_t value) {
  XXH3_64bits_update(state, &value, 8);
}

}  // namespace

std::string fingerprint_hex(uint64_t fingerprint) {
  char text[32];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(fingerprint));
  return text;
}

uint64_t tokenizer_fingerprint(const Tokenizer& tokenizer) {
  XXH3_state_t* state = XXH3_createState();
  check(state != nullptr, "tokenizer_fingerprint: out of memory");
  XXH3_64bits_reset(state);
  const int64_t n = tokenizer.vocab_size();
  hash_u64(state, static_cast<uint64_t>(n));
  for (int64_t id = 0; id < n; ++id) {
    std::string piece;
    try {
      piece = tokenizer.piece(id);
    } catch (const Error&) {
      piece.clear();  // an id without a piece (a tokenizer.json's gap) hashes as empty
    }
    hash_u64(state, piece.size());
    XXH3_64bits_update(state, piece.data(), piece.size());
    if (tokenizer.is_sentencepiece()) {
      const Tokenizer::PieceEntry entry = tokenizer.sentencepiece_entry(id);
      XXH3_64bits_update(state, &entry.score, sizeof(entry.score));
      XXH3_64bits_update(state, &entry.kind, sizeof(entry.kind));
    }
  }
  hash_u64(state, static_cast<uint64_t>(tokenizer.bos_id()));
  hash_u64(state, static_cast<uint64_t>(tokenizer.eos_id()));
  const uint64_t digest = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return digest;
}

uint32_t shard_token_bytes(int64_t vocab_size) {
  return vocab_size <= 65536 ? 2 : 4;
}

std::string shard_stem(const std::string& split, int64_t index) {
  char number[16];
  std::snprintf(number, sizeof(number), "%05lld", static_cast<long long>(index));
  return split + "-" + number;
}

bool has_shard_split(const std::string& dir, const std::string& split) {
  return path_exists(dir + "/" + shard_stem(split, 0) + ".bin");
}

namespace {

ShardHeader parse_shard_header(const unsigned char* h, const std::string& path) {
  check(std::memcmp(h, kShardMagic, 8) == 0,
        path + " is not a token shard (its first bytes are not \"TLRSHARD\")");
  ShardHeader header;
  header.version = get<uint32_t>(h, 8);
  header.token_bytes = get<uint32_t>(h, 12);
  header.token_count = get<uint64_t>(h, 16);
  header.fingerprint = get<uint64_t>(h, 24);
  header.vocab_size = get<uint64_t>(h, 32);
  check(header.version == kShardVersion,
        path + ": shard version " + std::to_string(header.version) + ", this build reads version " +
            std::to_string(kShardVersion));
  check(header.token_bytes == 2 || header.token_bytes == 4,
        path + ": token_bytes " + std::to_string(header.token_bytes) + " (expected 2 or 4)");
  return header;
}

}  // namespace

ShardHeader read_shard_header(const std::string& bin_path) {
  unsigned char h[kShardHeaderBytes];
  FILE* file = std::fopen(bin_path.c_str(), "rb");
  check(file != nullptr, "cannot open " + bin_path + ": " + errno_text());
  const size_t got = std::fread(h, 1, sizeof(h), file);
  std::fclose(file);
  check(got == sizeof(h),
        bin_path + ": " + std::to_string(got) + " bytes, shorter than the 64-byte shard header");
  return parse_shard_header(h, bin_path);
}

// ---------------------------------------------------------------------------------------------
// Writing

// A file written through a fixed buffer under its .tmp name; the header (the first 64 bytes,
// reserved as zeros when opened) is written in place when the contents are known.
class ShardWriter::Output {
 public:
  Output(const std::string& path, size_t buffer_bytes) : tmp_(path + ".tmp") {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    check(fd_ >= 0, "cannot create " + tmp_ + ": " + errno_text());
    buffer_.reserve(buffer_bytes);
    const unsigned char zeros[kShardHeaderBytes] = {};
    write(zeros, sizeof(zeros));
  }
  ~Output() {
    if (fd_ >= 0) ::close(fd_);
  }

  void write(const void* data, size_t size) {
    const auto* bytes = static_cast<const unsigned char*>(data);
    if (buffer_.size() + size > buffer_.capacity()) flush();
    if (size >= buffer_.capacity()) {
      write_all(bytes, size);
      return;
    }
    buffer_.insert(buffer_.end(), bytes, bytes + size);
  }

  // Writes the header, fsyncs and closes; the file stays under its .tmp name.
  void close_with_header(const unsigned char* header) {
    flush();
    check(::pwrite(fd_, header, kShardHeaderBytes, 0) == kShardHeaderBytes,
          "cannot write " + tmp_ + ": " + errno_text());
    check(::fsync(fd_) == 0, "cannot fsync " + tmp_ + ": " + errno_text());
    check(::close(fd_) == 0, "cannot close " + tmp_ + ": " + errno_text());
    fd_ = -1;
  }

 private:
  void flush() {
    write_all(buffer_.data(), buffer_.size());
    buffer_.clear();
  }
  void write_all(const unsigned char* data, size_t size) {
    while (size > 0) {
      const ssize_t n = ::write(fd_, data, size);
      if (n < 0 && errno == EINTR) continue;
      check(n > 0, "cannot write " + tmp_ + ": " + errno_text());
      data += n;
      size -= static_cast<size_t>(n);
    }
  }

  std::string tmp_;
  int fd_ = -1;
  std::vector<unsigned char> buffer_;
};

ShardWriter::ShardWriter(const std::string& dir, const std::string& split, uint32_t token_bytes,
                         uint64_t fingerprint, int64_t vocab_size, int64_t max_shard_tokens)
    : dir_(dir),
      split_(split),
      token_bytes_(token_bytes),
      fingerprint_(fingerprint),
      vocab_size_(vocab_size),
      max_shard_tokens_(max_shard_tokens) {
  check(token_bytes == 2 || token_bytes == 4,
        "ShardWriter: token_bytes " + std::to_string(token_bytes) + " (expected 2 or 4)");
  check(vocab_size > 0, "ShardWriter: vocab_size must be positive");
  check(max_shard_tokens > 0, "ShardWriter: max_shard_tokens must be positive");
  check(!split.empty() && split.find('/') == std::string::npos,
        "ShardWriter: bad split name '" + split + "'");
  make_directories(dir);
}

ShardWriter::~ShardWriter() {
  if (finished_) return;
  // Abandoned (an error on the way): no temporary stays behind.
  bin_.reset();
  idx_.reset();
  std::error_code ignored;
  for (const ShardFile& f : written_) {
    std::filesystem::remove(dir_ + "/" + f.bin + ".tmp", ignored);
    std::filesystem::remove(dir_ + "/" + f.idx + ".tmp", ignored);
  }
}

void ShardWriter::open_shard() {
  const std::string stem = shard_stem(split_, static_cast<int64_t>(written_.size()));
  ShardFile file;
  file.bin = stem + ".bin";
  file.idx = stem + ".idx";
  written_.push_back(file);  // listed first, so that an abandoned writer removes it
  bin_ = std::make_unique<Output>(dir_ + "/" + file.bin, size_t{1} << 20);
  idx_ = std::make_unique<Output>(dir_ + "/" + file.idx, size_t{64} << 10);
  const uint64_t zero = 0;
  idx_->write(&zero, 8);  // the first document starts at 0
  shard_documents_ = 0;
  shard_tokens_ = 0;
}

void ShardWriter::close_shard() {
  unsigned char header[kShardHeaderBytes] = {};
  std::memcpy(header, kShardMagic, 8);
  put<uint32_t>(header, 8, kShardVersion);
  put<uint32_t>(header, 12, token_bytes_);
  put<uint64_t>(header, 16, static_cast<uint64_t>(shard_tokens_));
  put<uint64_t>(header, 24, fingerprint_);
  put<uint64_t>(header, 32, static_cast<uint64_t>(vocab_size_));
  bin_->close_with_header(header);

  unsigned char index[kShardHeaderBytes] = {};
  std::memcpy(index, kIndexMagic, 8);
  put<uint32_t>(index, 8, kShardVersion);
  put<uint64_t>(index, 16, static_cast<uint64_t>(shard_documents_));
  put<uint64_t>(index, 24, static_cast<uint64_t>(shard_tokens_));
  put<uint64_t>(index, 32, fingerprint_);
  idx_->close_with_header(index);

  written_.back().documents = shard_documents_;
  written_.back().tokens = shard_tokens_;
  bin_.reset();
  idx_.reset();
}

void ShardWriter::add_document(const std::vector<int64_t>& ids) {
  check(!finished_, "ShardWriter: add_document after finish");
  if (!bin_) open_shard();
  const int64_t limit = token_bytes_ == 2 ? std::min<int64_t>(vocab_size_, 65536) : vocab_size_;
  // Converted in pieces of 4096 tokens: no copy of a long document is held.
  unsigned char narrow[4096 * 4];
  for (size_t start = 0; start < ids.size(); start += 4096) {
    const size_t n = std::min<size_t>(4096, ids.size() - start);
    for (size_t i = 0; i < n; ++i) {
      const int64_t id = ids[start + i];
      if (id < 0 || id >= limit)
        throw Error("ShardWriter " + dir_ + "/" + written_.back().bin + ": token id " +
                    std::to_string(id) +
                    (id >= 65536 && token_bytes_ == 2
                         ? " does not fit 2-byte tokens (ids below 65536)"
                         : " is outside the vocabulary of " + std::to_string(vocab_size_)));
      if (token_bytes_ == 2)
        put<uint16_t>(narrow, i * 2, static_cast<uint16_t>(id));
      else
        put<uint32_t>(narrow, i * 4, static_cast<uint32_t>(id));
    }
    bin_->write(narrow, n * token_bytes_);
  }
  shard_tokens_ += static_cast<int64_t>(ids.size());
  shard_documents_ += 1;
  total_tokens_ += static_cast<int64_t>(ids.size());
  total_documents_ += 1;
  const uint64_t end = static_cast<uint64_t>(shard_tokens_);
  idx_->write(&end, 8);
  if (shard_tokens_ >= max_shard_tokens_) close_shard();
}

std::vector<ShardFile> ShardWriter::finish() {
  check(!finished_, "ShardWriter: finish called twice");
  if (bin_) close_shard();
  for (const ShardFile& f : written_)
    for (const std::string& name : {f.idx, f.bin}) {
      const std::string path = dir_ + "/" + name;
      check(std::rename((path + ".tmp").c_str(), path.c_str()) == 0,
            "cannot rename " + path + ".tmp to " + path + ": " + errno_text());
    }
  finished_ = true;
  // A previous run's shards beyond the new ones would otherwise be read as part of this split.
  for (int64_t i = static_cast<int64_t>(written_.size());; ++i) {
    const std::string stem = dir_ + "/" + shard_stem(split_, i);
    if (!path_exists(stem + ".bin") && !path_exists(stem + ".idx")) break;
    std::remove((stem + ".bin").c_str());
    std::remove((stem + ".idx").c_str());
  }
  fsync_directory(dir_);
  return written_;
}

// ---------------------------------------------------------------------------------------------
// Reading

// A file mapped read-only (MAP_PRIVATE), unmapped when destroyed.
struct MappedFile {
  const unsigned char* data = nullptr;
  size_t size = 0;

  MappedFile() = default;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() {
    if (data != nullptr) ::munmap(const_cast<unsigned char*>(data), size);
  }

  // Maps `path`, which must hold at least a 64-byte header.
  void open(const std::string& path, const std::string& what) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    check(fd >= 0, "cannot open " + path + ": " + errno_text());
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      const std::string reason = errno_text();
      ::close(fd);
      throw Error("cannot stat " + path + ": " + reason);
    }
    size = static_cast<size_t>(st.st_size);
    if (size < static_cast<size_t>(kShardHeaderBytes)) {
      ::close(fd);
      throw Error(path + " is truncated: " + std::to_string(size) + " bytes, shorter than the " +
                  std::to_string(kShardHeaderBytes) + "-byte " + what + " header");
    }
    void* mapped = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    const std::string reason = errno_text();
    ::close(fd);
    check(mapped != MAP_FAILED, "cannot map " + path + ": " + reason);
    data = static_cast<const unsigned char*>(mapped);
  }
};

struct TokenShards::Mapped {
  MappedFile bin, idx;
  std::string bin_path;
  uint32_t token_bytes = 2;
  int64_t tokens = 0, documents = 0;
  int64_t first_token = 0, first_document = 0;  // where this shard starts in the split
  const unsigned char* token_data() const { return bin.data + kShardHeaderBytes; }
  uint64_t offset(int64_t d) const {
    return get<uint64_t>(idx.data, static_cast<size_t>(kShardHeaderBytes + 8 * d));
  }
};

namespace {

// How many shards DIR holds of a split: its SPLIT-NNNNN.bin and .idx files, which must run from
// 00000 without a gap.
int64_t count_shards(const std::string& dir, const std::string& split) {
  check(is_directory(dir), "token shards: " + dir + " is not a directory");
  std::set<int64_t> numbers;
  const std::string prefix = split + "-";
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.size() != prefix.size() + 9 || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string digits = name.substr(prefix.size(), 5);
    const std::string ext = name.substr(prefix.size() + 5);
    if ((ext != ".bin" && ext != ".idx") ||
        digits.find_first_not_of("0123456789") != std::string::npos)
      continue;
    numbers.insert(std::stoll(digits));
  }
  check(!numbers.empty(), dir + " has no " + shard_stem(split, 0) +
                              ".bin (a directory of token shards, as tiller data prepare "
                              "writes)");
  const int64_t count = *numbers.rbegin() + 1;
  for (int64_t n = 0; n < count; ++n)
    for (const char* ext : {".bin", ".idx"})
      check(path_exists(dir + "/" + shard_stem(split, n) + ext),
            dir + "/" + shard_stem(split, n) + ext + " is missing (the split's files run to " +
                shard_stem(split, count - 1) + ")");
  return count;
}

}  // namespace

TokenShards::TokenShards(const std::string& dir, const std::string& split, const Tokenizer& tok)
    : TokenShards(dir, split, tokenizer_fingerprint(tok), tok.vocab_size()) {}

TokenShards::TokenShards(const std::string& dir, const std::string& split, uint64_t fingerprint,
                         int64_t vocab_size)
    : dir_(dir), vocab_size_(vocab_size) {
  const int64_t count = count_shards(dir, split);
  for (int64_t n = 0; n < count; ++n) {
    auto m = std::make_unique<Mapped>();
    ShardFile file{shard_stem(split, n) + ".bin", shard_stem(split, n) + ".idx", 0, 0};
    const std::string bin_path = dir + "/" + file.bin, idx_path = dir + "/" + file.idx;
    m->bin_path = bin_path;

    m->bin.open(bin_path, "shard");
    const ShardHeader header = parse_shard_header(m->bin.data, bin_path);
    check(header.fingerprint == fingerprint,
          bin_path + " was made with another tokenizer (fingerprint " +
              fingerprint_hex(header.fingerprint) + ", this tokenizer's " +
              fingerprint_hex(fingerprint) + ")");
    check(header.vocab_size <= static_cast<uint64_t>(vocab_size),
          bin_path + ": made for a vocabulary of " + std::to_string(header.vocab_size) +
              ", this tokenizer has " + std::to_string(vocab_size));
    // A forged count must not wrap the size it implies around 2^64.
    check(header.token_count <= (uint64_t{1} << 56),
          bin_path + ": implausible token_count " + std::to_string(header.token_count));
    const uint64_t want_bin = kShardHeaderBytes + header.token_count * header.token_bytes;
    check(m->bin.size == want_bin,
          bin_path + " is " + (m->bin.size < want_bin ? "truncated" : "longer than its header") +
              ": " + std::to_string(m->bin.size) + " bytes, its header's " +
              std::to_string(header.token_count) + " tokens of " +
              std::to_string(header.token_bytes) + " bytes need " + std::to_string(want_bin));
    m->token_bytes = header.token_bytes;
    m->tokens = static_cast<int64_t>(header.token_count);

    m->idx.open(idx_path, "index");
    const unsigned char* h = m->idx.data;
    check(std::memcmp(h, kIndexMagic, 8) == 0,
          idx_path + " is not a shard index (its first bytes are not \"TLRINDEX\")");
    const uint32_t version = get<uint32_t>(h, 8);
    check(version == kShardVersion, idx_path + ": index version " + std::to_string(version) +
                                        ", this build reads version " +
                                        std::to_string(kShardVersion));
    const uint64_t documents = get<uint64_t>(h, 16);
    const uint64_t index_tokens = get<uint64_t>(h, 24);
    check(index_tokens == header.token_count,
          idx_path + " indexes " + std::to_string(index_tokens) + " tokens, but " + file.bin +
              " holds " + std::to_string(header.token_count) + " (not its index)");
    check(get<uint64_t>(h, 32) == header.fingerprint,
          idx_path + ": its tokenizer fingerprint " + fingerprint_hex(get<uint64_t>(h, 32)) +
              " differs from " + file.bin + "'s " + fingerprint_hex(header.fingerprint));
    check(documents < (uint64_t{1} << 56),
          idx_path + ": implausible document_count " + std::to_string(documents));
    const uint64_t want_idx = kShardHeaderBytes + (documents + 1) * 8;
    check(m->idx.size == want_idx,
          idx_path + " is " + (m->idx.size < want_idx ? "truncated" : "longer than its header") +
              ": " + std::to_string(m->idx.size) + " bytes, its header's " +
              std::to_string(documents) + " documents need " + std::to_string(want_idx));
    m->documents = static_cast<int64_t>(documents);
    // One pass over the offsets: from 0, non-decreasing, ending at the token count.
    check(m->offset(0) == 0,
          idx_path + ": the first document starts at " + std::to_string(m->offset(0)) + ", not 0");
    for (int64_t d = 0; d < m->documents; ++d)
      check(m->offset(d + 1) >= m->offset(d), idx_path + ": document " + std::to_string(d) +
                                                  " ends at " + std::to_string(m->offset(d + 1)) +
                                                  ", before it starts (" +
                                                  std::to_string(m->offset(d)) + ")");
    check(m->offset(m->documents) == header.token_count,
          idx_path + ": the last document ends at " + std::to_string(m->offset(m->documents)) +
              ", not at the shard's " + std::to_string(header.token_count) + " tokens");

    m->first_token = token_count_;
    m->first_document = document_count_;
    token_count_ += m->tokens;
    document_count_ += m->documents;
    file.documents = m->documents;
    file.tokens = m->tokens;
    files_.push_back(file);
    mapped_.push_back(std::move(m));
  }
}

TokenShards::~TokenShards() = default;

size_t TokenShards::shard_of_token(int64_t position) const {
  // The last shard starting at or before `position` (empty shards skipped by the search).
  auto it = std::upper_bound(
      mapped_.begin(), mapped_.end(), position,
      [](int64_t p, const std::unique_ptr<Mapped>& m) { return p < m->first_token; });
  return static_cast<size_t>(it - mapped_.begin()) - 1;
}

size_t TokenShards::shard_of_document(int64_t d) const {
  auto it = std::upper_bound(
      mapped_.begin(), mapped_.end(), d,
      [](int64_t x, const std::unique_ptr<Mapped>& m) { return x < m->first_document; });
  return static_cast<size_t>(it - mapped_.begin()) - 1;
}

void TokenShards::read(int64_t begin, int64_t count, int64_t* out) const {
  check(begin >= 0 && count >= 0 && begin + count <= token_count_,
        dir_ + ": tokens [" + std::to_string(begin) + ", " + std::to_string(begin + count) +
            ") are outside the split's " + std::to_string(token_count_));
  while (count > 0) {
    const Mapped& m = *mapped_[shard_of_token(begin)];
    const int64_t local = begin - m.first_token;
    const int64_t n = std::min(count, m.tokens - local);
    const unsigned char* data = m.token_data();
    for (int64_t i = 0; i < n; ++i) {
      const size_t at = static_cast<size_t>(local + i) * m.token_bytes;
      const int64_t id = m.token_bytes == 2 ? get<uint16_t>(data, at) : get<uint32_t>(data, at);
      if (id >= vocab_size_)
        throw Error(m.bin_path + ": token " + std::to_string(local + i) + " is id " +
                    std::to_string(id) + ", outside the tokenizer's vocabulary of " +
                    std::to_string(vocab_size_));
      out[i] = id;
    }
    out += n;
    begin += n;
    count -= n;
  }
}

std::pair<int64_t, int64_t> TokenShards::document_span(int64_t d) const {
  check(d >= 0 && d < document_count_, dir_ + ": document " + std::to_string(d) +
                                           " is outside the split's " +
                                           std::to_string(document_count_));
  const Mapped& m = *mapped_[shard_of_document(d)];
  const int64_t local = d - m.first_document;
  return {m.first_token + static_cast<int64_t>(m.offset(local)),
          m.first_token + static_cast<int64_t>(m.offset(local + 1))};
}

std::vector<int64_t> TokenShards::document(int64_t d) const {
  const auto [begin, end] = document_span(d);
  std::vector<int64_t> ids(static_cast<size_t>(end - begin));
  read(begin, end - begin, ids.data());
  return ids;
}

// ---------------------------------------------------------------------------------------------
// Pretraining chunks

ShardChunks::ShardChunks(std::shared_ptr<const TokenShards> shards, int64_t max_seq_len)
    : shards_(std::move(shards)), max_seq_len_(max_seq_len) {
  check(max_seq_len >= 2, "max_seq_len must be at least 2");
  chunks_ = shards_->token_count() / max_seq_len;
}

Example ShardChunks::at(int64_t i) const {
  check(i >= 0 && i < chunks_, shards_->dir() + ": chunk " + std::to_string(i) +
                                   " is outside the " + std::to_string(chunks_) + " chunks");
  Example e;
  e.tokens.resize(static_cast<size_t>(max_seq_len_));
  shards_->read(i * max_seq_len_, max_seq_len_, e.tokens.data());
  e.trainable.assign(static_cast<size_t>(max_seq_len_), 1);
  e.trainable[0] = 0;
  return e;
}

}  // namespace tiller
