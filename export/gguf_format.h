// GGUF's metadata value types (ggml's docs/gguf.md), for the writer (gguf.cpp) and the reader
// (gguf_reader.cpp).
#pragma once
#include <cstdint>

namespace tiller::gguf_format {

enum ValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12
};

}  // namespace tiller::gguf_format
