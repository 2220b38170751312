// Fuzzes the GGUF reader (export/gguf_reader.h) on any bytes: parsing the header, metadata and
// tensor table, then decoding every tensor it accepted, must either work or throw tiller::Error,
// and a decoded tensor holds exactly the elements its dimensions say.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/util/error.h"
#include "export/gguf_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    const tiller::GgufFile file = tiller::parse_gguf(bytes, "fuzz.gguf");
    (void)tiller::describe_gguf(file);
    for (const auto& t : file.tensors) {
      const auto values = tiller::read_gguf_tensor(file, bytes, t);
      int64_t elements = 1;
      for (int64_t d : t.dims) elements *= d;
      if (values.numel() != elements) __builtin_trap();
    }
  } catch (const tiller::Error&) {
  }
  return 0;
}
