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

// Writes `contents` to path through path.tmp, fsync and rename: readers never see a partial file.
void write_file_atomic(const std::string& path, const std::string& contents);
// fsyncs a directory so that renames inside it are durable.
void fsync_directory(const std::string& path);

}  // namespace tiller
