#include "common/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

namespace {

// The header may not be larger than this (the format's reference implementation uses 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DtypeInfo {
  const char* name;
  size_t size;
  torch::ScalarType type;
};

const DtypeInfo kDtypes[] = {
    {"F64", 8, torch::kDouble},    {"F32", 4, torch::kFloat}, {"F16", 2, torch::kHalf},
    {"BF16", 2, torch::kBFloat16}, {"I64", 8, torch::kLong},  {"I32", 4, torch::kInt},
    {"I16", 2, torch::kShort},     {"I8", 1, torch::kChar},   {"U8", 1, torch::kByte},
    {"BOOL", 1, torch::kBool},
};

const DtypeInfo* find_dtype(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

const DtypeInfo& dtype_of(torch::ScalarType type) {
  for (const auto& d : kDtypes)
    if (d.type == type) return d;
  throw Error(std::string("safetensors: cannot write dtype ") + c10::toString(type));
}

// A tensor's bytes (validated by parse_safetensors_header) copied into a new tensor.
torch::Tensor copy_tensor(const SafetensorsEntry& e, const uint8_t* data) {
  const DtypeInfo* info = find_dtype(e.dtype);
  auto out = torch::empty(e.shape, torch::TensorOptions().dtype(info->type));
  if (e.end > e.begin) std::memcpy(out.data_ptr(), data + e.begin, e.end - e.begin);
  return out;
}

}  // namespace

size_t safetensors_dtype_size(const std::string& dtype) {
  const DtypeInfo* info = find_dtype(dtype);
  check(info != nullptr, "unknown safetensors dtype '" + dtype + "'");
  return info->size;
}

SafetensorsHeader parse_safetensors_header(const uint8_t* bytes, uint64_t size,
                                           const std::string& path) {
  check(size >= 8, path + ": truncated safetensors file (" + std::to_string(size) +
                       " bytes, the 8-byte header length is missing)");
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | bytes[i];  // little-endian
  check(header_size <= size - 8, path + ": header length " + std::to_string(header_size) +
                                     " runs past the end of the file (" + std::to_string(size) +
                                     " bytes): truncated or not a safetensors file");
  check(header_size <= kMaxHeaderBytes,
        path + ": header length " + std::to_string(header_size) + " exceeds the 100 MB limit");
  const char* header_begin = reinterpret_cast<const char*>(bytes + 8);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(header_begin, header_begin + header_size);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": header is not valid JSON (" + e.what() + ")");
  }
  check(header.is_object(), path + ": header is not a JSON object");
  SafetensorsHeader out;
  out.data_offset = 8 + header_size;
  const uint64_t data_size = size - 8 - header_size;

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const std::string where = path + ": tensor '" + name + "'";
    if (name == "__metadata__") {
      check(it->is_object(), path + ": __metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        check(m->is_string(), path + ": __metadata__ value '" + m.key() + "' is not a string");
        out.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    check(it->is_object(), where + " is not an object");
    const auto& obj = *it;
    check(obj.contains("dtype") && obj["dtype"].is_string(), where + ": missing dtype");
    check(obj.contains("shape") && obj["shape"].is_array(), where + ": missing shape");
    check(obj.contains("data_offsets") && obj["data_offsets"].is_array() &&
              obj["data_offsets"].size() == 2,
          where + ": data_offsets must be a pair [begin, end]");
    SafetensorsEntry entry;
    entry.dtype = obj["dtype"].get<std::string>();
    const DtypeInfo* info = find_dtype(entry.dtype);
    check(info != nullptr, where + ": unknown dtype '" + entry.dtype + "'");
    check(obj["shape"].size() <= 8, where + ": too many dimensions");
    // The byte count, not only the element count, must stay far from 2^64: a product that wraps
    // could match a small data_offsets span and ask torch for an absurd tensor.
    const uint64_t max_bytes = 1ull << 62;
    uint64_t bytes_needed = info->size;
    for (const auto& dim : obj["shape"]) {
      check(dim.is_number_unsigned(), where + ": shape entries must be non-negative integers");
      uint64_t d = dim.get<uint64_t>();
      check(d <= (1ull << 40), where + ": dimension " + std::to_string(d) + " is too large");
      entry.shape.push_back(static_cast<int64_t>(d));
    }
    for (int64_t d : entry.shape) {
      const uint64_t u = static_cast<uint64_t>(d);
      if (u == 0) {
        bytes_needed = 0;
        break;
      }
      check(bytes_needed <= max_bytes / u, where + ": shape " + nlohmann::json(entry.shape).dump() +
                                               " is too large (its byte count overflows)");
      bytes_needed *= u;
    }
    for (const auto& off : obj["data_offsets"])
      check(off.is_number_unsigned(), where + ": data_offsets must be non-negative integers");
    entry.begin = obj["data_offsets"][0].get<uint64_t>();
    entry.end = obj["data_offsets"][1].get<uint64_t>();
    check(entry.begin <= entry.end, where + ": data_offsets begin " + std::to_string(entry.begin) +
                                        " > end " + std::to_string(entry.end));
    check(entry.end <= data_size, where + ": data_offsets end " + std::to_string(entry.end) +
                                      " is outside the data section (" + std::to_string(data_size) +
                                      " bytes)");
    check(entry.end - entry.begin == bytes_needed,
          where + ": shape x dtype is " + std::to_string(bytes_needed) +
              " bytes but data_offsets span " + std::to_string(entry.end - entry.begin));
    out.entries[name] = entry;
  }

  // No two tensors may share bytes.
  std::vector<std::pair<uint64_t, std::string>> order;
  for (const auto& [name, e] : out.entries)
    if (e.end > e.begin) order.emplace_back(e.begin, name);
  std::sort(order.begin(), order.end());
  for (size_t i = 1; i < order.size(); ++i) {
    const auto& prev = out.entries.at(order[i - 1].second);
    check(order[i].first >= prev.end,
          path + ": tensors '" + order[i - 1].second + "' and '" + order[i].second + "' overlap");
  }
  return out;
}

std::map<std::string, torch::Tensor> read_safetensors_bytes(const std::string& bytes,
                                                            const std::string& where) {
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  const SafetensorsHeader header = parse_safetensors_header(data, bytes.size(), where);
  std::map<std::string, torch::Tensor> out;
  for (const auto& [name, entry] : header.entries)
    out[name] = copy_tensor(entry, data + header.data_offset);
  return out;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  check(!is_directory(path), path + ": is a directory, expected a safetensors file");
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  check(fd >= 0, "cannot open " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw Error("cannot stat " + path + ": " + std::strerror(errno));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    throw Error(path + ": truncated safetensors file (" + std::to_string(file_size) +
                " bytes, the 8-byte header length is missing)");
  }
  map_size_ = static_cast<size_t>(file_size);
  map_ = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw Error("cannot mmap " + path + ": " + std::strerror(errno));
  }
  const auto* bytes = static_cast<const uint8_t*>(map_);
  try {
    SafetensorsHeader header = parse_safetensors_header(bytes, file_size, path);
    entries_ = std::move(header.entries);
    metadata_ = std::move(header.metadata);
    data_ = bytes + header.data_offset;
    data_size_ = file_size - header.data_offset;
  } catch (...) {
    ::munmap(map_, map_size_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

torch::Tensor SafetensorsFile::tensor(const std::string& name) const {
  auto it = entries_.find(name);
  check(it != entries_.end(), path_ + ": no tensor named '" + name + "'");
  return copy_tensor(it->second, data_);
}

std::map<std::string, torch::Tensor> read_safetensors(const std::string& path) {
  SafetensorsFile file(path);
  std::map<std::string, torch::Tensor> out;
  for (const auto& [name, entry] : file.entries()) out[name] = file.tensor(name);
  return out;
}

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> contiguous;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    check(name != "__metadata__", "a tensor may not be named __metadata__");
    check(!header.contains(name), "duplicate tensor name '" + name + "'");
    auto c = t.detach().to(torch::kCPU).contiguous();
    const auto& info = dtype_of(c.scalar_type());
    const uint64_t bytes = static_cast<uint64_t>(c.numel()) * info.size;
    header[name] = {{"dtype", info.name},
                    {"shape", c.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(c);
  }
  std::string header_text = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned, as the format recommends.
  while ((8 + header_text.size()) % 8 != 0) header_text.push_back(' ');

  // Streamed tensor by tensor: no second copy of the weights in memory.
  AtomicFileWriter out(path);
  uint8_t length[8];
  const uint64_t n = header_text.size();
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>((n >> (8 * i)) & 0xff);
  out.write(length, sizeof(length));
  out.write(header_text.data(), header_text.size());
  for (const auto& c : contiguous) out.write(c.data_ptr(), c.numel() * c.element_size());
  out.commit();
}

}  // namespace tiller
