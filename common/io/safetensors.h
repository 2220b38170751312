// Safetensors: reading (mmap, every offset and size bounds-checked) and atomic writing.
#pragma once
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

namespace tiller {

struct SafetensorsEntry {
  std::string dtype;            // "F32", "BF16", "F16", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the data section
};

// The parsed, validated header of a safetensors file: what parse_safetensors_header checks.
struct SafetensorsHeader {
  std::map<std::string, SafetensorsEntry> entries;
  std::map<std::string, std::string> metadata;
  uint64_t data_offset = 0;  // where the data section starts (8 + header length)
};

// Parses and validates the header of a whole safetensors file held in memory (`size` bytes): the
// length, the JSON, every dtype, shape and offset against the data section, no overlaps. Throws
// tiller::Error naming `where` and the problem. SafetensorsFile uses it on its mapping.
SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, uint64_t size,
                                           const std::string& where);

// Every tensor of a safetensors file held in memory (stored dtype); errors name `where`.
std::map<std::string, torch::Tensor> read_safetensors_bytes(const std::string& bytes,
                                                            const std::string& where);

// A parsed, validated safetensors file held through mmap. Tensors are copied out on demand.
class SafetensorsFile {
 public:
  // Maps and validates the file; throws tiller::Error naming the path and the problem.
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return entries_.count(name) > 0; }
  // A copy of the tensor in its stored dtype (owning memory, independent of the mapping).
  torch::Tensor tensor(const std::string& name) const;

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;  // start of the data section
  uint64_t data_size_ = 0;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Reads every tensor of a file as a name -> tensor map (stored dtype).
std::map<std::string, torch::Tensor> read_safetensors(const std::string& path);

// Writes tensors (contiguous copies, in their dtype) atomically: path.tmp, fsync, rename.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Bytes per element of a safetensors dtype name; throws on an unknown name.
size_t safetensors_dtype_size(const std::string& dtype);

}  // namespace tiller
