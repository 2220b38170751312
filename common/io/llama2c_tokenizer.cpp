#include "common/io/llama2c_tokenizer.h"

#include <cctype>
#include <cstring>
#include <set>
#include <vector>

#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

namespace {

const std::string kSpaceMark = "\xe2\x96\x81";  // ▁, SentencePiece's space

// Protocol buffers' wire format, the little of it a ModelProto needs.
void put_varint(std::string& out, uint64_t value) {
  while (value >= 0x80) {
    out += static_cast<char>((value & 0x7f) | 0x80);
    value >>= 7;
  }
  out += static_cast<char>(value);
}
void put_key(std::string& out, int field, int wire_type) {
  put_varint(out, static_cast<uint64_t>(field) << 3 | static_cast<uint64_t>(wire_type));
}
void put_int(std::string& out, int field, int64_t value) {  // int32/enum/bool: two's complement
  put_key(out, field, 0);
  put_varint(out, static_cast<uint64_t>(value));
}
void put_bytes(std::string& out, int field, const std::string& bytes) {
  put_key(out, field, 2);
  put_varint(out, bytes.size());
  out += bytes;
}
void put_float(std::string& out, int field, float value) {
  put_key(out, field, 5);
  char raw[4];
  std::memcpy(raw, &value, 4);
  out.append(raw, 4);
}

struct Entry {
  std::string piece;
  float score;
};

std::vector<Entry> read_entries(const std::string& path) {
  const std::string bytes = read_file(path);
  size_t pos = 0;
  const auto take = [&](void* out, size_t n, const std::string& what) {
    check(pos + n <= bytes.size(), path + ": the file ends inside " + what + " (at byte " +
                                       std::to_string(pos) +
                                       "): truncated, or not a llama2.c tokenizer.bin");
    std::memcpy(out, bytes.data() + pos, n);
    pos += n;
  };
  int32_t max_length = 0;
  take(&max_length, 4, "the header");
  check(max_length > 0 && max_length <= 4096, path + ": max_token_length " +
                                                  std::to_string(max_length) +
                                                  " is not a llama2.c tokenizer.bin's (1 to 4096)");
  std::vector<Entry> entries;
  while (pos < bytes.size()) {
    const std::string what = "entry " + std::to_string(entries.size());
    Entry e;
    int32_t length = 0;
    take(&e.score, 4, what);
    take(&length, 4, what);
    check(length > 0 && length <= max_length, path + ": " + what + " is " + std::to_string(length) +
                                                  " bytes long, outside 1 to " +
                                                  "max_token_length " + std::to_string(max_length));
    e.piece.resize(static_cast<size_t>(length));
    take(e.piece.data(), static_cast<size_t>(length), what);
    entries.push_back(std::move(e));
  }
  return entries;
}

bool is_byte_piece(const std::string& p) {
  return p.size() == 6 && p.compare(0, 3, "<0x") == 0 && p[5] == '>' &&
         std::isxdigit(static_cast<unsigned char>(p[3])) &&
         std::isxdigit(static_cast<unsigned char>(p[4]));
}

}  // namespace

std::string sentencepiece_model_from_llama2c_tokenizer(const std::string& path,
                                                       int64_t vocab_size) {
  std::vector<Entry> entries = read_entries(path);
  check(vocab_size <= 0 || static_cast<int64_t>(entries.size()) == vocab_size,
        path + ": " + std::to_string(entries.size()) +
            " entries, but the checkpoint's vocabulary "
            "has " +
            std::to_string(vocab_size));
  enum Kind { kNormal = 1, kUnknown = 2, kControl = 3, kByte = 6 };
  int64_t unk = -1, bos = -1, eos = -1;
  bool bytes = false;
  std::set<std::string> seen;
  std::string pieces;
  for (size_t id = 0; id < entries.size(); ++id) {
    Entry& e = entries[id];
    int kind = kNormal;
    if (e.piece == "<unk>") {
      kind = kUnknown;
      unk = static_cast<int64_t>(id);
    } else if (e.piece == "\n<s>\n") {
      e.piece = "<s>";
      kind = kControl;
      bos = static_cast<int64_t>(id);
    } else if (e.piece == "\n</s>\n") {
      e.piece = "</s>";
      kind = kControl;
      eos = static_cast<int64_t>(id);
    } else if (is_byte_piece(e.piece)) {
      kind = kByte;
      bytes = true;
    } else {
      std::string marked;
      for (char ch : e.piece) marked += ch == ' ' ? kSpaceMark : std::string(1, ch);
      e.piece = std::move(marked);
    }
    check(seen.insert(e.piece).second,
          path + ": entry " + std::to_string(id) + " repeats the piece of an earlier one");
    std::string message;
    put_bytes(message, 1, e.piece);
    put_float(message, 2, e.score);
    if (kind != kNormal) put_int(message, 3, kind);
    put_bytes(pieces, 1, message);
  }
  check(unk >= 0, path + ": no <unk> entry; a SentencePiece model needs one");

  std::string trainer;
  put_int(trainer, 3, 2);  // model_type: BPE
  put_int(trainer, 4, static_cast<int64_t>(entries.size()));
  put_int(trainer, 35, bytes ? 1 : 0);  // byte_fallback
  put_int(trainer, 40, unk);
  put_int(trainer, 41, bos);
  put_int(trainer, 42, eos);
  put_int(trainer, 43, -1);  // pad_id: none
  std::string normalizer;
  put_bytes(normalizer, 1, "identity");
  put_int(normalizer, 3, 1);  // add_dummy_prefix, as run.c's encode
  put_int(normalizer, 4, 0);  // remove_extra_whitespaces: no, run.c keeps them
  put_int(normalizer, 5, 1);  // escape_whitespaces: " " -> ▁

  std::string model = pieces;
  put_bytes(model, 2, trainer);
  put_bytes(model, 3, normalizer);
  return model;
}

}  // namespace tiller
