// Tokenizer: a SentencePiece model (tokenizer.model), or a Hugging Face tokenizer.json of the
// byte-level BPE kind (Llama 3, Qwen2, SmolLM; common/tokenizer/byte_level_bpe.h), with its
// BOS/EOS/PAD ids.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace tiller {

struct ModelConfig;
class ByteLevelBpe;
class SpmBpe;

class Tokenizer {
 public:
  // Loads a SentencePiece model file, or a tokenizer.json (by its .json name) with the special
  // tokens that tokenizer_config.json beside it names (BOS only where transformers adds one:
  // the post-processor's template, or add_bos_token); throws tiller::Error naming the path when
  // it cannot.
  explicit Tokenizer(const std::string& path);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // SentencePiece BPE models with the identity normalization encode through Tiller's own encoder
  // (common/tokenizer/spm_bpe.h), which gives exactly the library's ids; others through the
  // library. TILLER_SPM_LIBRARY=1 in the environment keeps every model on the library.
  std::vector<int64_t> encode(const std::string& text, bool add_bos = false,
                              bool add_eos = false) const;
  // encode through the SentencePiece library whatever encoder_name() says (the reference the
  // fast encoder is tested against). Throws tiller::Error for a tokenizer.json.
  std::vector<int64_t> encode_with_library(const std::string& text, bool add_bos = false,
                                           bool add_eos = false) const;
  // Which encoder encode() uses: "tiller-bpe" (SpmBpe), "sentencepiece" (the library) or
  // "byte-level-bpe" (a tokenizer.json).
  std::string encoder_name() const;
  // Why a SentencePiece model stays on the library ("" when it does not).
  const std::string& library_reason() const { return library_reason_; }
  std::string decode(const std::vector<int64_t>& ids) const;
  std::string piece(int64_t id) const;
  // A SentencePiece vocabulary entry: its piece, score and kind (as GGUF numbers token types: 1
  // normal, 2 unknown, 3 control, 5 unused, 6 byte). Throws tiller::Error for a tokenizer.json.
  struct PieceEntry {
    std::string piece;
    float score = 0;
    int32_t kind = 1;
  };
  PieceEntry sentencepiece_entry(int64_t id) const;
  bool is_sentencepiece() const { return bpe_ == nullptr; }
  // The special tokens a rendered chat template may spell out, with their ids: a tokenizer.json's
  // added tokens flagged special, a SentencePiece model's control pieces (<s>, </s>, [INST] ...).
  std::vector<std::pair<std::string, int64_t>> special_tokens() const;
  int64_t unk_id() const;

  int64_t vocab_size() const;
  // -1 where a tokenizer.json adds none (Qwen2, GPT-2): encode's add_bos then adds nothing.
  int64_t bos_id() const;
  int64_t eos_id() const;
  // The pad id: SentencePiece's own if the model defines one, else EOS (as for Llama).
  int64_t pad_id() const;
  const std::string& path() const { return path_; }

  // Throws tiller::Error when this vocabulary does not fit the model's embedding: a SentencePiece
  // model's must equal it; a tokenizer.json's may be smaller (embeddings padded, as Qwen2's).
  void check_matches(const ModelConfig& config, const std::string& model_where) const;

 private:
  bool same_vocabulary(const SpmBpe& fast) const;

  std::string path_;
  void* handle_ = nullptr;                   // a SentencePieceProcessor inside libtiller_spm.so
  std::shared_ptr<const ByteLevelBpe> bpe_;  // or this
  std::shared_ptr<const SpmBpe> fast_;       // beside handle_ when it reproduces the library
  std::string library_reason_;
  int64_t vocab_size_ = 0, bos_id_ = -1, eos_id_ = -1, pad_id_ = -1;
};

// The text of `ids` with every `eos` left out.
std::string completion_text(const Tokenizer& tok, const std::vector<int64_t>& ids, int64_t eos);

// The text `response` adds to `prompt`. Decoding the response alone would drop the space of its
// first piece ("▁and" -> "and"), as SentencePiece strips a leading space from what it decodes.
std::string continuation_text(const Tokenizer& tok, const std::vector<int64_t>& prompt,
                              const std::vector<int64_t>& response, int64_t eos);

// Trains a SentencePiece BPE model with byte fallback on a text file (at most max_sentences of its
// lines, sampled); writes DIR/tokenizer.model.
void train_tokenizer(const std::string& input, int64_t vocab_size, const std::string& out_dir,
                     uint64_t max_sentences = 2000000);

}  // namespace tiller
