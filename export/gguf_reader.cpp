#include "export/gguf_reader.h"

#include <c10/util/Half.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <set>

#include "common/util/error.h"
#include "export/gguf_format.h"

namespace tiller {

namespace {

using namespace gguf_format;  // the metadata value types
// ggml's tensor types this reader knows the sizes of.
enum : uint32_t { kTypeF32 = 0, kTypeF16 = 1, kTypeQ4_0 = 2, kTypeQ8_0 = 8, kTypeBF16 = 30 };

constexpr uint64_t kMaxCount = uint64_t{1} << 24;  // tensors, keys, or array elements
constexpr uint32_t kMaxDims = 4;                   // GGML_MAX_DIMS

// A cursor over the file's bytes: every read checks that the bytes are there.
class Reader {
 public:
  Reader(const char* data, uint64_t size, const std::string& where)
      : data_(data), size_(size), where_(where) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(where_ + ": at byte " + std::to_string(at_) + ": " + what);
  }
  void need(uint64_t n, const std::string& what) const {
    if (n > size_ - at_)
      fail(what + " needs " + std::to_string(n) + " bytes, the file has " +
           std::to_string(size_ - at_) + " left (truncated?)");
  }
  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T value;
    std::memcpy(&value, data_ + at_, sizeof(T));
    at_ += sizeof(T);
    return value;
  }
  std::string string(const std::string& what) {
    const uint64_t length = read<uint64_t>(what + "'s length");
    need(length, what);
    std::string s(data_ + at_, length);
    at_ += length;
    return s;
  }
  uint64_t count(const std::string& what) {
    const uint64_t n = read<uint64_t>(what);
    if (n > kMaxCount) fail(what + " is " + std::to_string(n) + ", more than a GGUF file holds");
    return n;
  }
  uint64_t at() const { return at_; }
  uint64_t size() const { return size_; }

 private:
  const char* data_;
  uint64_t size_, at_ = 0;
  std::string where_;
};

uint64_t element_size(uint32_t type) {
  switch (type) {
    case kU8:
    case kI8:
    case kBool:
      return 1;
    case kU16:
    case kI16:
      return 2;
    case kU32:
    case kI32:
    case kF32:
      return 4;
    case kU64:
    case kI64:
    case kF64:
      return 8;
    default:
      return 0;  // strings and arrays: variable
  }
}

nlohmann::json read_value(Reader& r, uint32_t type, const std::string& key, int depth) {
  switch (type) {
    case kU8:
      return r.read<uint8_t>(key);
    case kI8:
      return r.read<int8_t>(key);
    case kU16:
      return r.read<uint16_t>(key);
    case kI16:
      return r.read<int16_t>(key);
    case kU32:
      return r.read<uint32_t>(key);
    case kI32:
      return r.read<int32_t>(key);
    case kF32:
      return r.read<float>(key);
    case kU64:
      return r.read<uint64_t>(key);
    case kI64:
      return r.read<int64_t>(key);
    case kF64:
      return r.read<double>(key);
    case kBool: {
      const uint8_t b = r.read<uint8_t>(key);
      if (b > 1) r.fail(key + ": a bool of value " + std::to_string(b));
      return b == 1;
    }
    case kString: {
      // Strings may hold any bytes; JSON keeps them as given (printing escapes what is not UTF-8).
      return nlohmann::json(r.string(key));
    }
    case kArray: {
      if (depth >= 2) r.fail(key + ": arrays nested deeper than two levels");
      const uint32_t element_type = r.read<uint32_t>(key + "'s element type");
      const uint64_t n = r.count(key + "'s length");
      const uint64_t fixed = element_size(element_type);
      if (fixed > 0) r.need(n * fixed, key + "'s " + std::to_string(n) + " elements");
      if (fixed == 0 && element_type != kString && element_type != kArray)
        r.fail(key + ": unknown array element type " + std::to_string(element_type));
      nlohmann::json array = nlohmann::json::array();
      for (uint64_t i = 0; i < n; ++i) array.push_back(read_value(r, element_type, key, depth + 1));
      return array;
    }
    default:
      r.fail(key + ": unknown value type " + std::to_string(type));
  }
}

uint64_t tensor_bytes(uint32_t type, uint64_t elements, const std::string& name, Reader& r) {
  switch (type) {
    case kTypeF32:
      return elements * 4;
    case kTypeF16:
    case kTypeBF16:
      return elements * 2;
    case kTypeQ8_0:
    case kTypeQ4_0:
      if (elements % 32 != 0)
        r.fail("tensor " + name + ": " + std::to_string(elements) +
               " values are not whole blocks of 32");
      return elements / 32 * (type == kTypeQ8_0 ? 34 : 18);
    default:
      r.fail("tensor " + name + ": ggml type " + std::to_string(type) +
             " is not one this reader knows (f32, f16, bf16, q8_0, q4_0)");
  }
}

GgufFile parse(const char* data, uint64_t size, const std::string& where) {
  Reader r(data, size, where);
  GgufFile f;
  f.path = where;
  f.file_size = size;
  const uint32_t magic = r.read<uint32_t>("the magic number");
  if (std::memcmp(&magic, "GGUF", 4) != 0) r.fail("not a GGUF file (no \"GGUF\" magic)");
  f.version = r.read<uint32_t>("the version");
  if (f.version != 2 && f.version != 3)
    r.fail("GGUF version " + std::to_string(f.version) + " (this reader reads 2 and 3)");
  const uint64_t tensor_count = r.count("the tensor count");
  const uint64_t kv_count = r.count("the metadata count");
  std::set<std::string> keys;
  for (uint64_t i = 0; i < kv_count; ++i) {
    const std::string key = r.string("metadata key " + std::to_string(i));
    if (!keys.insert(key).second) r.fail("metadata key '" + key + "' appears twice");
    const uint32_t type = r.read<uint32_t>(key + "'s type");
    f.metadata.emplace_back(key, read_value(r, type, key, 0));
    f.metadata_types.emplace_back(key, type);
  }
  if (const auto* alignment = f.find("general.alignment")) {
    if (!alignment->is_number_unsigned() || alignment->get<uint64_t>() == 0 ||
        (alignment->get<uint64_t>() & (alignment->get<uint64_t>() - 1)) != 0 ||
        alignment->get<uint64_t>() > 4096)
      r.fail("general.alignment must be a power of two up to 4096, got " + alignment->dump());
    f.alignment = alignment->get<uint64_t>();
  }
  std::set<std::string> names;
  for (uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensorInfo t;
    t.name = r.string("tensor " + std::to_string(i) + "'s name");
    if (!names.insert(t.name).second) r.fail("tensor '" + t.name + "' appears twice");
    const uint32_t n_dims = r.read<uint32_t>(t.name + "'s dimension count");
    if (n_dims < 1 || n_dims > kMaxDims)
      r.fail("tensor " + t.name + " has " + std::to_string(n_dims) + " dimensions (1 to 4)");
    uint64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim = r.read<uint64_t>(t.name + "'s dimension");
      if (dim < 1 || dim > (uint64_t{1} << 40) || elements > (uint64_t{1} << 40) / dim)
        r.fail("tensor " + t.name + " has a dimension of " + std::to_string(dim) +
               " (or more elements than a file holds)");
      elements *= dim;
      t.dims.push_back(static_cast<int64_t>(dim));
    }
    t.type = r.read<uint32_t>(t.name + "'s type");
    t.offset = r.read<uint64_t>(t.name + "'s offset");
    t.bytes = tensor_bytes(t.type, elements, t.name, r);
    if (t.offset % f.alignment != 0)
      r.fail("tensor " + t.name + "'s offset " + std::to_string(t.offset) + " is not aligned to " +
             std::to_string(f.alignment));
    f.tensors.push_back(std::move(t));
  }
  f.data_start = (r.at() + f.alignment - 1) / f.alignment * f.alignment;
  if (!f.tensors.empty() && f.data_start > size) r.fail("the file ends before its data section");
  const uint64_t data_size = f.tensors.empty() ? 0 : size - f.data_start;
  for (const auto& t : f.tensors)
    if (t.offset > data_size || t.bytes > data_size - t.offset)
      throw Error(where + ": tensor " + t.name + " (" + std::to_string(t.bytes) +
                  " bytes at data offset " + std::to_string(t.offset) +
                  ") lies beyond the file's end (the data section holds " +
                  std::to_string(data_size) + " bytes; truncated?)");
  return f;
}

}  // namespace

const nlohmann::json* GgufFile::find(const std::string& key) const {
  for (const auto& [k, v] : metadata)
    if (k == key) return &v;
  return nullptr;
}

GgufFile parse_gguf(const std::string& bytes, const std::string& where) {
  return parse(bytes.data(), bytes.size(), where);
}

GgufFile read_gguf(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  check(fd >= 0, "cannot open " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + " is not a regular file");
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    throw Error(path + ": at byte 0: the file is empty (not a GGUF file)");
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  check(map != MAP_FAILED, "cannot map " + path + ": " + std::strerror(errno));
  try {
    GgufFile f = parse(static_cast<const char*>(map), size, path);
    ::munmap(map, size);
    return f;
  } catch (...) {
    ::munmap(map, size);
    throw;
  }
}

torch::Tensor read_gguf_tensor(const GgufFile& file, const std::string& bytes,
                               const GgufTensorInfo& t) {
  check(bytes.size() == file.file_size, file.path + ": the bytes given are not the file read");
  const char* data = bytes.data() + file.data_start + t.offset;
  std::vector<int64_t> shape(t.dims.rbegin(), t.dims.rend());
  int64_t elements = 1;
  for (int64_t d : shape) elements *= d;
  auto out = torch::empty({elements}, torch::kFloat);
  float* o = out.data_ptr<float>();
  auto half = [](const char* p) {
    c10::Half h;
    std::memcpy(&h, p, 2);
    return static_cast<float>(h);
  };
  switch (t.type) {
    case kTypeF32:
      std::memcpy(o, data, t.bytes);
      break;
    case kTypeF16:
      for (int64_t i = 0; i < elements; ++i) o[i] = half(data + 2 * i);
      break;
    case kTypeBF16:
      for (int64_t i = 0; i < elements; ++i) {
        uint32_t bits = 0;
        std::memcpy(reinterpret_cast<char*>(&bits) + 2, data + 2 * i, 2);
        std::memcpy(&o[i], &bits, 4);
      }
      break;
    case kTypeQ8_0:
      for (int64_t b = 0; b < elements / 32; ++b) {
        const char* block = data + 34 * b;
        const float d = half(block);
        for (int j = 0; j < 32; ++j)
          o[32 * b + j] = d * static_cast<float>(static_cast<int8_t>(block[2 + j]));
      }
      break;
    case kTypeQ4_0:
      for (int64_t b = 0; b < elements / 32; ++b) {
        const char* block = data + 18 * b;
        const float d = half(block);
        for (int j = 0; j < 16; ++j) {
          const auto q = static_cast<uint8_t>(block[2 + j]);
          o[32 * b + j] = d * static_cast<float>((q & 15) - 8);
          o[32 * b + j + 16] = d * static_cast<float>((q >> 4) - 8);
        }
      }
      break;
    default:
      throw Error(file.path + ": tensor " + t.name + " has a type this reader does not decode");
  }
  return out.view(shape);
}

std::string describe_gguf(const GgufFile& f) {
  static const std::map<uint32_t, const char*> type_names = {{kTypeF32, "f32"},
                                                             {kTypeF16, "f16"},
                                                             {kTypeBF16, "bf16"},
                                                             {kTypeQ8_0, "q8_0"},
                                                             {kTypeQ4_0, "q4_0"}};
  std::string s = f.path + ": GGUF v" + std::to_string(f.version) + ", " +
                  std::to_string(f.metadata.size()) + " metadata keys, " +
                  std::to_string(f.tensors.size()) + " tensors, " + std::to_string(f.file_size) +
                  " bytes\n";
  for (const auto& [key, value] : f.metadata) {
    std::string shown;
    if (value.is_array() && value.size() > 8) {
      shown = "[" + std::to_string(value.size()) + " values: " +
              value[0].dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + ", ...]";
    } else {
      shown = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
    if (shown.size() > 200) shown = shown.substr(0, 197) + "...";
    s += "  " + key + " = " + shown + "\n";
  }
  for (const auto& t : f.tensors) {
    std::string dims;
    for (size_t i = 0; i < t.dims.size(); ++i) dims += (i ? " x " : "") + std::to_string(t.dims[i]);
    s += "  tensor " + t.name + " " + type_names.at(t.type) + " [" + dims + "] at " +
         std::to_string(t.offset) + ", " + std::to_string(t.bytes) + " bytes\n";
  }
  return s;
}

}  // namespace tiller
