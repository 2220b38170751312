// Fuzzes the safetensors reader on whole files held in memory: header length, header JSON,
// dtypes, shapes and offsets, then copies every tensor out. Bad input must be a tiller::Error.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/io/safetensors.h"
#include "common/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    auto tensors = tiller::read_safetensors_bytes(bytes, "fuzz.safetensors");
    for (auto& [name, tensor] : tensors) (void)tensor.numel();
  } catch (const tiller::Error&) {
  }
  return 0;
}
