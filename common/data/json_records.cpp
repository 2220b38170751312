#include "common/data/json_records.h"

#include <zlib.h>

#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string gunzip_file(const std::string& path) {
  check(path_exists(path), "data file " + path + " does not exist");
  gzFile file = gzopen(path.c_str(), "rb");
  check(file != nullptr, "cannot open " + path);
  std::string out;
  char buffer[1 << 16];
  int n;
  while ((n = gzread(file, buffer, sizeof(buffer))) > 0) {
    out.append(buffer, static_cast<size_t>(n));
    if (out.size() > (8ull << 30)) {
      gzclose(file);
      throw Error(path + ": decompressed size exceeds 8 GiB");
    }
  }
  int err = 0;
  const char* message = gzerror(file, &err);
  const bool failed = n < 0 || (err != Z_OK && err != Z_STREAM_END);
  const std::string reason = failed && message ? message : "";
  gzclose(file);
  check(!failed, path + ": corrupt gzip data (" + reason + ")");
  return out;
}

}  // namespace

std::string string_field(const nlohmann::json& record, const char* key, const std::string& where,
                         bool required) {
  auto it = record.find(key);
  if (it == record.end() || it->is_null()) {
    check(!required, where + ": missing field \"" + key + "\"");
    return "";
  }
  check(it->is_string(),
        where + ": field \"" + key + "\" must be a string, got " + it->type_name());
  return it->get<std::string>();
}

std::string read_text_file(const std::string& path) {
  if (ends_with(path, ".gz")) return gunzip_file(path);
  check(path_exists(path), "data file " + path + " does not exist");
  return read_file(path);
}

RecordReadResult read_json_records(const std::string& path, const RecordReadOptions& options) {
  const std::string text = read_text_file(path);
  RecordReadResult result;
  const size_t first = text.find_first_not_of(" \t\r\n");
  check(first != std::string::npos, path + ": empty file, no records");

  if (text[first] == '[') {
    nlohmann::json array;
    try {
      array = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range (1e999)
      throw Error(path + ": invalid JSON array (" + std::string(e.what()) + ")");
    }
    for (size_t i = 0; i < array.size(); ++i) {
      if (options.max_records >= 0 &&
          static_cast<int64_t>(result.records.size()) >= options.max_records)
        break;
      const std::string where = path + "[" + std::to_string(i) + "]";
      if (!array[i].is_object()) {
        check(options.skip_bad_lines, where + ": expected a JSON object");
        ++result.skipped;
        continue;
      }
      result.records.push_back({std::move(array[i]), where});
    }
  } else {
    size_t start = 0;
    int64_t line = 0;
    while (start < text.size()) {
      size_t end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      ++line;
      const std::string_view content(text.data() + start, end - start);
      start = end + 1;
      if (content.find_first_not_of(" \t\r") == std::string_view::npos) continue;
      if (options.max_records >= 0 &&
          static_cast<int64_t>(result.records.size()) >= options.max_records)
        break;
      const std::string where = path + ":" + std::to_string(line);
      nlohmann::json value;
      std::string problem;
      try {
        value = nlohmann::json::parse(content.begin(), content.end());
        if (!value.is_object()) problem = "expected a JSON object";
      } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range (1e999)
        std::string what = e.what();
        auto colon = what.rfind(": ");
        problem =
            "invalid JSON (" + (colon == std::string::npos ? what : what.substr(colon + 2)) + ")";
      }
      if (!problem.empty()) {
        check(options.skip_bad_lines, where + ": " + problem);
        ++result.skipped;
        continue;
      }
      result.records.push_back({std::move(value), where});
    }
  }
  check(!result.records.empty(),
        path + ": no usable records" +
            (result.skipped ? " (" + std::to_string(result.skipped) + " bad lines skipped)" : ""));
  return result;
}

}  // namespace tiller
