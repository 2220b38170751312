#include "common/tokenizer/tokenizer.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>

#include <nlohmann/json.hpp>

#include "common/model/model_config.h"
#include "common/tokenizer/byte_level_bpe.h"
#include "common/tokenizer/module/sentencepiece_api.h"
#include "common/tokenizer/spm_bpe.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "tiller_build_paths.h"

// AddressSanitizer refuses RTLD_DEEPBIND (its interceptors would be bypassed), so a sanitized
// build (cmake/sanitize_fuzz.cmake) loads the module into a link-map namespace of its own instead:
// the same isolation from LibTorch's protobuf, with the (uninstrumented) module and SentencePiece
// on their own copy of libc and libstdc++. Buffers still go back through tspm_free.
#if defined(__SANITIZE_ADDRESS__)
#define TILLER_SPM_OWN_NAMESPACE 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TILLER_SPM_OWN_NAMESPACE 1
#endif
#endif

namespace tiller {

namespace {

// The functions of libtiller_spm.so, resolved once.
struct SentencePieceModule {
  decltype(&tspm_load) load;
  decltype(&tspm_unload) unload;
  decltype(&tspm_free) free;
  decltype(&tspm_encode) encode;
  decltype(&tspm_decode) decode;
  decltype(&tspm_id_to_piece) id_to_piece;
  decltype(&tspm_property) property;
  decltype(&tspm_piece_kind) piece_kind;
  decltype(&tspm_train) train;
};

std::string module_path() {
  if (const char* env = std::getenv("TILLER_SPM_MODULE")) return env;
  // Next to the running executable (build tree or installed bin/), else where CMake built it.
  char exe[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0) {
    exe[n] = '\0';
    auto beside = std::filesystem::path(exe).parent_path() / "libtiller_spm.so";
    if (std::filesystem::exists(beside)) return beside.string();
  }
  return TILLER_SPM_MODULE_PATH;
}

template <typename T>
void resolve(void* lib, const char* name, T& out, const std::string& path) {
  out = reinterpret_cast<T>(::dlsym(lib, name));
  check(out != nullptr, path + ": missing symbol " + name);
}

const SentencePieceModule& module() {
  static SentencePieceModule m{};
  static std::once_flag once;
  static std::string failure;
  std::call_once(once, [] {
    const std::string path = module_path();
#ifdef TILLER_SPM_OWN_NAMESPACE
    void* lib = ::dlmopen(LM_ID_NEWLM, path.c_str(), RTLD_NOW | RTLD_LOCAL);
#else
    // DEEPBIND keeps SentencePiece on its own embedded protobuf (see sentencepiece_api.h).
    void* lib = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
#endif
    if (lib == nullptr) {
      failure = std::string("cannot load the SentencePiece module: ") + ::dlerror();
      return;
    }
    try {
      resolve(lib, "tspm_load", m.load, path);
      resolve(lib, "tspm_unload", m.unload, path);
      resolve(lib, "tspm_free", m.free, path);
      resolve(lib, "tspm_encode", m.encode, path);
      resolve(lib, "tspm_decode", m.decode, path);
      resolve(lib, "tspm_id_to_piece", m.id_to_piece, path);
      resolve(lib, "tspm_property", m.property, path);
      resolve(lib, "tspm_piece_kind", m.piece_kind, path);
      resolve(lib, "tspm_train", m.train, path);
    } catch (const Error& e) {
      failure = e.what();
    }
  });
  check(failure.empty(), failure);
  return m;
}

// Takes ownership of a malloc'ed message from the module. SentencePiece's failed checks read
// "Internal: ./src/file.cc(580) [condition] words": only the words are for the user.
std::string take_message(char* message) {
  std::string out = message ? message : "unknown error";
  if (message) module().free(message);
  const size_t source = out.find(".cc(");
  const size_t end = source == std::string::npos ? source : out.find("] ", source);
  if (end != std::string::npos) out = out.substr(end + 2);
  return out;
}

}  // namespace

namespace {

bool is_tokenizer_json(const std::string& path) {
  return path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0;
}

// A special token as tokenizer_config.json names it: a string, or {"content": string, ...}.
int64_t special_token_id(const nlohmann::json& config, const char* key, const ByteLevelBpe& bpe,
                         const std::string& where) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return -1;
  const nlohmann::json& value = it->is_object() && it->contains("content") ? (*it)["content"] : *it;
  check(value.is_string(), where + ": " + key + " is neither a string nor {\"content\": string}");
  const int64_t id = bpe.id_of(value.get<std::string>());
  check(id >= 0, where + ": " + key + " '" + value.get<std::string>() +
                     "' is not a token of the tokenizer beside it");
  return id;
}

}  // namespace

Tokenizer::Tokenizer(const std::string& path) : path_(path) {
  check(path_exists(path), "tokenizer " + path + " does not exist");
  if (is_tokenizer_json(path)) {
    bpe_ = std::make_shared<const ByteLevelBpe>(path);
    vocab_size_ = bpe_->vocab_size();
    const std::string config_path =
        (std::filesystem::path(path).parent_path() / "tokenizer_config.json").string();
    // BOS as transformers adds it: the post-processor's template's, else tokenizer_config's
    // bos_token when add_bos_token says so. GPT-2 and Qwen2 add none (GPT-2 names a bos_token
    // all the same).
    bos_id_ = bpe_->template_bos();
    if (path_exists(config_path)) {
      const nlohmann::json config = read_json_file(config_path);
      check(config.is_object(), config_path + ": not a JSON object");
      const int64_t named_bos = special_token_id(config, "bos_token", *bpe_, config_path);
      auto add_bos = config.find("add_bos_token");
      if (bos_id_ < 0 && add_bos != config.end() && add_bos->is_boolean() && add_bos->get<bool>())
        bos_id_ = named_bos;
      eos_id_ = special_token_id(config, "eos_token", *bpe_, config_path);
      pad_id_ = special_token_id(config, "pad_token", *bpe_, config_path);
    }
    return;
  }
  const std::string bytes = read_file(path);
  check(!bytes.empty(), path + ": empty file, not a SentencePiece model");
  char* error = nullptr;
  handle_ = module().load(bytes.data(), bytes.size(), &error);
  if (handle_ == nullptr) {
    std::string why = take_message(error);
    if (why.empty()) why = "it does not parse as one";  // a failed ParseFromArray says nothing
    throw Error(path + ": not a SentencePiece model (" + why + ")");
  }
  vocab_size_ = module().property(handle_, 0);
  bos_id_ = module().property(handle_, 1);
  eos_id_ = module().property(handle_, 2);
  pad_id_ = module().property(handle_, 3);
  if (vocab_size_ <= 0) {
    module().unload(handle_);
    handle_ = nullptr;
    throw Error(path + ": SentencePiece model has no pieces");
  }
  const char* force_library = std::getenv("TILLER_SPM_LIBRARY");
  if (force_library != nullptr && std::string(force_library) == "1") {
    library_reason_ = "TILLER_SPM_LIBRARY=1";
    return;
  }
  std::shared_ptr<const SpmBpe> fast = SpmBpe::load(bytes, &library_reason_);
  if (fast && !same_vocabulary(*fast)) {
    fast.reset();
    library_reason_ = "its pieces as parsed differ from the library's";
  }
  fast_ = std::move(fast);
}

// Whether the fast encoder read the vocabulary the library holds: every piece, kind and score
// (a safety net under the wire-format reader; the load is the only cost).
bool Tokenizer::same_vocabulary(const SpmBpe& fast) const {
  const auto& pieces = fast.pieces();
  if (static_cast<int64_t>(pieces.size()) != vocab_size_ || fast.unk_id() != unk_id()) return false;
  for (int32_t id = 0; id < static_cast<int32_t>(pieces.size()); ++id) {
    float score = 0;
    const int32_t kind = module().piece_kind(handle_, id, &score);
    if (kind != pieces[id].type || std::memcmp(&score, &pieces[id].score, sizeof(float)) != 0)
      return false;
    char* piece = module().id_to_piece(handle_, id);
    const bool same = piece != nullptr && pieces[id].piece == piece;
    module().free(piece);
    if (!same) return false;
  }
  return true;
}

Tokenizer::~Tokenizer() {
  if (handle_ != nullptr) module().unload(handle_);
}

Tokenizer::Tokenizer(Tokenizer&& other) noexcept {
  *this = std::move(other);
}

Tokenizer& Tokenizer::operator=(Tokenizer&& other) noexcept {
  if (this == &other) return *this;
  if (handle_ != nullptr) module().unload(handle_);
  path_ = std::move(other.path_);
  handle_ = other.handle_;
  other.handle_ = nullptr;
  bpe_ = std::move(other.bpe_);
  fast_ = std::move(other.fast_);
  library_reason_ = std::move(other.library_reason_);
  vocab_size_ = other.vocab_size_;
  bos_id_ = other.bos_id_;
  eos_id_ = other.eos_id_;
  pad_id_ = other.pad_id_;
  return *this;
}

std::vector<int64_t> Tokenizer::encode(const std::string& text, bool add_bos, bool add_eos) const {
  if (bpe_) {
    check(!add_eos || eos_id_ >= 0, "tokenizer " + path_ + " defines no EOS token");
    std::vector<int64_t> out;
    if (add_bos && bos_id_ >= 0) out.push_back(bos_id_);
    const auto ids = bpe_->encode(text);
    out.insert(out.end(), ids.begin(), ids.end());
    if (add_eos) out.push_back(eos_id_);
    return out;
  }
  if (fast_) {
    std::vector<int64_t> out;
    out.reserve(text.size() / 3 + 2);
    if (add_bos) out.push_back(bos_id());
    fast_->encode(text, &out);
    if (add_eos) out.push_back(eos_id());
    return out;
  }
  return encode_with_library(text, add_bos, add_eos);
}

std::string Tokenizer::encoder_name() const {
  if (bpe_) return "byte-level-bpe";
  return fast_ ? "tiller-bpe" : "sentencepiece";
}

std::vector<int64_t> Tokenizer::encode_with_library(const std::string& text, bool add_bos,
                                                    bool add_eos) const {
  check(!bpe_, "tokenizer " + path_ + ": not a SentencePiece model (a tokenizer.json)");
  int32_t* ids = nullptr;
  size_t count = 0;
  char* error = nullptr;
  // Messages are built only on failure: encode and decode run once per example.
  if (module().encode(handle_, text.data(), text.size(), &ids, &count, &error) != 0)
    throw Error("tokenizer " + path_ + ": cannot encode text (" + take_message(error) + ")");
  std::vector<int64_t> out;
  out.reserve(count + 2);
  if (add_bos) out.push_back(bos_id());
  out.insert(out.end(), ids, ids + count);
  module().free(ids);
  if (add_eos) out.push_back(eos_id());
  return out;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
  if (bpe_) return bpe_->decode(ids);
  std::vector<int32_t> narrow;
  narrow.reserve(ids.size());
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size_)
      throw Error("tokenizer " + path_ + ": id " + std::to_string(id) +
                  " is outside the vocabulary of " + std::to_string(vocab_size_));
    narrow.push_back(static_cast<int32_t>(id));
  }
  char* text = nullptr;
  size_t size = 0;
  char* error = nullptr;
  if (module().decode(handle_, narrow.data(), narrow.size(), &text, &size, &error) != 0)
    throw Error("tokenizer " + path_ + ": cannot decode (" + take_message(error) + ")");
  std::string out(text, size);
  module().free(text);
  return out;
}

Tokenizer::PieceEntry Tokenizer::sentencepiece_entry(int64_t id) const {
  check(!bpe_, "tokenizer " + path_ + ": not a SentencePiece model (a tokenizer.json)");
  PieceEntry entry;
  entry.piece = piece(id);
  entry.kind = module().piece_kind(handle_, static_cast<int32_t>(id), &entry.score);
  return entry;
}

std::vector<std::pair<std::string, int64_t>> Tokenizer::special_tokens() const {
  if (bpe_) return bpe_->special_tokens();
  std::vector<std::pair<std::string, int64_t>> out;
  for (int64_t id = 0; id < vocab_size_; ++id) {
    float score = 0;
    if (module().piece_kind(handle_, static_cast<int32_t>(id), &score) == 3)
      out.emplace_back(piece(id), id);
  }
  return out;
}

int64_t Tokenizer::unk_id() const {
  return bpe_ ? -1 : module().property(handle_, 4);
}

std::string Tokenizer::piece(int64_t id) const {
  if (bpe_) return bpe_->piece(id);
  if (id < 0 || id >= vocab_size_)
    throw Error("tokenizer " + path_ + ": id " + std::to_string(id) +
                " is outside the vocabulary of " + std::to_string(vocab_size_));
  char* piece = module().id_to_piece(handle_, static_cast<int32_t>(id));
  std::string out = piece ? piece : "";
  module().free(piece);
  return out;
}

int64_t Tokenizer::vocab_size() const {
  return vocab_size_;
}
int64_t Tokenizer::bos_id() const {
  return bos_id_;
}
int64_t Tokenizer::eos_id() const {
  return eos_id_;
}
int64_t Tokenizer::pad_id() const {
  return pad_id_ >= 0 ? pad_id_ : eos_id_;
}

void Tokenizer::check_matches(const ModelConfig& config, const std::string& model_where) const {
  check(bpe_ ? vocab_size() <= config.vocab_size : vocab_size() == config.vocab_size,
        "vocabulary mismatch: tokenizer " + path_ + " has " + std::to_string(vocab_size()) +
            " pieces but model " + model_where + " has vocab_size " +
            std::to_string(config.vocab_size) + " (wrong tokenizer for this model?)");
  check(eos_id() >= 0, "tokenizer " + path_ + " defines no EOS piece" +
                           (bpe_ ? " (tokenizer_config.json beside it names eos_token)" : ""));
}

void train_tokenizer(const std::string& input, int64_t vocab_size, const std::string& out_dir,
                     uint64_t max_sentences) {
  check(path_exists(input), "tokenizer training input " + input + " does not exist");
  check(!is_directory(input),
        "tokenizer training input " + input + " is a directory, expected a text file");
  check(vocab_size >= 260 && vocab_size <= 1000000,
        "tokenizer vocab size must be in [260, 1000000] (byte fallback needs 256 + 4), got " +
            std::to_string(vocab_size));
  check(input.find(' ') == std::string::npos && out_dir.find(' ') == std::string::npos,
        "tokenizer training: paths may not contain spaces (SentencePiece's flag syntax)");
  make_directories(out_dir);
  // Trained under a temporary name and renamed: a killed training leaves no half-written model.
  const std::string prefix = out_dir + "/tokenizer.training";
  // Llama's conventions: unk=0, bos=1, eos=2, no pad piece, byte fallback, digits split.
  const std::string flags = "--input=" + input + " --model_prefix=" + prefix +
                            " --vocab_size=" + std::to_string(vocab_size) +
                            " --model_type=bpe --character_coverage=1.0 --byte_fallback=true"
                            " --split_digits=true --allow_whitespace_only_pieces=true"
                            " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1"
                            " --normalization_rule_name=identity --remove_extra_whitespaces=false"
                            " --input_sentence_size=" +
                            std::to_string(max_sentences) +
                            " --shuffle_input_sentence=true --minloglevel=2 --num_threads=2";
  char* error = nullptr;
  if (module().train(flags.c_str(), &error) != 0)
    throw Error("tokenizer training on " + input + " failed: " + take_message(error));
  remove_all(prefix + ".vocab");
  check(std::rename((prefix + ".model").c_str(), (out_dir + "/tokenizer.model").c_str()) == 0,
        "cannot write " + out_dir + "/tokenizer.model");
}

std::string completion_text(const Tokenizer& tok, const std::vector<int64_t>& ids, int64_t eos) {
  std::vector<int64_t> kept;
  for (int64_t id : ids)
    if (id != eos) kept.push_back(id);
  return tok.decode(kept);
}

std::string continuation_text(const Tokenizer& tok, const std::vector<int64_t>& prompt,
                              const std::vector<int64_t>& response, int64_t eos) {
  std::vector<int64_t> all = prompt;
  all.insert(all.end(), response.begin(), response.end());
  const std::string head = tok.decode(prompt), full = completion_text(tok, all, eos);
  if (full.compare(0, head.size(), head) == 0) return full.substr(head.size());
  return completion_text(tok, response, eos);
}

}  // namespace tiller
