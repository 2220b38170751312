// Fuzzes what `data prepare` does to bytes from outside: the input reader (plain text in each
// document mode, JSONL, gzip) on a file holding the input, then every text step and the MinHash
// signature on each document it yields. The first byte picks the file's kind. Bad input must be a
// tiller::Error; a document must come out valid UTF-8.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/recipe/config_reader.h"
#include "common/util/error.h"
#include "prepare/inputs.h"
#include "prepare/minhash.h"
#include "prepare/text_steps.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

const tiller::TextSteps& every_step() {
  static const tiller::TextSteps steps = [] {
    const nlohmann::json config = {
        {"normalize", true},      {"boilerplate", true},       {"c4", true},
        {"gopher_quality", true}, {"gopher_repetition", true}, {"pii", true}};
    tiller::ConfigErrors errors;
    tiller::ConfigReader r(config, "", errors);
    return tiller::read_text_steps(r, errors);
  }();
  return steps;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  static const char* const kNames[] = {"in.txt", "in.txt", "in.txt", "in.jsonl", "in.txt.gz"};
  static const char* const kModes[] = {"lines", "paragraphs", "file", "lines", "lines"};
  const size_t kind = data[0] % 5;
  tiller::InputSpec spec;
  spec.path = tiller::fuzz::write_input(kNames[kind], data + 1, size - 1);
  spec.documents = kModes[kind];
  tiller::InputOptions options;
  options.max_document_bytes = 4096;
  options.bad_documents = data[0] & 0x80 ? "skip" : "error";
  tiller::MinHashOptions minhash;
  minhash.permutations = 16;
  minhash.bands = 4;
  minhash.rows = 4;
  try {
    tiller::DocumentStream stream({spec}, options);
    tiller::Document document;
    while (stream.next(document)) {
      if (!tiller::is_utf8(document.text)) __builtin_trap();
      const auto outcome = tiller::apply_text_steps(document.text, every_step());
      if (outcome.kept() && !tiller::is_utf8(outcome.text)) __builtin_trap();
      (void)tiller::minhash_signature(outcome.kept() ? outcome.text : document.text, minhash);
    }
  } catch (const tiller::Error&) {
  }
  return 0;
}
