// The C interface of libtiller_spm.so, the module that wraps SentencePiece.
//
// Why a module: Debian's libsentencepiece embeds protobuf-lite 3.14 and exports its symbols, while
// LibTorch loads the system libprotobuf 3.21. Linked into one process they interpose each other
// and crash at start-up. The module is dlopen'ed with RTLD_LOCAL | RTLD_DEEPBIND, so SentencePiece
// binds to its own protobuf and nothing else sees it. Buffers returned are malloc'ed; the caller
// frees them with tspm_free.
#pragma once
#include <stddef.h>
#include <stdint.h>

extern "C" {

// Loads a serialized model; returns a handle, or null with a message in *error (malloc'ed).
void* tspm_load(const char* bytes, size_t size, char** error);
void tspm_unload(void* handle);
void tspm_free(void* buffer);

// Encodes text to ids (*ids malloc'ed, *count set); returns 0, or -1 with *error.
int tspm_encode(void* handle, const char* text, size_t size, int32_t** ids, size_t* count,
                char** error);
// Decodes ids to text (*text malloc'ed, *size set); returns 0, or -1 with *error.
int tspm_decode(void* handle, const int32_t* ids, size_t count, char** text, size_t* size,
                char** error);
// Piece of an id (malloc'ed, NUL-terminated).
char* tspm_id_to_piece(void* handle, int32_t id);

// 0: piece count, 1: bos, 2: eos, 3: pad, 4: unk.
int32_t tspm_property(void* handle, int which);

// The kind of an id, numbered as GGUF's tokenizer.ggml.token_type: 1 normal, 2 unknown, 3 control,
// 5 unused, 6 byte; its score in *score.
int32_t tspm_piece_kind(void* handle, int32_t id, float* score);

// Trains a model with SentencePieceTrainer's flag string; returns 0, or -1 with *error.
int tspm_train(const char* flags, char** error);
}
