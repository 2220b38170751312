// JSON records from files: JSONL (one object a line) or one JSON array; `.gz` read transparently.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace tiller {

struct JsonRecord {
  nlohmann::json value;
  std::string where;  // "file:line" (JSONL) or "file[index]" (array), for error messages
};

struct RecordReadOptions {
  bool skip_bad_lines = false;  // skip malformed lines (and count them) instead of failing
  int64_t max_records = -1;     // stop after this many records (-1: all)
};

struct RecordReadResult {
  std::vector<JsonRecord> records;
  int64_t skipped = 0;
};

// record[key] as a string; a missing (when required) or non-string field is a tiller::Error
// naming `where` and the key. An absent optional field gives "".
std::string string_field(const nlohmann::json& record, const char* key, const std::string& where,
                         bool required = true);

// Reads the bytes of a file, gunzipping it when it ends in .gz; errors name the file.
std::string read_text_file(const std::string& path);

// Reads records; a malformed line is a tiller::Error naming file:line unless skip_bad_lines.
// An empty file (no records) is an error.
RecordReadResult read_json_records(const std::string& path, const RecordReadOptions& options = {});

}  // namespace tiller
