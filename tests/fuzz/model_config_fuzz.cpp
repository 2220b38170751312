// Fuzzes reading an HF config.json: model_config_from_hf_json on any JSON (JSON syntax errors are
// nlohmann's documented error path and skipped), then the derived sizes and a round trip through
// model_config_to_hf_json, which must read back to the same shape.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "common/model/model_config.h"
#include "common/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(data, data + size);
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  try {
    const tiller::ModelConfig config = tiller::model_config_from_hf_json(json, "config.json");
    (void)config.parameter_count();
    const auto again =
        tiller::model_config_from_hf_json(tiller::model_config_to_hf_json(config), "round trip");
    if (again.hidden_size != config.hidden_size || again.vocab_size != config.vocab_size ||
        again.num_hidden_layers != config.num_hidden_layers ||
        again.resolved_head_dim() != config.resolved_head_dim() ||
        again.num_key_value_heads != config.num_key_value_heads ||
        again.num_labels != config.num_labels) {
      std::fprintf(stderr, "config.json round trip changed the shape: %s\n", json.dump().c_str());
      std::abort();
    }
  } catch (const tiller::Error&) {
  }
  return 0;
}
