// llama2.c checkpoints: import of the legacy and v1 (fp32) formats, export of the legacy format.
#pragma once
#include <string>

#include "common/model/transformer.h"

namespace tiller {

// Reads a llama2.c .bin file into a Llama model in Hugging Face layout (wq/wk rows permuted
// from Meta's interleaved RoPE pairs to rotate_half). Every size is checked against the file.
Transformer import_llama2c(const std::string& path);
// The same from the file's bytes in memory; errors name `where`.
Transformer import_llama2c_bytes(const std::string& bytes, const std::string& where);

// HF's rotate_half rows of wq / wk ([heads * head_dim, columns]) -> Meta's interleaved rotary
// pairs, per head: what llama2.c and llama.cpp's GGUF files hold.
torch::Tensor permute_to_meta(const torch::Tensor& w, int64_t heads);

// Writes the model as a llama2.c legacy .bin (the inverse of import_llama2c).
void export_llama2c(TransformerImpl& model, const std::string& path);

}  // namespace tiller
