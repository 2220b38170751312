// Fuzzes a Hugging Face tokenizer.json through Tiller's byte-level BPE reader: any bytes must load
// or be a tiller::Error. One that loads then encodes a fixed text and the input's own bytes (any
// bytes, UTF-8 or not), and decodes what it encoded, without failing.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = tiller::fuzz::write_input("tokenizer.json", data, size);
  try {
    tiller::Tokenizer tokenizer(path);
    const std::string input(reinterpret_cast<const char*>(data), size);
    for (const std::string& text :
         {std::string("It's 12345 <|end|> the \xc3\xa9t\xc3\xa9 \xf0\x9f\xa6\x8a!\n\n  x"),
          input}) {
      const auto ids = tokenizer.encode(text, true, false);
      (void)tokenizer.decode(ids);
      for (int64_t id : ids) (void)tokenizer.piece(id);
    }
  } catch (const tiller::Error&) {
  }
  return 0;
}
