// A Hugging Face tokenizer.json of the byte-level BPE kind: GPT-2's scheme, used by Llama 3,
// Qwen2 and SmolLM. What it reads:
//   normalizer     null, NFC or NFKC
//   pre_tokenizer  ByteLevel (GPT-2's split when use_regex), Split by a regex or a string
//                  (behavior Isolated), Digits, or a Sequence of those
//   model          BPE over byte-level symbols (merges as "a b" strings or [a, b] pairs,
//                  ignore_merges honoured)
//   added_tokens   matched in the text before anything else (longest first), lstrip/rstrip
// Anything else (another model type, normalizer, pre-tokenizer, single_word added tokens) is
// refused by name rather than tokenized differently from transformers.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace tiller {

class ByteLevelBpe {
 public:
  // Parses tokenizer.json; throws tiller::Error naming the path and what it cannot take.
  explicit ByteLevelBpe(const std::string& path);
  ~ByteLevelBpe();
  ByteLevelBpe(const ByteLevelBpe&) = delete;
  ByteLevelBpe& operator=(const ByteLevelBpe&) = delete;

  std::vector<int64_t> encode(const std::string& text) const;
  // Added tokens flagged special are left out (as SentencePiece leaves out BOS and EOS), and so
  // are ids without a token; a negative id is an Error.
  std::string decode(const std::vector<int64_t>& ids) const;
  // The token's text as the vocabulary spells it (byte-level symbols, e.g. "Ġthe").
  std::string piece(int64_t id) const;
  // One more than the largest id of the vocabulary and the added tokens.
  int64_t vocab_size() const;
  // The id of a token spelled exactly so (an added token or a vocabulary entry), or -1.
  int64_t id_of(const std::string& token) const;
  // The special token the post-processor puts before a text (TemplateProcessing's, as Llama 3's
  // newer tokenizer.json has it), or -1: transformers adds it as BOS.
  int64_t template_bos() const;
  // The added tokens flagged special, with their ids (what a chat template's text may hold).
  std::vector<std::pair<std::string, int64_t>> special_tokens() const;

  // What a GGUF export carries (export/gguf.cpp), as tokenizer.json holds it.
  struct Entry {
    std::string text;      // the vocabulary's spelling, an added token's content; "" for no token
    bool added = false;    // in added_tokens (its text is plain, not byte symbols)
    bool special = false;  // an added token flagged special
  };
  Entry entry(int64_t id) const;  // ids in [0, vocab_size())
  // The merges as "a b" in rank order, spelled as the vocabulary spells them.
  std::vector<std::string> merges() const;
  // The pre_tokenizer section, as JSON text.
  const std::string& pre_tokenizer_json() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace tiller
