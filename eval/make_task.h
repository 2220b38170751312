// `tiller eval make-task`: a toy task from a text corpus, reproducible from a seed. Each item is
// a sentence cut before its last K words: the prompt is the sentence up to there, the target the
// K words, and the choices the right ending plus distractor endings of other sentences.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "common/tokenizer/tokenizer.h"

namespace tiller::eval {

struct MakeTaskOptions {
  int64_t count = 200;       // items
  uint64_t seed = 1234;      // which sentences, which distractors, where the answer sits
  int64_t target_words = 3;  // K: words in the target
  int64_t choices = 4;       // the right ending and choices - 1 distractors
  int64_t min_prompt_words = 3;
  int64_t max_sentence_words = 40;
};

// The sentences of a paragraph: cut after '.', '!' or '?' followed by a space or the end.
// Whitespace inside a sentence is collapsed to single spaces.
std::vector<std::string> split_sentences(const std::string& paragraph);

// Indices of the documents that a pretrain stage never trained on: the documents each prefixed
// with BOS, concatenated and cut into max_seq_len-token chunks (the last partial one dropped),
// the chunks split by split_validation(val_fraction, seed) exactly as the stage splits them; a
// document qualifies when none of its tokens lies in a training chunk.
std::vector<int64_t> held_out_documents(const std::vector<std::string>& documents,
                                        const Tokenizer& tok, int64_t max_seq_len,
                                        double val_fraction, uint64_t seed);

// Task items ({"prompt", "target", "choices", "answer"}) from the sentences of `documents`: of
// the eligible sentences (no double quote, at least min_prompt_words + K words, at most
// max_sentence_words, an ending unlike the others'), `count` drawn by the seed (all of them when
// fewer, with a note in *note). Deterministic for a seed. Throws tiller::Error when fewer than
// `choices` distinct endings exist.
std::vector<nlohmann::json> make_task_items(const std::vector<std::string>& documents,
                                            const MakeTaskOptions& options,
                                            std::string* note = nullptr);

}  // namespace tiller::eval
