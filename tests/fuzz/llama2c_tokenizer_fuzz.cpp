// Fuzzes the reader of llama2.c's tokenizer.bin (common/io/llama2c_tokenizer.h): entries read to
// the end of the file, each length checked against it, and turned into a SentencePiece model's
// bytes. Bad input must be a tiller::Error.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/io/llama2c_tokenizer.h"
#include "common/util/error.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = tiller::fuzz::write_input("tokenizer.bin", data, size);
  try {
    (void)tiller::sentencepiece_model_from_llama2c_tokenizer(path, 0);
  } catch (const tiller::Error&) {
  }
  return 0;
}
