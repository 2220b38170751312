// GPT-2's byte-level symbols for tokenizer.json fixtures, written out from bytes_to_unicode's
// definition (shared by the byte-level BPE and GGUF tests, apart from Tiller's own table).
#pragma once
#include <string>

namespace tiller::test {

// The symbols GPT-2's byte-level BPE spells a UTF-8 string's bytes with ("Ġ" for a space): a
// printable byte stands for itself, the n-th unprintable one for U+0100 + n.
inline std::string byte_level_symbols(const std::string& text) {
  const auto printable = [](int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  };
  std::string out;
  for (unsigned char byte : text) {
    int code = byte;
    if (!printable(byte)) {
      code = 256;
      for (int b = 0; b < byte; ++b) code += printable(b) ? 0 : 1;
    }
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else {
      out += static_cast<char>(0xC0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3F));
    }
  }
  return out;
}

}  // namespace tiller::test
