// Files: whole-file reads, atomic writes, directory helpers, with errors that name the path.
#pragma once
#include <nlohmann/json.hpp>

#include <string>

namespace tiller {

bool path_exists(const std::string& path);
bool is_directory(const std::string& path);
// Creates the directory and its parents; throws tiller::Error on failure.
void make_directories(const std::string& path);
void remove_all(const std::string& path);

// Reads the whole file; throws tiller::Error naming the path when it cannot.
std::string read_file(const std::string& path);
// Parses a JSON file (comments allowed); errors name the path and the parser's position.
nlohmann::json read_json_file(const std::string& path);

// Writes path through path.tmp in pieces; commit() fsyncs and renames it into place, so readers
// never see a partial file. Destroyed without commit() (an error), it removes path.tmp.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(const std::string& path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  void write(const void* data, size_t size);
  void commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
};

// Writes `contents` to path atomically (an AtomicFileWriter in one piece).
void write_file_atomic(const std::string& path, const std::string& contents);
// fsyncs a directory so that renames inside it are durable.
void fsync_directory(const std::string& path);

}  // namespace tiller
