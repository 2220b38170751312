// Task evaluation (`tiller eval --model/--across`): the same greedy outputs and teacher-forced
// log-likelihoods scored by discontinuous metrics (exact match, multiple-choice accuracy) and by
// continuous ones (target log-likelihood per token, probability of the correct choice, Brier
// score, token edit distance), after Schaeffer et al. 2023, "Are Emergent Abilities of Large
// Language Models a Mirage?". docs/eval.md describes the task format and every metric.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "common/model/transformer.h"
#include "common/tokenizer/tokenizer.h"
#include "eval/instruction_checks.h"

namespace tiller::eval {

// One line of a task file. A generation item has a target; a multiple-choice item has choices
// and the index of the right one; an item may have both (then the target is one of the choices).
// Target and choices are appended to the prompt verbatim (so they usually begin with a space).
// A generation item may also say how its answer is read (answer_after), carry instruction
// constraints (then exact match is their strict pass and the target a compliant reference whose
// likelihood is scored), strings that end the output (until) and its own token budget.
struct TaskItem {
  std::string prompt;
  bool has_target = false;
  std::string target;
  std::vector<std::string> choices;  // empty: not a multiple-choice item
  int64_t answer = -1;
  std::string group;         // k-shot examples come from pool items of the same group ("" any)
  std::string answer_after;  // "" or a marker ("####"): the answer is the number after it
  std::vector<Constraint> constraints;  // instruction following: all must hold
  std::vector<std::string> until;       // the output is cut before the first of these
  int64_t max_new_tokens = 0;           // 0: EvalOptions' budget
  std::string where;                    // "file:line"
};

// Reads a task file (JSONL; `.gz` read too). A malformed line, an unknown or mistyped field, an
// item with neither target nor choices, fewer than two choices or an answer out of range is a
// tiller::Error naming file:line and the field. An empty file is an error.
std::vector<TaskItem> read_task_file(const std::string& path);

// ---------------------------------------------------------------------------------------------
// Metrics, as pure functions.

// Levenshtein distance over token ids (insertions, deletions and substitutions cost 1).
int64_t edit_distance(const std::vector<int64_t>& a, const std::vector<int64_t>& b);
// The text without leading and trailing whitespace (space, tab, CR, LF, FF, VT).
std::string trim(const std::string& text);
// Exact match: the two texts are equal after trimming whitespace at both ends.
bool exact_match(const std::string& output, const std::string& target);
// The answer read from a text: the number (an optional '-', digits, an optional '.' and digits)
// that first follows the last occurrence of `marker`, after optional spaces; "" when there is
// none. Where the number begins is stored in *begin when given.
std::string extract_answer(const std::string& text, const std::string& marker,
                           size_t* begin = nullptr);
// Probabilities over choices from their summed log-likelihoods (a softmax, computed stably).
std::vector<double> choice_probabilities(const std::vector<double>& logliks);
// Brier score of one item: sum over choices of (p_i - [i == answer])^2, in [0, 2].
double brier_score(const std::vector<double>& probabilities, int64_t answer);

// ---------------------------------------------------------------------------------------------

struct EvalOptions {
  // Greedy tokens generated per generation item; 0: as many as the item's target has.
  int64_t max_new_tokens = 0;
  int64_t batch_size = 16;  // sequences per forward pass, prompts per generation batch
  std::string adapter;      // a LoRA adapter (PEFT layout) on the model directory ("" none)
};

struct ItemResult {
  // Generation (has_target)
  std::string output;               // greedy continuation text (cut at EOS / newline)
  std::vector<int64_t> output_ids;  // its tokens
  std::vector<int64_t> target_ids;  // the target's tokens
  bool exact = false;
  int64_t edit = 0;
  // Target (or, without one, the right choice) log-likelihood, teacher-forced
  double loglik_sum = 0;
  int64_t loglik_tokens = 0;
  // The answer's log-likelihood: with answer_after, the tokens after the marker given the prompt
  // and the target before them; otherwise the target's (or the right choice's)
  double answer_loglik_sum = 0;
  int64_t answer_loglik_tokens = 0;
  int64_t constraints_met = 0;  // instruction items: how many of the item's constraints hold
  // Multiple choice
  std::vector<double> choice_logliks;  // summed over each choice's tokens
  std::vector<double> choice_probs;    // normalised over the choices
  int64_t predicted = -1;              // argmax of the summed log-likelihood
};

struct EvalResult {
  int64_t items = 0, generation_items = 0, choice_items = 0;
  // Means over the items of each kind; NaN when there are none of that kind.
  double exact_match = 0;              // generation items
  double edit_distance = 0;            // tokens
  double edit_distance_norm = 0;       // edit distance / target tokens
  double loglik_per_token = 0;         // every item: mean over the item's target tokens, then items
  double answer_loglik = 0;            // every item: the answer's summed log-likelihood, mean
  double answer_loglik_per_token = 0;  // every item: the same per answer token, mean
  int64_t instruction_items = 0;
  double constraint_fraction = 0;  // instruction items: the fraction of constraints met, mean
  double mc_accuracy = 0;          // choice items
  double p_correct = 0;            // probability of the right choice
  double brier = 0;
  std::vector<ItemResult> per_item;
};

// Evaluates `model` (a causal LM) on the items, batched.
EvalResult evaluate_tasks(TransformerImpl& model, const Tokenizer& tok,
                          const std::vector<TaskItem>& items, const EvalOptions& options);
// Loads DIR (config.json, model.safetensors, tokenizer.model) and evaluates it.
EvalResult evaluate_model_dir(const std::string& dir, const std::vector<TaskItem>& items,
                              const EvalOptions& options);
// Loads DIR once and evaluates it on each set of items, in order.
std::vector<EvalResult> evaluate_model_dir(const std::string& dir,
                                           const std::vector<std::vector<TaskItem>>& item_sets,
                                           const EvalOptions& options);

// Teacher-forced log-probabilities of each continuation's tokens given its context (both token
// ids; the context non-empty), batched `batch_size` sequences at a time: one vector per pair.
std::vector<std::vector<double>> continuation_logprobs(
    TransformerImpl& model, const std::vector<std::vector<int64_t>>& contexts,
    const std::vector<std::vector<int64_t>>& continuations, int64_t batch_size, int64_t pad_id);

// The summary metrics as JSON (NaN as null); with per_item, also "per_item": one object per item.
nlohmann::json result_json(const EvalResult& result, const std::vector<TaskItem>& items,
                           bool per_item);
// The summary as a small table (one metric a line).
std::string result_table(const EvalResult& result);

// ---------------------------------------------------------------------------------------------
// Across a sweep

struct AcrossRow {
  std::string point, model_dir, where;
  double n = 0;
  EvalResult result;
};

// The model directory of one runs.jsonl row: the row's "model" (relative to the runs.jsonl's
// directory unless absolute), else SWEEP_DIR/points/<point>/<stage>/final with the stage named by
// `stage`, by the row's "stage", or found as the point's only finished stage (among several, the
// one whose final_val_loss is the row's loss). Errors name `where` (file:line).
std::string run_model_dir(const nlohmann::json& row, const std::string& sweep_dir,
                          const std::string& stage, const std::string& where);

// Every row of runs.jsonl with its model located (run_model_dir), sorted by N; nothing
// evaluated yet. Errors name file:line.
std::vector<AcrossRow> locate_across(const std::string& runs_path, const std::string& stage);
// Evaluates every row's model; rows sorted by N. Progress lines go to stderr when `progress`.
std::vector<AcrossRow> evaluate_across(const std::string& runs_path,
                                       const std::vector<TaskItem>& items,
                                       const EvalOptions& options, const std::string& stage,
                                       bool progress);
std::string across_table(const std::vector<AcrossRow>& rows);
nlohmann::json across_json(const std::vector<AcrossRow>& rows, const std::string& runs_path,
                           const std::string& tasks_path);
// A self-contained SVG: two panels against log10 N, discontinuous metrics on the left
// (exact match, MC accuracy), continuous ones on the right (exp of the log-likelihood per token,
// 1 - normalised edit distance, probability of the right choice).
std::string across_svg(const std::vector<AcrossRow>& rows, const std::string& tasks_name);

}  // namespace tiller::eval
