// Benchmarks behind `tiller bench`: each prints a table, or JSON with --json.
#pragma once
#include <string>
#include <vector>

namespace tiller::bench {

struct DecodeOptions {
  std::string model_dir;  // an HF directory, or empty to use `shape` with random weights
  std::string shape = "llama-15m";
  std::vector<int64_t> batches = {1, 16};
  int64_t prompt_tokens = 16;
  int64_t new_tokens = 64;
  int repeats = 3;
  bool json = false;
};

// Measures prefill and decode tokens/s of the generator at each batch size.
void run_decode(const DecodeOptions& options);

}  // namespace tiller::bench
