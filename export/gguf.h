// GGUF export: a Hugging Face Llama directory as one GGUF v3 file that llama.cpp (and Ollama, LM
// Studio) load, written from the published specification (ggml's docs/gguf.md) and llama.cpp's
// conversion conventions (convert_hf_to_gguf.py): llama.* hyper-parameters, the vocabulary as
// tokenizer.ggml.* (SentencePiece as "llama"; a byte-level BPE tokenizer.json as "gpt2" with its
// merges and llama.cpp's name for its pre-tokenizer), the chat template, tensors under llama.cpp's
// names with q/k rows in Meta's interleaved rotary order, 32-byte alignment.
//
// Types: f32, f16, bf16, q8_0 and q4_0 (ggml's reference round-to-nearest blocks of 32). Norms stay
// f32; a matrix whose rows do not divide into blocks of 32 is written in f16 under q8_0 and q4_0,
// as llama.cpp's converter falls back. Not built: attention biases, RoPE scaling, k-quants, and
// byte-level BPE pre-tokenizers llama.cpp has no name for.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace tiller {

// ggml's type numbers of what export_gguf writes.
enum class GgmlType : uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8, BF16 = 30 };

// The bytes ggml stores for `count` values of `type` (count a multiple of 32 for q8_0 and q4_0).
int64_t ggml_bytes(GgmlType type, int64_t count);

// ggml's reference quantisation of `count` floats (a multiple of 32) into blocks: q8_0 holds an
// fp16 scale amax/127 and 32 int8; q4_0 an fp16 scale max/-8 (max: the value of largest magnitude,
// with its sign) and 32 4-bit values offset by 8, the first half of the block in the low nibbles.
std::string quantize_q8_0(const float* values, int64_t count);
std::string quantize_q4_0(const float* values, int64_t count);

struct GgufExportSummary {
  std::string type;                      // as asked: f32, f16, bf16, q8_0, q4_0
  int64_t tensors = 0, bytes = 0;        // the file's tensors and size
  std::vector<std::string> f16_instead;  // matrices whose rows do not divide into blocks
};

// Writes `model_dir` (a causal LM with a SentencePiece tokenizer.model or a byte-level BPE
// tokenizer.json) as `out_path` in `type`.
// Nothing is written on error: one tiller::Error naming what cannot be carried and where.
GgufExportSummary export_gguf(const std::string& model_dir, const std::string& type,
                              const std::string& out_path);

}  // namespace tiller
