#include "common/util/jsonl.h"

#include <fstream>

namespace tiller {

void for_each_jsonl_object(const std::string& path,
                           const std::function<void(const nlohmann::json&, int64_t)>& each) {
  std::ifstream in(path);
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line);
    } catch (const std::exception&) {
      continue;  // blank, or cut short by a kill
    }
    if (record.is_object()) each(record, number);
  }
}

}  // namespace tiller
