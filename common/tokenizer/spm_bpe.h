// SpmBpe: a fast encoder for SentencePiece BPE models that gives exactly the ids SentencePiece's
// own encoder gives (bpe_model.cc Model::SampleEncode with alpha 0, after normalizer.cc's
// Normalizer::Normalize), for the configurations it can reproduce bit for bit:
//   - trainer_spec.model_type BPE;
//   - no precompiled_charsmap (normalization rule "identity"): the normalizer then only replaces
//     malformed UTF-8 with U+FFFD, adds the dummy prefix, escapes spaces as U+2581 and, when the
//     model says so, removes extra whitespace;
//   - escape_whitespaces on, treat_whitespace_as_suffix off;
//   - no USER_DEFINED pieces (they would be frozen symbols matched before the characters) and no
//     UNUSED pieces (SentencePiece resegments those through a map built over the whole text).
// Anything else stays on the library (Tokenizer keeps it as the reference and the fallback).
//
// The merges run on a table of (left symbol, right symbol) -> (merged piece, score) built at load,
// and words (see split_words_ in spm_bpe.cpp) are encoded once per thread and cached.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace tiller {

class SpmBpe {
 public:
  // A piece of the model as its proto says (type as ModelProto.SentencePiece.Type: 1 normal,
  // 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte).
  struct Piece {
    std::string piece;
    float score = 0;
    int32_t type = 1;
  };

  // Parses a serialized ModelProto; null with *why set when this encoder cannot reproduce the
  // library on it (or the bytes do not parse).
  static std::unique_ptr<const SpmBpe> load(std::string_view model_bytes, std::string* why);

  // Appends the ids of `text` to *out.
  void encode(std::string_view text, std::vector<int64_t>* out) const;

  const std::vector<Piece>& pieces() const { return pieces_; }
  int32_t unk_id() const { return unk_id_; }
  // Whether the text is cut into cached words (false when a piece has U+2581 after another
  // character: then the whole text is one word, encoded without the cache).
  bool splits_words() const { return split_words_; }

  struct Merge {
    int32_t merged = -1;
    float score = 0;
  };

 private:
  // The pieces by string: NORMAL ones, and the rest (reserved: control, unknown, byte).
  struct PieceIndex {
    std::unordered_map<std::string_view, int32_t> normal, reserved;
  };

  SpmBpe() = default;
  // The steps of load(), in order: each false with *why set when the model cannot be reproduced.
  bool build(std::string* why);
  bool index_pieces(PieceIndex* index, std::string* why);
  void assign_char_symbols(const PieceIndex& index);
  void build_merge_table(const PieceIndex& index);
  bool no_piece_spans_a_word_boundary() const;
  void normalize(std::string_view text, std::string* out) const;
  void encode_pieces(std::string_view text, std::vector<int64_t>* out) const;
  void encode_word(std::string_view word, std::vector<int32_t>* out) const;
  const Merge* find_merge(int32_t left, int32_t right) const;
  int32_t char_symbol(std::string_view ch) const;
  void emit_symbol(int32_t symbol, std::string_view surface, std::vector<int32_t>* out) const;

  std::vector<Piece> pieces_;
  bool byte_fallback_ = false, add_dummy_prefix_ = true, remove_extra_whitespaces_ = true;
  bool split_words_ = true;
  int32_t unk_id_ = -1;
  uint64_t uid_ = 0;  // which thread-local cache is this encoder's
  int32_t byte_ids_[256] = {};
  // Symbols: ids below pieces_.size() are NORMAL pieces; ids from pieces_.size() up are single
  // characters that are no normal piece but occur inside one (or are a reserved piece), with the
  // ids they encode to in char_output_. A character with no symbol id never merges.
  int32_t ascii_symbol_[128] = {};
  std::unordered_map<uint32_t, int32_t> char_symbol_;  // UTF-8 bytes packed little-endian
  std::vector<std::vector<int32_t>> char_output_;
  // (left, right) -> merge, open addressing; key 0 is empty (no symbol pair packs to 0 since
  // the key stores id + 1).
  std::vector<uint64_t> merge_keys_;
  std::vector<Merge> merge_values_;
  uint64_t merge_mask_ = 0;
};

}  // namespace tiller
