// Reading GGUF files back (`tiller export --inspect FILE.gguf`, and the tests): the header, every
// metadata value and the tensor table of a GGUF v2 or v3 file, each length, count, type and offset
// checked against what the file holds before it is used, so that a truncated or hostile file is
// one tiller::Error naming the file, the byte offset and what is wrong, never a crash or an
// allocation the file cannot back. Tensors of the types export_gguf writes (f32, f16, bf16, q8_0,
// q4_0) read back as float.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace tiller {

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // ggml's order: dims[0] is the fastest-varying (a row's length)
  uint32_t type = 0;          // ggml's type number
  uint64_t offset = 0;        // from the start of the data section
  uint64_t bytes = 0;         // what ggml stores for it
};

struct GgufFile {
  std::string path;
  uint32_t version = 0;
  // Each metadata key's value as JSON (arrays as arrays), and its GGUF value type.
  std::vector<std::pair<std::string, nlohmann::json>> metadata;
  std::vector<std::pair<std::string, uint32_t>> metadata_types;
  std::vector<GgufTensorInfo> tensors;
  uint64_t alignment = 32;
  uint64_t data_start = 0;  // file offset of the data section
  uint64_t file_size = 0;

  const nlohmann::json* find(const std::string& key) const;
};

// Reads and checks everything but the tensors' data (which is only bounds-checked).
GgufFile read_gguf(const std::string& path);
// The same from bytes in memory (`where` names them in errors): the fuzzer's entry.
GgufFile parse_gguf(const std::string& bytes, const std::string& where);

// Tensor `info` of `file` as float, shaped [dims[n-1], ..., dims[0]] (row-major, as torch).
torch::Tensor read_gguf_tensor(const GgufFile& file, const std::string& bytes,
                               const GgufTensorInfo& info);

// A readable listing: version, each metadata key (long arrays summarised), each tensor's name,
// type, shape and offset.
std::string describe_gguf(const GgufFile& file);

}  // namespace tiller
