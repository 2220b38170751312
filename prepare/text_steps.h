// Text steps of `tiller data prepare`: the per-document cleaning, filtering and redaction that run
// before deduplication and tokenisation. Each step is optional and configured by one key of the
// prepare section; apply_text_steps runs them on one document and is thread-safe (no shared
// mutable state: ICU's NFC instance is immutable, scratch buffers are thread_local).
//
// Order (text_step_names): normalize, boilerplate, c4, gopher_quality, gopher_repetition, pii.
// Cleaning first, so that filters see clean text; the filters before redaction, so that
// replacing an address by "<EMAIL>" does not change the word statistics they judge.
//
// Words are the runs between Unicode whitespace (u_isUWhiteSpace), not NLTK tokens as in
// datatrove: punctuation stays attached to its word ("end." is one word). Lengths and character
// fractions are in code points, as Python's len().
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/recipe/config_reader.h"

namespace tiller {

// Unicode NFC, control-character removal and whitespace clean-up.
struct NormalizeOptions {
  bool nfc = true;  // compose to NFC (ICU Normalizer2); pure-ASCII text is skipped
  // Remove C0 controls (but \n, \t and \r, which the whitespace rule turns into \n), DEL, C1
  // controls, U+FEFF (BOM) and the zero-width U+200B..U+200D, U+2060.
  bool control_chars = true;
  // \r\n and \r -> \n; runs of spaces and tabs -> one space; trailing spaces of a line removed;
  // more than two newlines in a row -> two; the document trimmed of leading and trailing blanks.
  bool whitespace = true;
};

// C4's line rules (Raffel et al. 2020, section 2.2), line by line; blank lines are kept (runs of
// them collapse to one) so that paragraphs stay apart.
struct BoilerplateOptions {
  // A line containing any of these (ASCII case-insensitive) is dropped.
  std::vector<std::string> patterns = {"javascript",  "lorem ipsum",    "cookie policy",
                                       "use cookies", "privacy policy", "terms of use"};
  // A non-blank line with fewer words is dropped (C4: 3). Beware: a document of one short line
  // is then emptied, and so removed.
  int64_t min_words_per_line = 3;
  // C4 keeps only lines ending in . ! ? or a quote; off by default because many corpora (code,
  // lists, dialogue, headings) are not made of sentences.
  bool require_terminal_punctuation = false;
  bool drop_curly_bracket_lines = false;  // drop lines containing "{" (C4's rule is per document)
};

// Gopher's quality rules (Rae et al. 2021, appendix A; thresholds as datatrove's defaults).
struct GopherQualityOptions {
  int64_t min_words = 50;  // words with a character that is not punctuation
  int64_t max_words = 100000;
  double min_mean_word_length = 3;
  double max_mean_word_length = 10;
  double max_symbol_word_ratio = 0.1;      // '#', and "..." or "…", each per word
  double max_bullet_lines_ratio = 0.9;     // lines starting with • ‣ ◦ ⁃ ∙ - *
  double max_ellipsis_lines_ratio = 0.3;   // lines ending with "..." or "…"
  double min_alpha_words_ratio = 0.8;      // words with an alphabetic character
  int64_t min_stop_words = 2;              // words (ASCII case-insensitive, outer punctuation
  std::vector<std::string> stop_words = {  // stripped) among stop_words
      "the", "be", "to", "of", "and", "that", "have", "with"};
};

// Gopher's repetition rules (Rae et al. 2021, table A1), defined as datatrove's
// GopherRepetitionFilter: paragraphs split on two or more newlines, lines on one or more; the
// character fractions are over the whole document's length. A fraction of 1 disables its rule.
// Lines, paragraphs and n-grams are compared by 64-bit hashes (xxh3): a collision, about 1 in
// 1e9 for a 100k-word document, would count a distinct n-gram as a repeat.
struct GopherRepetitionOptions {
  double max_dup_line_frac = 0.30;       // duplicate lines / lines
  double max_dup_para_frac = 0.30;       // duplicate paragraphs / paragraphs
  double max_dup_line_char_frac = 0.20;  // characters in duplicate lines / characters
  double max_dup_para_char_frac = 0.20;  // characters in duplicate paragraphs / characters
  // n -> the most frequent n-gram's characters times its count / characters.
  std::map<int, double> max_top_ngram_char_frac = {{2, 0.20}, {3, 0.18}, {4, 0.16}};
  // n -> characters in repeated n-grams (counted once, non-overlapping) / characters.
  std::map<int, double> max_dup_ngram_char_frac = {{5, 0.15}, {6, 0.14}, {7, 0.13},
                                                   {8, 0.12}, {9, 0.11}, {10, 0.10}};
};

// C4's document rules (Raffel et al. 2020).
struct C4Options {
  // Sentences end at . ! ? … (or 。！？) followed by a blank or the end; text after the last
  // end counts as one more. Abbreviations ("Mr.") count as ends.
  int64_t min_sentences = 3;
  bool drop_lorem_ipsum = true;     // a document containing "lorem ipsum" (case-insensitive)
  bool drop_curly_bracket = false;  // a document containing "{" (C4: true; it drops all code)
};

// Redaction of personal data by hand-written scanners (no regex engine).
struct PiiOptions {
  bool email = true;  // local@domain.tld
  bool ip = true;     // IPv4 a.b.c.d, each part <= 255; IPv6 with 8 groups or one "::"
  // +CC followed by 8-15 digits (separators allowed); North-American (212) 555-0123,
  // 212-555-0123, 212.555.0123, 212 555 0123, with an optional leading 1-. Digit runs without
  // separators (years, 12345678) are not phones.
  bool phone = true;
  std::string email_token = "<EMAIL>";
  std::string ip_token = "<IP>";
  std::string phone_token = "<PHONE>";
};

// The steps of one configuration; a step runs when set.
struct TextSteps {
  std::optional<NormalizeOptions> normalize;
  std::optional<BoilerplateOptions> boilerplate;
  std::optional<GopherQualityOptions> gopher_quality;
  std::optional<GopherRepetitionOptions> gopher_repetition;
  std::optional<C4Options> c4;
  std::optional<PiiOptions> pii;
};

// Reads the keys normalize, boilerplate, gopher_quality, gopher_repetition, c4 and pii of `r`
// (other keys of r belong to the caller). Each is true or {} (the step with its defaults), an
// object overriding settings, or false (off, as when absent). Mistakes go to `errors` with paths.
TextSteps read_text_steps(ConfigReader& r, ConfigErrors& errors);

// Every step with every value it runs with, for the resolved config; steps that do not run are
// stated as false. read_text_steps reads it back to the same steps.
nlohmann::json text_steps_values(const TextSteps& steps);

// The names of the steps that run, in the order they run.
std::vector<std::string> text_step_names(const TextSteps& steps);

struct TextOutcome {
  std::string text;                 // the document after the steps (meaningful only when kept)
  std::string removed_by;           // "" when kept, else the step's name, e.g. "gopher_quality"
  std::string reason;               // the rule that removed it, e.g. "word_count 12 < 50"
  bool normalized_changed = false;  // whether normalize changed the text
  int64_t lines_removed = 0;        // by boilerplate
  int64_t emails = 0, ips = 0, phones = 0;  // redactions
  bool kept() const { return removed_by.empty(); }
};

// Runs the steps on one document (valid UTF-8, as the caller guarantees). Thread-safe. A document
// that normalize or boilerplate leaves empty is removed by that step.
TextOutcome apply_text_steps(std::string text, const TextSteps& steps);

// The pieces, each usable alone.

std::string normalize_text(std::string_view text, const NormalizeOptions& options);
// Returns the kept lines; adds the number of dropped lines to `lines_removed`.
std::string remove_boilerplate_lines(std::string_view text, const BoilerplateOptions& options,
                                     int64_t& lines_removed);
// Each returns "" when the document passes, else the failed rule with its values.
std::string gopher_quality_rejection(std::string_view text, const GopherQualityOptions& options);
std::string gopher_repetition_rejection(std::string_view text,
                                        const GopherRepetitionOptions& options);
std::string c4_rejection(std::string_view text, const C4Options& options);

struct PiiCounts {
  int64_t emails = 0, ips = 0, phones = 0;
};
std::string redact_pii(std::string_view text, const PiiOptions& options, PiiCounts& counts);

}  // namespace tiller
