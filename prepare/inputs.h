// The documents `data prepare` reads: files, directories and globs of plain text or JSONL, each
// optionally compressed (.gz, .zst), streamed through a fixed buffer so that memory does not grow
// with a file's size, and hostile input (invalid UTF-8, an endless line, an empty file) stopped
// with one line naming the file and line.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/recipe/config_reader.h"

namespace tiller {

struct InputSpec {
  std::string path;            // a file, a directory (its files, recursively) or a glob
  std::string format;          // "text" or "jsonl"; "" = by extension (.jsonl, .json: jsonl)
  std::string field = "text";  // JSONL: the string field that holds the document
  // Plain text: "lines" (each non-empty line, as pretraining's text path reads a file),
  // "paragraphs" (runs of non-blank lines) or "file" (the whole file).
  std::string documents = "lines";
};

struct InputOptions {
  int64_t max_document_bytes = 1 << 20;  // longer: an error naming file:line, or skipped
  // "error": a document that is not UTF-8, or longer than max_document_bytes, stops the run with
  // its place; "skip": it is counted and left out.
  std::string bad_documents = "error";
};

// "inputs": a path, or a list of paths and {"path", "format", "field", "documents"} objects.
std::vector<InputSpec> read_input_specs(const nlohmann::json& inputs, const std::string& path,
                                        ConfigErrors& errors);
nlohmann::json input_specs_values(const std::vector<InputSpec>& specs);

// The files a spec names, sorted (the same order on every machine). Throws tiller::Error naming
// the spec when it matches nothing.
std::vector<std::string> expand_input(const InputSpec& spec);

// "text" or "jsonl" for a file of the spec (its format, else by the name without .gz/.zst).
std::string input_format(const InputSpec& spec, const std::string& file);

struct Document {
  std::string text;
  std::string where;  // "file:line"
  int64_t bytes = 0;  // the bytes it took in the input (decompressed), for throughput
};

// Every document of every input, in order.
class DocumentStream {
 public:
  DocumentStream(std::vector<InputSpec> specs, InputOptions options);
  ~DocumentStream();
  DocumentStream(const DocumentStream&) = delete;

  // The next document; false after the last. Throws tiller::Error on hostile input (naming the
  // file and line) unless options.bad_documents is "skip".
  bool next(Document& document);

  int64_t files_read() const { return files_read_; }
  int64_t bytes_read() const { return bytes_read_; }      // decompressed
  int64_t skipped_not_utf8() const { return not_utf8_; }  // bad_documents: skip
  int64_t skipped_too_long() const { return too_long_; }
  int64_t skipped_malformed() const { return malformed_; }  // JSONL: not JSON, or no field

 private:
  class File;
  bool open_next_file();
  bool next_in_file(Document& document);

  std::vector<InputSpec> specs_;
  InputOptions options_;
  size_t spec_ = 0, file_ = 0;
  std::vector<std::string> files_;  // of the current spec
  std::unique_ptr<File> open_;
  int64_t documents_in_file_ = 0;
  int64_t files_read_ = 0, bytes_read_ = 0, not_utf8_ = 0, too_long_ = 0, malformed_ = 0;
};

}  // namespace tiller
