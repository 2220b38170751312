#include "common/tokenizer/spm_bpe.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <functional>

namespace tiller {

namespace {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581, SentencePiece's escaped space
constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";
constexpr int32_t kUnknownType = 2, kUserDefinedType = 4, kUnusedType = 5, kByteType = 6;
constexpr int64_t kBpe = 2;

// The length of the well-formed UTF-8 character at the start of s, or 0 when it is malformed:
// string_util::IsValidDecodeUTF8 (its DecodeUTF8 and IsValidCodepoint) exactly, where a literal
// U+FFFD counts as well-formed.
size_t valid_char_length(const unsigned char* s, size_t n) {
  const uint32_t c0 = s[0];
  if (c0 < 0x80) return 1;
  auto trail = [](uint32_t c) { return (c & 0xC0) == 0x80; };
  auto valid = [](uint32_t c) { return c < 0xD800 || (c >= 0xE000 && c <= 0x10FFFF); };
  if (n >= 2 && (c0 & 0xE0) == 0xC0) {
    const uint32_t cp = ((c0 & 0x1F) << 6) | (s[1] & 0x3F);
    if (trail(s[1]) && cp >= 0x80 && valid(cp)) return 2;
  } else if (n >= 3 && (c0 & 0xF0) == 0xE0) {
    const uint32_t cp = ((c0 & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    if (trail(s[1]) && trail(s[2]) && cp >= 0x800 && valid(cp)) return 3;
  } else if (n >= 4 && (c0 & 0xF8) == 0xF0) {
    const uint32_t cp =
        ((c0 & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    if (trail(s[1]) && trail(s[2]) && trail(s[3]) && cp >= 0x10000 && valid(cp)) return 4;
  }
  return 0;
}

// string_util::OneCharLen: the length a lead byte announces (the BPE model splits the normalized
// text, always well-formed, into characters with it).
inline size_t one_char_length(unsigned char lead) {
  static constexpr unsigned char kLengths[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLengths[lead >> 4];
}

inline uint32_t pack_char(std::string_view ch) {
  uint32_t key = 0;
  std::memcpy(&key, ch.data(), std::min<size_t>(ch.size(), 4));
  return key;
}

// A minimal protobuf wire-format reader: enough for ModelProto's few fields.
struct WireReader {
  const unsigned char* p;
  const unsigned char* end;
  bool ok = true;

  explicit WireReader(std::string_view bytes)
      : p(reinterpret_cast<const unsigned char*>(bytes.data())), end(p + bytes.size()) {}

  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) break;
      const unsigned char c = *p++;
      value |= static_cast<uint64_t>(c & 0x7F) << shift;
      if (c < 0x80) return value;
    }
    ok = false;
    return 0;
  }

  // The next field: its number, wire type, varint/fixed value or length-delimited bytes. False at
  // the end or on malformed input (ok then false).
  bool next(uint32_t* field, uint32_t* wire, uint64_t* value, std::string_view* bytes) {
    if (!ok || p >= end) return false;
    const uint64_t key = varint();
    *field = static_cast<uint32_t>(key >> 3);
    *wire = static_cast<uint32_t>(key & 7);
    switch (*wire) {
      case 0:
        *value = varint();
        break;
      case 1:
        if (end - p < 8)
          ok = false;
        else {
          std::memcpy(value, p, 8);
          p += 8;
        }
        break;
      case 5: {
        uint32_t v = 0;
        if (end - p < 4)
          ok = false;
        else {
          std::memcpy(&v, p, 4);
          p += 4;
        }
        *value = v;
        break;
      }
      case 2: {
        const uint64_t n = varint();
        if (!ok || n > static_cast<uint64_t>(end - p))
          ok = false;
        else {
          *bytes = std::string_view(reinterpret_cast<const char*>(p), n);
          p += n;
        }
        break;
      }
      default:
        ok = false;  // groups: not in ModelProto
    }
    return ok;
  }
};

// Encoded words of one encoder on one thread: an open-addressing table over two arenas, cleared
// whole when full (no eviction bookkeeping on the hot path).
struct WordCache {
  static constexpr size_t kSlots = size_t{1} << 16, kMaxUsed = kSlots / 2;
  static constexpr size_t kMaxKeyBytes = size_t{4} << 20, kMaxIds = size_t{2} << 20;
  static constexpr size_t kMaxWordBytes = 256;  // longer words are encoded every time
  struct Slot {
    uint64_t hash = 0;  // 0: empty
    uint32_t key_offset = 0, key_size = 0, ids_offset = 0, ids_size = 0;
  };
  uint64_t owner = 0;
  std::vector<Slot> slots;
  std::string keys;
  std::vector<int32_t> ids;
  size_t used = 0;

  void reset(uint64_t new_owner) {
    owner = new_owner;
    slots.assign(kSlots, Slot{});
    keys.clear();
    ids.clear();
    used = 0;
  }
};

// A few caches per thread, one per encoder in use there (an encoder's uid is never reused).
WordCache& thread_cache(uint64_t uid) {
  constexpr int kCaches = 4;
  thread_local WordCache caches[kCaches];
  thread_local int victim = 0;
  for (auto& cache : caches)
    if (cache.owner == uid) return cache;
  WordCache& cache = caches[victim];
  victim = (victim + 1) % kCaches;
  cache.reset(uid);
  return cache;
}

std::atomic<uint64_t> next_uid{1};

// Whether the bytes are exactly one well-formed UTF-8 character.
bool is_single_char(std::string_view s) {
  return valid_char_length(reinterpret_cast<const unsigned char*>(s.data()), s.size()) == s.size();
}

}  // namespace

std::unique_ptr<const SpmBpe> SpmBpe::load(std::string_view model_bytes, std::string* why) {
  std::unique_ptr<SpmBpe> bpe(new SpmBpe());
  int64_t model_type = 1;  // UNIGRAM, the proto's default
  bool escape_whitespaces = true, whitespace_as_suffix = false;
  std::string_view charsmap;
  WireReader model(model_bytes);
  uint32_t field = 0, wire = 0;
  uint64_t value = 0;
  std::string_view bytes;
  while (model.next(&field, &wire, &value, &bytes)) {
    if (wire != 2) continue;
    WireReader sub(bytes);
    uint32_t f = 0, w = 0;
    uint64_t v = 0;
    std::string_view b;
    if (field == 1) {  // ModelProto.pieces
      Piece piece;
      while (sub.next(&f, &w, &v, &b)) {
        if (f == 1 && w == 2) piece.piece = std::string(b);
        if (f == 2 && w == 5) {
          const uint32_t bits = static_cast<uint32_t>(v);
          std::memcpy(&piece.score, &bits, 4);
        }
        if (f == 3 && w == 0) piece.type = static_cast<int32_t>(v);
      }
      if (!sub.ok) break;
      bpe->pieces_.push_back(std::move(piece));
    } else if (field == 2) {  // TrainerSpec
      while (sub.next(&f, &w, &v, &b)) {
        if (w != 0) continue;
        if (f == 3) model_type = static_cast<int64_t>(v);
        if (f == 24) whitespace_as_suffix = v != 0;
        if (f == 35) bpe->byte_fallback_ = v != 0;
      }
    } else if (field == 3) {  // NormalizerSpec
      while (sub.next(&f, &w, &v, &b)) {
        if (f == 2 && w == 2) charsmap = b;
        if (w != 0) continue;
        if (f == 3) bpe->add_dummy_prefix_ = v != 0;
        if (f == 4) bpe->remove_extra_whitespaces_ = v != 0;
        if (f == 5) escape_whitespaces = v != 0;
      }
    }
    if (!sub.ok) model.ok = false;
  }
  auto refuse = [&](const std::string& reason) {
    *why = reason;
    return nullptr;
  };
  if (!model.ok) return refuse("the model proto does not parse");
  if (model_type != kBpe) return refuse("not a BPE model");
  if (!charsmap.empty()) return refuse("its normalization rule is not identity");
  if (!escape_whitespaces) return refuse("escape_whitespaces is off");
  if (whitespace_as_suffix) return refuse("treat_whitespace_as_suffix is on");
  if (!bpe->build(why)) return nullptr;
  return bpe;
}

bool SpmBpe::build(std::string* why) {
  PieceIndex index;
  if (!index_pieces(&index, why)) return false;
  assign_char_symbols(index);
  build_merge_table(index);
  split_words_ = no_piece_spans_a_word_boundary();
  uid_ = next_uid.fetch_add(1);
  return true;
}

bool SpmBpe::index_pieces(PieceIndex* index, std::string* why) {
  const int32_t n = static_cast<int32_t>(pieces_.size());
  if (n == 0) {
    *why = "no pieces";
    return false;
  }
  // pieces_ of ModelInterface: NORMAL (USER_DEFINED and UNUSED refused); the rest are reserved.
  auto& normal = index->normal;
  auto& reserved = index->reserved;
  for (int32_t id = 0; id < n; ++id) {
    const Piece& p = pieces_[id];
    if (p.piece.empty()) {
      *why = "an empty piece";
      return false;
    }
    if (p.type == kUserDefinedType || p.type == kUnusedType) {
      *why = p.type == kUserDefinedType ? "it has user-defined pieces" : "it has unused pieces";
      return false;
    }
    auto& table = p.type == 1 ? normal : reserved;
    if (!table.emplace(p.piece, id).second) {
      *why = "piece " + p.piece + " is defined twice";
      return false;
    }
    if (p.type == kUnknownType && unk_id_ < 0) unk_id_ = id;
  }
  if (unk_id_ < 0) {
    *why = "no unknown piece";
    return false;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    auto it = reserved.find(name);
    byte_ids_[b] = it != reserved.end() && pieces_[it->second].type == kByteType ? it->second : -1;
    if (byte_fallback_ && byte_ids_[b] < 0) {
      *why = std::string("byte fallback without piece ") + name;
      return false;
    }
  }

  return true;
}

void SpmBpe::assign_char_symbols(const PieceIndex& index) {
  const int32_t n = static_cast<int32_t>(pieces_.size());
  const auto& normal = index.normal;
  const auto& reserved = index.reserved;
  // Symbol ids of single characters: a normal piece's id, else a new id when the character occurs
  // inside a normal piece or is a reserved piece's whole string.
  std::fill(std::begin(ascii_symbol_), std::end(ascii_symbol_), -1);
  auto add_char = [&](std::string_view ch) {
    const uint32_t key = pack_char(ch);
    if (ch.size() == 1) {
      if (ascii_symbol_[key] >= 0) return;
    } else if (char_symbol_.count(key)) {
      return;
    }
    int32_t symbol;
    auto it = normal.find(ch);
    if (it != normal.end()) {
      symbol = it->second;
    } else {
      // What PieceToId gives for it: a reserved piece, else unknown (bytes under byte fallback).
      auto r = reserved.find(ch);
      const int32_t id = r != reserved.end() ? r->second : unk_id_;
      std::vector<int32_t> output;
      if (pieces_[id].type == kUnknownType && byte_fallback_) {
        for (unsigned char c : ch) output.push_back(byte_ids_[c]);
      } else {
        output.push_back(id);
      }
      symbol = n + static_cast<int32_t>(char_output_.size());
      char_output_.push_back(std::move(output));
    }
    if (ch.size() == 1)
      ascii_symbol_[key] = symbol;
    else
      char_symbol_.emplace(key, symbol);
  };
  for (const Piece& p : pieces_) {
    if (p.type != 1 && !is_single_char(p.piece)) continue;
    if (p.type != 1 && normal.count(p.piece)) continue;
    const std::string& s = p.piece;
    for (size_t i = 0; i < s.size();) {
      const size_t len =
          valid_char_length(reinterpret_cast<const unsigned char*>(s.data() + i), s.size() - i);
      if (len == 0) break;  // a malformed piece never matches well-formed symbols
      add_char(std::string_view(s).substr(i, len));
      i += len;
    }
  }
}

void SpmBpe::build_merge_table(const PieceIndex& index) {
  const int32_t n = static_cast<int32_t>(pieces_.size());
  const auto& normal = index.normal;
  // Merges: SentencePiece merges two adjacent symbols when their concatenated string is a normal
  // piece. Every symbol is a normal piece or a single character, both with a symbol id here, so
  // "a + b is a piece" is a lookup of (id(a), id(b)), filled from every split of every piece.
  auto symbol_of = [&](std::string_view s) -> int32_t {
    auto it = normal.find(s);
    if (it != normal.end()) return it->second;
    if (!is_single_char(s)) return -1;
    return char_symbol(s);
  };
  std::vector<std::pair<uint64_t, Merge>> merges;
  for (int32_t id = 0; id < n; ++id) {
    const Piece& p = pieces_[id];
    if (p.type != 1) continue;
    const std::string_view s = p.piece;
    for (size_t cut = 1; cut < s.size(); ++cut) {
      const int32_t left = symbol_of(s.substr(0, cut));
      if (left < 0) continue;
      const int32_t right = symbol_of(s.substr(cut));
      if (right < 0) continue;
      const uint64_t key =
          (static_cast<uint64_t>(left + 1) << 32) | static_cast<uint32_t>(right + 1);
      merges.push_back({key, Merge{id, p.score}});
    }
  }
  size_t capacity = 16;
  while (capacity < merges.size() * 2) capacity *= 2;
  merge_keys_.assign(capacity, 0);
  merge_values_.assign(capacity, Merge{});
  merge_mask_ = capacity - 1;
  for (const auto& [key, merge] : merges) {
    uint64_t slot = (key * 0x9E3779B97F4A7C15ULL) >> 32 & merge_mask_;
    while (merge_keys_[slot] != 0) slot = (slot + 1) & merge_mask_;
    merge_keys_[slot] = key;
    merge_values_[slot] = merge;
  }
}

// Cutting the text into words. SentencePiece merges over the whole normalized text; a merged
// symbol is always a normal piece. If no normal piece has U+2581 right after another character
// that is not U+2581, no symbol can ever span a position where U+2581 follows a non-U+2581
// character, so no pair across such a position is ever a candidate. The merges of the pieces
// between two such positions then depend on those pieces alone: the agenda orders candidates by
// (score, leftmost) and a merge changes only the candidates of its own word, so the merges one
// word sees, in order, are those it would see encoded alone (positions shifted alike keep the
// order of ties). Unknown and byte fallback work per final symbol, and without UNUSED pieces
// there is no resegmentation across the text. So encode(text) is the concatenation of the
// encodings of its words, and each word can be cached.
bool SpmBpe::no_piece_spans_a_word_boundary() const {
  for (const Piece& p : pieces_) {
    if (p.type != 1) continue;
    const std::string_view s = p.piece;
    for (size_t at = s.find(kSpaceSymbol, 1); at != std::string_view::npos;
         at = s.find(kSpaceSymbol, at + 1)) {
      if (at < kSpaceSymbol.size() || s.substr(at - kSpaceSymbol.size(), 3) != kSpaceSymbol)
        return false;
    }
  }
  return true;
}

int32_t SpmBpe::char_symbol(std::string_view ch) const {
  if (ch.size() == 1) return ascii_symbol_[static_cast<unsigned char>(ch[0]) & 0x7F];
  auto it = char_symbol_.find(pack_char(ch));
  return it == char_symbol_.end() ? -1 : it->second;
}

const SpmBpe::Merge* SpmBpe::find_merge(int32_t left, int32_t right) const {
  const uint64_t key = (static_cast<uint64_t>(left + 1) << 32) | static_cast<uint32_t>(right + 1);
  uint64_t slot = (key * 0x9E3779B97F4A7C15ULL) >> 32 & merge_mask_;
  while (true) {
    const uint64_t k = merge_keys_[slot];
    if (k == key) return &merge_values_[slot];
    if (k == 0) return nullptr;
    slot = (slot + 1) & merge_mask_;
  }
}

// Normalizer::Normalize with no charsmap and escape_whitespaces: NormalizePrefix gives each
// well-formed character as it is and U+FFFD for each byte of malformed UTF-8; leading spaces go
// (remove_extra_whitespaces), the dummy prefix comes, a space after a space goes, spaces become
// U+2581, and trailing U+2581 go (remove_extra_whitespaces, whatever input they came from).
void SpmBpe::normalize(std::string_view text, std::string* out) const {
  out->clear();
  if (text.empty()) return;
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  if (remove_extra_whitespaces_)
    while (i < n && s[i] == ' ') ++i;
  if (i == n) return;
  out->reserve(n * 3 + 3);
  if (add_dummy_prefix_) out->append(kSpaceSymbol);
  bool previous_space = remove_extra_whitespaces_;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      if (c == ' ') {
        if (!previous_space) out->append(kSpaceSymbol);
        previous_space = remove_extra_whitespaces_;
      } else {
        out->push_back(static_cast<char>(c));
        previous_space = false;
      }
      continue;
    }
    const size_t len = valid_char_length(s + i, n - i);
    if (len == 0) {
      out->append(kReplacementChar);
      ++i;
    } else {
      out->append(text.data() + i, len);
      i += len;
    }
    previous_space = false;
  }
  if (remove_extra_whitespaces_)
    while (out->size() >= 3 && out->compare(out->size() - 3, 3, kSpaceSymbol) == 0)
      out->resize(out->size() - 3);
}

void SpmBpe::emit_symbol(int32_t symbol, std::string_view surface,
                         std::vector<int32_t>* out) const {
  const int32_t n = static_cast<int32_t>(pieces_.size());
  if (symbol >= 0 && symbol < n) {
    out->push_back(symbol);
  } else if (symbol >= n) {
    const auto& ids = char_output_[symbol - n];
    out->insert(out->end(), ids.begin(), ids.end());
  } else if (byte_fallback_) {  // a character in no piece: unknown, as its bytes
    for (unsigned char c : surface) out->push_back(byte_ids_[c]);
  } else {
    out->push_back(unk_id_);
  }
}

// bpe::Model::SampleEncode with alpha 0 on one word: characters as symbols, then repeatedly the
// adjacent pair whose concatenation is a piece with the highest score (ties: the leftmost)
// merged.
void SpmBpe::encode_word(std::string_view word, std::vector<int32_t>* out) const {
  struct Symbol {
    int32_t id, prev, next;
    uint32_t begin, size;
  };
  struct Candidate {
    float score;
    int32_t left, right, merged;
    uint32_t size;
  };
  // The agenda's order: a candidate is below another with a higher score, or an equal score and
  // a smaller left index (std::priority_queue's SymbolPairComparator in bpe_model.cc).
  auto below = [](const Candidate& a, const Candidate& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> agenda;
  symbols.clear();
  agenda.clear();
  const auto* s = reinterpret_cast<const unsigned char*>(word.data());
  for (size_t i = 0; i < word.size();) {
    const size_t len = std::min(one_char_length(s[i]), word.size() - i);
    const int32_t index = static_cast<int32_t>(symbols.size());
    symbols.push_back(Symbol{char_symbol(word.substr(i, len)), index - 1, index + 1,
                             static_cast<uint32_t>(i), static_cast<uint32_t>(len)});
    i += len;
  }
  if (symbols.empty()) return;
  symbols.back().next = -1;
  auto maybe_add = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const int32_t a = symbols[left].id, b = symbols[right].id;
    if (a < 0 || b < 0) return;
    const Merge* merge = find_merge(a, b);
    if (merge == nullptr) return;
    agenda.push_back(Candidate{merge->score, left, right, merge->merged,
                               symbols[left].size + symbols[right].size});
    std::push_heap(agenda.begin(), agenda.end(), below);
  };
  for (size_t i = 1; i < symbols.size(); ++i)
    maybe_add(static_cast<int32_t>(i - 1), static_cast<int32_t>(i));
  while (!agenda.empty()) {
    std::pop_heap(agenda.begin(), agenda.end(), below);
    const Candidate top = agenda.back();
    agenda.pop_back();
    Symbol& left = symbols[top.left];
    Symbol& right = symbols[top.right];
    // Stale: one side merged away or grown since (sizes only grow, so equal sizes mean both
    // sides are as they were).
    if (left.size == 0 || right.size == 0 || left.size + right.size != top.size) continue;
    left.id = top.merged;
    left.size += right.size;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.left;
    right.size = 0;
    maybe_add(left.prev, top.left);
    maybe_add(top.left, left.next);
  }
  for (int32_t i = 0; i != -1; i = symbols[i].next)
    emit_symbol(symbols[i].id, word.substr(symbols[i].begin, symbols[i].size), out);
}

void SpmBpe::encode(std::string_view text, std::vector<int64_t>* out) const {
  const size_t first = out->size();
  encode_pieces(text, out);
  // SentencePieceProcessor::PopulateSentencePieceText merges a run of unknown pieces into one
  // (with byte fallback, unknown pieces become bytes and none is left).
  if (!byte_fallback_) {
    auto last = std::unique(out->begin() + static_cast<std::ptrdiff_t>(first), out->end(),
                            [&](int64_t a, int64_t b) { return a == unk_id_ && b == unk_id_; });
    out->erase(last, out->end());
  }
}

void SpmBpe::encode_pieces(std::string_view text, std::vector<int64_t>* out) const {
  thread_local std::string normalized;
  thread_local std::vector<int32_t> ids;
  normalize(text, &normalized);
  if (normalized.empty()) return;
  if (!split_words_) {
    ids.clear();
    encode_word(normalized, &ids);
    out->insert(out->end(), ids.begin(), ids.end());
    return;
  }
  WordCache& cache = thread_cache(uid_);
  auto encode_cached = [&](std::string_view word) {
    if (word.size() > WordCache::kMaxWordBytes) {
      ids.clear();
      encode_word(word, &ids);
      out->insert(out->end(), ids.begin(), ids.end());
      return;
    }
    uint64_t hash = std::hash<std::string_view>()(word);
    if (hash == 0) hash = 1;
    size_t slot = hash & (WordCache::kSlots - 1);
    while (true) {
      const WordCache::Slot& e = cache.slots[slot];
      if (e.hash == 0) break;
      if (e.hash == hash && e.key_size == word.size() &&
          std::memcmp(cache.keys.data() + e.key_offset, word.data(), word.size()) == 0) {
        const int32_t* cached = cache.ids.data() + e.ids_offset;
        out->insert(out->end(), cached, cached + e.ids_size);
        return;
      }
      slot = (slot + 1) & (WordCache::kSlots - 1);
    }
    ids.clear();
    encode_word(word, &ids);
    out->insert(out->end(), ids.begin(), ids.end());
    if (cache.used >= WordCache::kMaxUsed ||
        cache.keys.size() + word.size() > WordCache::kMaxKeyBytes ||
        cache.ids.size() + ids.size() > WordCache::kMaxIds) {
      cache.reset(uid_);
      slot = hash & (WordCache::kSlots - 1);
      while (cache.slots[slot].hash != 0) slot = (slot + 1) & (WordCache::kSlots - 1);
    }
    WordCache::Slot& e = cache.slots[slot];
    e.hash = hash;
    e.key_offset = static_cast<uint32_t>(cache.keys.size());
    e.key_size = static_cast<uint32_t>(word.size());
    e.ids_offset = static_cast<uint32_t>(cache.ids.size());
    e.ids_size = static_cast<uint32_t>(ids.size());
    cache.keys.append(word);
    cache.ids.insert(cache.ids.end(), ids.begin(), ids.end());
    ++cache.used;
  };
  // Words start at each U+2581 that follows another character than U+2581 (see
  // no_piece_spans_a_word_boundary()).
  const char* p = normalized.data();
  const size_t n = normalized.size();
  size_t start = 0;
  for (size_t i = 1; i + 3 <= n; ++i) {
    if (p[i] != '\xE2' || p[i + 1] != '\x96' || p[i + 2] != '\x81') continue;
    if (i >= 3 && p[i - 3] == '\xE2' && p[i - 2] == '\x96' && p[i - 1] == '\x81') continue;
    encode_cached(std::string_view(p + start, i - start));
    start = i;
    i += 2;
  }
  encode_cached(std::string_view(p + start, n - start));
}

}  // namespace tiller
