#include "prepare/inputs.h"

#include <glob.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

namespace {

bool has_wildcard(const std::string& path) {
  return path.find_first_of("*?[") != std::string::npos;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The name without a compression suffix.
std::string uncompressed_name(const std::string& file) {
  for (const char* suffix : {".gz", ".zst"})
    if (ends_with(file, suffix)) return file.substr(0, file.size() - std::strlen(suffix));
  return file;
}

// The offset of the first byte that breaks UTF-8 (overlong forms and surrogates included), or
// npos when the text is valid.
size_t first_invalid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // Eight ASCII bytes at a time: most text is.
    if (i + 8 <= n) {
      uint64_t word;
      std::memcpy(&word, p + i, 8);
      if ((word & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t length;
    uint32_t low = 0x80, high = 0xBF;  // the allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      length = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      length = 3;
      if (c == 0xE0) low = 0xA0;   // overlong
      if (c == 0xED) high = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      length = 4;
      if (c == 0xF0) low = 0x90;   // overlong
      if (c == 0xF4) high = 0x8F;  // above U+10FFFF
    } else {
      return i;
    }
    if (i + length > n) return i;
    if (p[i + 1] < low || p[i + 1] > high) return i;
    for (size_t k = 2; k < length; ++k)
      if ((p[i + k] & 0xC0) != 0x80) return i;
    i += length;
  }
  return std::string::npos;
}

// Decompressed bytes of one file, in pieces.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Up to `capacity` bytes into `buffer`; 0 at the end. Throws on unreadable or corrupt input.
  virtual size_t read(char* buffer, size_t capacity) = 0;
};

class PlainSource : public ByteSource {
 public:
  explicit PlainSource(const std::string& path) : path_(path), f_(std::fopen(path.c_str(), "rb")) {
    check(f_ != nullptr, path + ": cannot open: " + std::strerror(errno));
  }
  ~PlainSource() override { std::fclose(f_); }
  size_t read(char* buffer, size_t capacity) override {
    const size_t got = std::fread(buffer, 1, capacity, f_);
    check(got > 0 || !std::ferror(f_), path_ + ": read error");
    return got;
  }

 private:
  std::string path_;
  FILE* f_;
};

class GzipSource : public ByteSource {
 public:
  explicit GzipSource(const std::string& path) : path_(path), f_(gzopen(path.c_str(), "rb")) {
    check(f_ != nullptr, path + ": cannot open");
    gzbuffer(f_, 1 << 17);
  }
  ~GzipSource() override { gzclose(f_); }
  size_t read(char* buffer, size_t capacity) override {
    const int got = gzread(f_, buffer, static_cast<unsigned>(std::min<size_t>(capacity, 1 << 30)));
    if (got < 0) {
      int code = 0;
      const char* message = gzerror(f_, &code);
      throw Error(path_ + ": not a readable gzip file (" + std::string(message) + ")");
    }
    // zlib reads a file without a gzip header as it is: a .gz name promises gzip.
    check(!gzdirect(f_), path_ + ": not a readable gzip file (no gzip header)");
    return static_cast<size_t>(got);
  }

 private:
  std::string path_;
  gzFile f_;
};

class ZstdSource : public ByteSource {
 public:
  explicit ZstdSource(const std::string& path)
      : path_(path), f_(std::fopen(path.c_str(), "rb")), context_(ZSTD_createDCtx()) {
    check(f_ != nullptr, path + ": cannot open: " + std::strerror(errno));
    compressed_.resize(ZSTD_DStreamInSize());
  }
  ~ZstdSource() override {
    ZSTD_freeDCtx(context_);
    std::fclose(f_);
  }
  size_t read(char* buffer, size_t capacity) override {
    ZSTD_outBuffer out{buffer, capacity, 0};
    while (out.pos == 0) {
      if (in_.pos == in_.size) {
        const size_t got = std::fread(compressed_.data(), 1, compressed_.size(), f_);
        check(got > 0 || !std::ferror(f_), path_ + ": read error");
        if (got == 0) {
          check(last_result_ == 0,
                path_ + ": a zstd file cut short (its last frame is incomplete)");
          return 0;
        }
        in_ = {compressed_.data(), got, 0};
      }
      last_result_ = ZSTD_decompressStream(context_, &out, &in_);
      check(!ZSTD_isError(last_result_), path_ + ": not a readable zstd file (" +
                                             std::string(ZSTD_getErrorName(last_result_)) + ")");
    }
    return out.pos;
  }

 private:
  std::string path_;
  FILE* f_;
  ZSTD_DCtx* context_;
  std::vector<char> compressed_;
  ZSTD_inBuffer in_{nullptr, 0, 0};
  size_t last_result_ = 0;
};

std::unique_ptr<ByteSource> open_source(const std::string& path) {
  if (ends_with(path, ".gz")) return std::make_unique<GzipSource>(path);
  if (ends_with(path, ".zst")) return std::make_unique<ZstdSource>(path);
  return std::make_unique<PlainSource>(path);
}

bool is_blank(const std::string& line) {
  return line.find_first_not_of(" \t\r") == std::string::npos;
}

}  // namespace

// One open input file: its lines, read through a fixed buffer. A line longer than the limit is
// consumed without being kept, so an endless line costs no memory.
class DocumentStream::File {
 public:
  File(std::string path, std::string format, const InputSpec& spec)
      : path(std::move(path)),
        format(std::move(format)),
        spec(spec),
        source_(open_source(this->path)) {
    buffer_.resize(1 << 20);
  }

  enum class Line { kLine, kTooLong, kEnd };

  // The next line without its '\n' into `line` (cleared first); kTooLong when it ran past
  // `limit` bytes (its content is then dropped).
  Line read_line(std::string& line, size_t limit) {
    line.clear();
    bool too_long = false;
    bool any = false;
    for (;;) {
      if (position_ == size_) {
        size_ = source_->read(buffer_.data(), buffer_.size());
        position_ = 0;
        bytes += static_cast<int64_t>(size_);
        if (size_ == 0) {
          if (!any) return Line::kEnd;
          ++line_number;
          return too_long ? Line::kTooLong : Line::kLine;
        }
      }
      any = true;
      const char* start = buffer_.data() + position_;
      const size_t available = size_ - position_;
      const void* newline = std::memchr(start, '\n', available);
      const size_t take =
          newline ? static_cast<size_t>(static_cast<const char*>(newline) - start) : available;
      if (!too_long) {
        if (line.size() + take > limit) {
          too_long = true;
          line.clear();
          line.shrink_to_fit();
        } else {
          line.append(start, take);
        }
      }
      position_ += take;
      if (newline) {
        ++position_;
        ++line_number;
        return too_long ? Line::kTooLong : Line::kLine;
      }
    }
  }

  const std::string path;
  const std::string format;
  const InputSpec& spec;
  int64_t line_number = 0;
  int64_t bytes = 0;

 private:
  std::unique_ptr<ByteSource> source_;
  std::vector<char> buffer_;
  size_t position_ = 0, size_ = 0;
};

std::vector<InputSpec> read_input_specs(const nlohmann::json& inputs, const std::string& path,
                                        ConfigErrors& errors) {
  std::vector<InputSpec> specs;
  const nlohmann::json list = inputs.is_array() ? inputs : nlohmann::json::array({inputs});
  if (inputs.is_null() || (inputs.is_array() && inputs.empty())) {
    errors.add(path, "give the input files: a path, a directory, a glob, or a list of them");
    return specs;
  }
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string where = inputs.is_array() ? path + "[" + std::to_string(i) + "]" : path;
    InputSpec spec;
    if (list[i].is_string()) {
      spec.path = list[i].get<std::string>();
    } else if (list[i].is_object()) {
      ConfigReader r(list[i], where, errors);
      spec.path = r.required_string("path");
      spec.format = r.string("format", "");
      spec.field = r.string("field", "text");
      spec.documents = r.string("documents", "lines");
      if (r.has("format")) r.one_of("format", spec.format, {"text", "jsonl"});
      r.one_of("documents", spec.documents, {"lines", "paragraphs", "file"});
      r.require(!spec.field.empty(), "field", "must name a JSONL field");
    } else {
      errors.add(where, "expected a path or an object {\"path\": ...}");
      continue;
    }
    if (!spec.path.empty() && !has_wildcard(spec.path) && !path_exists(spec.path))
      errors.add(where, spec.path + " does not exist");
    specs.push_back(spec);
  }
  return specs;
}

nlohmann::json input_specs_values(const std::vector<InputSpec>& specs) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& s : specs) {
    nlohmann::json spec = {{"path", s.path}, {"field", s.field}, {"documents", s.documents}};
    if (!s.format.empty()) spec["format"] = s.format;  // absent: each file by its extension
    out.push_back(spec);
  }
  return out;
}

std::vector<std::string> expand_input(const InputSpec& spec) {
  std::vector<std::string> matched;
  if (has_wildcard(spec.path)) {
    glob_t found{};
    const int status = glob(spec.path.c_str(), 0, nullptr, &found);
    if (status == 0)
      for (size_t i = 0; i < found.gl_pathc; ++i) matched.emplace_back(found.gl_pathv[i]);
    globfree(&found);
  } else {
    matched.push_back(spec.path);
  }
  std::vector<std::string> files;
  for (const auto& path : matched) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) {
      for (const auto& entry : std::filesystem::recursive_directory_iterator(path, ec))
        if (entry.is_regular_file()) files.push_back(entry.path().string());
    } else if (std::filesystem::is_regular_file(path, ec)) {
      files.push_back(path);
    }
  }
  std::sort(files.begin(), files.end());
  files.erase(std::unique(files.begin(), files.end()), files.end());
  check(!files.empty(), "input " + spec.path + " names no file");
  return files;
}

std::string input_format(const InputSpec& spec, const std::string& file) {
  if (!spec.format.empty()) return spec.format;
  const std::string name = uncompressed_name(file);
  return ends_with(name, ".jsonl") || ends_with(name, ".json") ? "jsonl" : "text";
}

DocumentStream::DocumentStream(std::vector<InputSpec> specs, InputOptions options)
    : specs_(std::move(specs)), options_(std::move(options)) {}

DocumentStream::~DocumentStream() = default;

bool DocumentStream::open_next_file() {
  while (spec_ < specs_.size()) {
    if (file_ == 0 && files_.empty()) files_ = expand_input(specs_[spec_]);
    if (file_ < files_.size()) {
      const std::string& path = files_[file_++];
      open_ = std::make_unique<File>(path, input_format(specs_[spec_], path), specs_[spec_]);
      documents_in_file_ = 0;
      ++files_read_;
      return true;
    }
    ++spec_;
    file_ = 0;
    files_.clear();
  }
  return false;
}

bool DocumentStream::next(Document& document) {
  for (;;) {
    if (!open_ && !open_next_file()) return false;
    if (next_in_file(document)) {
      ++documents_in_file_;
      return true;
    }
    bytes_read_ += open_->bytes;
    if (documents_in_file_ == 0)
      check(options_.bad_documents == "skip",
            open_->path + ": no documents in it (an empty file, or blank lines only)");
    open_.reset();
  }
}

// The next document of the open file, or false at its end. Bad documents throw or are counted.
bool DocumentStream::next_in_file(Document& document) {
  File& f = *open_;
  const size_t limit = static_cast<size_t>(options_.max_document_bytes);
  const bool skip_bad = options_.bad_documents == "skip";
  std::string line;
  for (;;) {
    document.text.clear();
    int64_t first_line = 0;
    bool too_long = false;
    bool any = false;
    // Gather one document's text: a line, a paragraph or the whole file.
    for (;;) {
      const auto got = f.read_line(line, limit);
      if (got == File::Line::kEnd) break;
      if (got == File::Line::kTooLong) {
        too_long = true;
        if (first_line == 0) first_line = f.line_number;
        if (f.format == "jsonl" || f.spec.documents == "lines") break;
        continue;
      }
      if (is_blank(line)) {
        if (f.format == "jsonl" || f.spec.documents == "lines") continue;
        if (f.spec.documents == "paragraphs" && any) break;
        if (f.spec.documents == "paragraphs") continue;
      }
      if (first_line == 0) first_line = f.line_number;
      if (any) document.text += '\n';
      if (!too_long && document.text.size() + line.size() > limit) too_long = true;
      if (!too_long) document.text += line;
      any = true;
      if (f.format == "jsonl" || f.spec.documents == "lines") break;
    }
    if (first_line == 0 && !too_long) return false;
    document.where = f.path + ":" + std::to_string(first_line);
    if (too_long) {
      check(skip_bad, document.where + ": a document longer than max_document_bytes (" +
                          std::to_string(options_.max_document_bytes) +
                          " bytes); raise it, or set bad_documents: skip");
      ++too_long_;
      continue;
    }
    const size_t bad_byte = first_invalid_utf8(document.text);
    if (bad_byte != std::string::npos) {
      check(skip_bad, document.where + ": not UTF-8 text (byte " + std::to_string(bad_byte) +
                          " of the " + (f.format == "jsonl" ? "record" : "document") +
                          "); convert it, or set bad_documents: skip");
      ++not_utf8_;
      continue;
    }
    if (f.format == "jsonl") {
      nlohmann::json record = nlohmann::json::parse(document.text, nullptr, false);
      auto field = record.is_object() ? record.find(f.spec.field) : record.end();
      if (record.is_discarded() || !record.is_object() || field == record.end() ||
          !field->is_string()) {
        check(skip_bad, document.where + (record.is_discarded() ? ": not a JSON record"
                                                                : ": expected a string field \"" +
                                                                      f.spec.field + "\""));
        ++malformed_;
        continue;
      }
      document.bytes = static_cast<int64_t>(document.text.size()) + 1;
      document.text = field->get<std::string>();
      if (is_blank(document.text)) continue;
      return true;
    }
    document.bytes = static_cast<int64_t>(document.text.size()) + 1;
    return true;
  }
}

}  // namespace tiller
