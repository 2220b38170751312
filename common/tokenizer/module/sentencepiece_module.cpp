// libtiller_spm.so: SentencePiece behind a C interface (see sentencepiece_api.h for why).
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <ext/stdio_sync_filebuf.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <new>
#include <sstream>
#include <string>
#include <unordered_map>

#include "common/tokenizer/module/sentencepiece_api.h"

namespace {

char* copy_string(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out == nullptr) return nullptr;
  std::memcpy(out, s.data(), s.size());
  out[s.size()] = '\0';
  return out;
}

// Under RTLD_DEEPBIND this module and SentencePiece bind std::cout, std::cerr and std::clog to
// libstdc++'s own objects. An executable that uses those streams holds copy-relocated duplicates,
// and libstdc++'s start-up constructs the duplicates only: the originals stay zeroed, and the
// trainer's first log line crashed in ostream::sentry. Construct the originals here when so.
struct StandardStreams {
  StandardStreams() {
    static __gnu_cxx::stdio_sync_filebuf<char> out(stdout), err(stderr);
    // A constructed ostream starts with its vtable pointer; a zeroed one was never constructed.
    auto zeroed = [](std::ostream& s) { return *reinterpret_cast<void**>(&s) == nullptr; };
    if (zeroed(std::cout)) new (&std::cout) std::ostream(&out);
    if (zeroed(std::cerr)) {
      new (&std::cerr) std::ostream(&err);
      std::cerr.setf(std::ios_base::unitbuf);
    }
    if (zeroed(std::clog)) new (&std::clog) std::ostream(&err);
  }
};
const StandardStreams standard_streams;  // at dlopen, before any call into SentencePiece

sentencepiece::SentencePieceProcessor* processor(void* handle) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(handle);
}

// Runs a call into SentencePiece, which throws from inside on some malformed input (Darts on a
// zero-length piece, found by the tokenizer fuzzer): nothing may cross this C boundary. Returns
// 0, or -1 with *error set to the status or to `on_exception` and the exception's text.
template <class Body>
int guarded(char** error, const char* on_exception, Body body) {
  try {
    const auto status = body();
    if (status.ok()) return 0;
    *error = copy_string(status.ToString());
  } catch (const std::exception& e) {
    *error = copy_string(std::string(on_exception) + " (" + e.what() + ")");
  }
  return -1;
}

}  // namespace

extern "C" {

void* tspm_load(const char* bytes, size_t size, char** error) {
  auto* sp = new sentencepiece::SentencePieceProcessor();
  if (guarded(error, "malformed model",
              [&] { return sp->LoadFromSerializedProto(std::string(bytes, size)); }) != 0) {
    delete sp;
    return nullptr;
  }
  return sp;
}

void tspm_unload(void* handle) {
  delete processor(handle);
}
void tspm_free(void* buffer) {
  std::free(buffer);
}

int tspm_encode(void* handle, const char* text, size_t size, int32_t** ids, size_t* count,
                char** error) {
  std::vector<int> out;
  if (guarded(error, "encoding failed",
              [&] { return processor(handle)->Encode(std::string(text, size), &out); }) != 0)
    return -1;
  *count = out.size();
  *ids = static_cast<int32_t*>(std::malloc(sizeof(int32_t) * (out.empty() ? 1 : out.size())));
  for (size_t i = 0; i < out.size(); ++i) (*ids)[i] = out[i];
  return 0;
}

int tspm_decode(void* handle, const int32_t* ids, size_t count, char** text, size_t* size,
                char** error) {
  std::vector<int> in(ids, ids + count);
  std::string out;
  if (guarded(error, "decoding failed", [&] { return processor(handle)->Decode(in, &out); }) != 0)
    return -1;
  *size = out.size();
  *text = copy_string(out);
  return 0;
}

char* tspm_id_to_piece(void* handle, int32_t id) {
  return copy_string(processor(handle)->IdToPiece(id));
}

int32_t tspm_property(void* handle, int which) {
  auto* sp = processor(handle);
  switch (which) {
    case 0:
      return sp->GetPieceSize();
    case 1:
      return sp->bos_id();
    case 2:
      return sp->eos_id();
    case 3:
      return sp->pad_id();
    case 4:
      return sp->unk_id();
    default:
      return -1;
  }
}

int32_t tspm_piece_kind(void* handle, int32_t id, float* score) {
  auto* sp = processor(handle);
  *score = sp->GetScore(id);
  if (sp->IsUnknown(id)) return 2;
  if (sp->IsControl(id)) return 3;
  if (sp->IsUnused(id)) return 5;
  if (sp->IsByte(id)) return 6;
  return 1;
}

int tspm_train(const char* flags, char** error) {
  // "--key=value ..." as a map, as Train(string) splits it, but without its unconditional
  // "Running command" log line: the map overload applies --minloglevel before logging anything.
  std::unordered_map<std::string, std::string> kwargs;
  std::istringstream words(flags);
  for (std::string word; words >> word;) {
    if (word.rfind("--", 0) == 0) word.erase(0, 2);
    const size_t eq = word.find('=');
    kwargs.emplace(word.substr(0, eq), eq == std::string::npos ? "" : word.substr(eq + 1));
  }
  return guarded(error, "training failed",
                 [&] { return sentencepiece::SentencePieceTrainer::Train(kwargs); });
}
}
