// Fuzzes loading a SentencePiece model through Tiller's wrapper (the module libtiller_spm.so):
// any bytes as tokenizer.model must load or be a tiller::Error. A model that loads then encodes,
// decodes and names pieces without failing, and where Tiller's own BPE encoder takes the model
// (SpmBpe), it gives the library's ids.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = tiller::fuzz::write_input("tokenizer.model", data, size);
  try {
    tiller::Tokenizer tokenizer(path);
    const std::string text = "Once upon a time, \xc3\xa9t\xc3\xa9 \xf0\x9f\xa6\x8a!";
    const auto ids = tokenizer.encode(text, true, true);
    if (tokenizer.encoder_name() == "tiller-bpe") {
      for (const std::string& other : {text, std::string("  a\tb  \xe2\x96\x81 \xff\xc3 zz  ")})
        if (tokenizer.encode(other) != tokenizer.encode_with_library(other)) __builtin_trap();
    }
    (void)tokenizer.decode(ids);
    for (int64_t id : {int64_t{0}, tokenizer.vocab_size() - 1, tokenizer.bos_id(),
                       tokenizer.eos_id(), tokenizer.pad_id()})
      if (id >= 0 && id < tokenizer.vocab_size()) (void)tokenizer.piece(id);
  } catch (const tiller::Error&) {
  }
  return 0;
}
