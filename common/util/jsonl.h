// Reading JSONL files that runs append to (metrics.jsonl, samples.jsonl, runs.jsonl).
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

namespace tiller {

// Calls `each` with every JSON object line of a JSONL file and its 1-based line number, skipping
// blank lines, lines a kill cut short and lines that are not objects; a missing file has none.
void for_each_jsonl_object(const std::string& path,
                           const std::function<void(const nlohmann::json&, int64_t)>& each);

}  // namespace tiller
