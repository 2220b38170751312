// Fuzzes the llama2.c importer (legacy and v1 headers, sizes checked against the file, weights
// read into a model) on files held in memory. Bad input must be a tiller::Error.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/io/llama2c.h"
#include "common/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    tiller::Transformer model = tiller::import_llama2c_bytes(bytes, "fuzz.bin");
    (void)model;
  } catch (const tiller::Error&) {
  }
  return 0;
}
