// llama2.c's own tokenizer.bin (what its run.c reads: the SentencePiece vocabulary with scores,
// spaces for "▁", BOS and EOS as "\n<s>\n" and "\n</s>\n") turned back into a SentencePiece BPE
// model, so that a checkpoint published with a tokenizer.bin and no tokenizer.model converts.
#pragma once
#include <cstdint>
#include <string>

namespace tiller {

// The serialized SentencePiece ModelProto of `path`'s vocabulary: BPE by its scores, byte
// fallback when it has <0xNN> pieces, "<unk>", "<s>", "</s>" as unknown and control pieces, no
// pad; normalization as run.c encodes: a dummy prefix, whitespace kept as written (no removal of
// extra spaces). `vocab_size` > 0 is the checkpoint's: the file must hold exactly that many
// entries. Throws tiller::Error naming the file and what is wrong with it.
std::string sentencepiece_model_from_llama2c_tokenizer(const std::string& path, int64_t vocab_size);

}  // namespace tiller
