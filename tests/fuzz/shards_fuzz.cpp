// Fuzzes the token shard reader on a damaged or forged train-00000.bin/.idx pair: the first four
// bytes say where the .bin ends and the .idx begins. The expected fingerprint and vocabulary are
// taken from the forged header itself, so that inputs reach the index and token checks. Opening
// and reading every document must either work or throw tiller::Error.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "common/data/shards.h"
#include "common/util/error.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  uint32_t split = 0;
  std::memcpy(&split, data, 4);
  data += 4;
  size -= 4;
  const size_t bin_size = std::min<size_t>(split, size);
  const std::string dir = tiller::fuzz::temp_dir() + "/shards";
  std::filesystem::create_directories(dir);
  tiller::fuzz::write_input("shards/train-00000.bin", data, bin_size);
  tiller::fuzz::write_input("shards/train-00000.idx", data + bin_size, size - bin_size);
  uint64_t fingerprint = 0, vocab = 0;
  if (bin_size >= 40) {
    std::memcpy(&fingerprint, data + 24, 8);
    std::memcpy(&vocab, data + 32, 8);
  }
  try {
    tiller::TokenShards shards(dir, "train", fingerprint,
                               static_cast<int64_t>(std::min<uint64_t>(vocab, 1u << 20)));
    for (int64_t d = 0; d < shards.document_count() && d < 1000; ++d) (void)shards.document(d);
  } catch (const tiller::Error&) {
  }
  return 0;
}
