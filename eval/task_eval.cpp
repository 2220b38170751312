#include "eval/task_eval.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>

#include "common/data/json_records.h"
#include "common/io/hf_dir.h"
#include "common/io/peft_adapter.h"
#include "common/rollout/generator.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "report/svg_chart.h"

namespace tiller::eval {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double mean_or_nan(double sum, int64_t count) {
  return count > 0 ? sum / static_cast<double>(count) : kNaN;
}

nlohmann::json number_or_null(double value) {
  return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json();
}

// The context and continuation tokens of prompt + continuation: the tokens of the whole text,
// split after their longest common prefix with the prompt's own tokens (all of them, unless the
// tokenizer merges across the boundary).
struct Split {
  std::vector<int64_t> context, continuation;
};

Split split_continuation(const Tokenizer& tok, const std::vector<int64_t>& prompt_ids,
                         const std::string& prompt, const std::string& continuation,
                         const std::string& what, const std::string& where) {
  const std::vector<int64_t> whole = tok.encode(prompt + continuation, /*add_bos=*/true);
  size_t common = 0;
  while (common < prompt_ids.size() && common < whole.size() && prompt_ids[common] == whole[common])
    ++common;
  common = std::max<size_t>(common, 1);  // BOS, at least, is context
  check(whole.size() > common, where + ": \"" + what + "\" adds no tokens to the prompt");
  return {std::vector<int64_t>(whole.begin(), whole.begin() + static_cast<std::ptrdiff_t>(common)),
          std::vector<int64_t>(whole.begin() + static_cast<std::ptrdiff_t>(common), whole.end())};
}

std::string format_metric(double value) {
  if (!std::isfinite(value)) return "-";
  char text[32];
  std::snprintf(text, sizeof text, "%.4f", value);
  return text;
}

std::vector<std::string> string_list(const nlohmann::json& j, const char* key,
                                     const std::string& where) {
  const std::string what = where + ": field \"" + key + "\" must be a list of non-empty strings";
  check(j[key].is_array(), what);
  std::vector<std::string> out;
  for (const auto& v : j[key]) {
    check(v.is_string() && !v.get<std::string>().empty(), what);
    out.push_back(v.get<std::string>());
  }
  return out;
}

// The optional fields of a generation item: group, answer_after, constraints, until,
// max_new_tokens. The target must show the answer (answer_after) and meet the constraints.
void read_generation_fields(const nlohmann::json& j, const std::string& where, TaskItem& item) {
  if (j.contains("group")) item.group = string_field(j, "group", where);
  const bool generation_only = j.contains("answer_after") || j.contains("constraints") ||
                               j.contains("until") || j.contains("max_new_tokens");
  if (!generation_only) return;
  check(item.has_target, where +
                             ": \"answer_after\", \"constraints\", \"until\" and "
                             "\"max_new_tokens\" need a \"target\"");
  if (j.contains("answer_after")) {
    item.answer_after = string_field(j, "answer_after", where);
    check(!item.answer_after.empty(), where + ": field \"answer_after\" is empty");
    check(!extract_answer(item.target, item.answer_after).empty(),
          where + ": the target has no number after \"" + item.answer_after + "\"");
  }
  if (j.contains("constraints")) {
    check(j["constraints"].is_array() && !j["constraints"].empty(),
          where + ": field \"constraints\" must be a non-empty list");
    for (size_t c = 0; c < j["constraints"].size(); ++c) {
      const std::string at = where + ": constraints[" + std::to_string(c) + "]";
      item.constraints.push_back(parse_constraint(j["constraints"][c], at));
      check(constraint_met(item.constraints.back(), item.target),
            at + ": the target (the compliant reference) does not meet this " +
                item.constraints.back().type + " constraint");
    }
  }
  if (j.contains("until")) item.until = string_list(j, "until", where);
  if (j.contains("max_new_tokens")) {
    const auto& v = j["max_new_tokens"];
    check(v.is_number_integer() && v.get<int64_t>() >= 1 && v.get<int64_t>() <= (1 << 20),
          where + ": field \"max_new_tokens\" must be a positive integer, got " + v.dump());
    item.max_new_tokens = v.get<int64_t>();
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------

std::vector<TaskItem> read_task_file(const std::string& path) {
  const RecordReadResult read = read_json_records(path);
  std::vector<TaskItem> items;
  for (const auto& record : read.records) {
    const nlohmann::json& j = record.value;
    const std::string& where = record.where;
    check(j.is_object(), where +
                             ": expected a JSON object with \"prompt\" and \"target\" or "
                             "\"choices\" + \"answer\"");
    TaskItem item;
    item.where = where;
    item.prompt = string_field(j, "prompt", where);
    if (j.contains("target")) {
      item.target = string_field(j, "target", where);
      check(!item.target.empty(), where + ": field \"target\" is empty");
      item.has_target = true;
    }
    if (j.contains("choices")) {
      const auto& choices = j["choices"];
      check(choices.is_array() && choices.size() >= 2,
            where + ": field \"choices\" must be a list of at least two strings");
      for (size_t i = 0; i < choices.size(); ++i) {
        check(choices[i].is_string() && !choices[i].get<std::string>().empty(),
              where + ": field \"choices\"[" + std::to_string(i) + "] must be a non-empty string");
        item.choices.push_back(choices[i].get<std::string>());
      }
      check(j.contains("answer"), where +
                                      ": field \"answer\" is missing (the index of the right "
                                      "choice)");
      const auto& answer = j["answer"];
      check(answer.is_number_integer() && answer.get<int64_t>() >= 0 &&
                answer.get<int64_t>() < static_cast<int64_t>(item.choices.size()),
            where + ": field \"answer\" must be an integer index into \"choices\" (0.." +
                std::to_string(item.choices.size() - 1) + "), got " + answer.dump());
      item.answer = answer.get<int64_t>();
    } else {
      check(!j.contains("answer"), where + ": field \"answer\" without \"choices\"");
    }
    check(item.has_target || !item.choices.empty(),
          where +
              ": an item needs \"target\" (generation) or \"choices\" and \"answer\" "
              "(multiple choice)");
    read_generation_fields(j, where, item);
    items.push_back(std::move(item));
  }
  return items;
}

// ---------------------------------------------------------------------------------------------

int64_t edit_distance(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  std::vector<int64_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = static_cast<int64_t>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    int64_t diagonal = row[0];
    row[0] = static_cast<int64_t>(i);
    for (size_t j = 1; j <= b.size(); ++j) {
      const int64_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string trim(const std::string& text) {
  const char* space = " \t\r\n\f\v";
  const auto first = text.find_first_not_of(space);
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(space) - first + 1);
}

bool exact_match(const std::string& output, const std::string& target) {
  return trim(output) == trim(target);
}

std::string extract_answer(const std::string& text, const std::string& marker, size_t* begin) {
  const size_t at = text.rfind(marker);
  if (marker.empty() || at == std::string::npos) return "";
  size_t i = at + marker.size();
  while (i < text.size() && text[i] == ' ') ++i;
  const size_t start = i;
  if (i < text.size() && text[i] == '-') ++i;
  const auto digits = [&text](size_t& k) {
    const size_t from = k;
    while (k < text.size() && std::isdigit(static_cast<unsigned char>(text[k]))) ++k;
    return k - from;
  };
  if (digits(i) == 0) return "";
  if (i + 1 < text.size() && text[i] == '.' &&
      std::isdigit(static_cast<unsigned char>(text[i + 1]))) {
    ++i;
    digits(i);
  }
  if (begin != nullptr) *begin = start;
  return text.substr(start, i - start);
}

std::vector<double> choice_probabilities(const std::vector<double>& logliks) {
  if (logliks.empty()) return {};
  const double top = *std::max_element(logliks.begin(), logliks.end());
  std::vector<double> p(logliks.size());
  double total = 0;
  for (size_t i = 0; i < p.size(); ++i) total += p[i] = std::exp(logliks[i] - top);
  for (double& v : p) v /= total;
  return p;
}

double brier_score(const std::vector<double>& probabilities, int64_t answer) {
  double sum = 0;
  for (size_t i = 0; i < probabilities.size(); ++i) {
    const double d = probabilities[i] - (static_cast<int64_t>(i) == answer ? 1.0 : 0.0);
    sum += d * d;
  }
  return sum;
}

// ---------------------------------------------------------------------------------------------

std::vector<std::vector<double>> continuation_logprobs(
    TransformerImpl& model, const std::vector<std::vector<int64_t>>& contexts,
    const std::vector<std::vector<int64_t>>& continuations, int64_t batch_size, int64_t pad_id) {
  check(contexts.size() == continuations.size(), "continuation_logprobs: size mismatch");
  torch::NoGradGuard no_grad;
  const auto device = model.parameters().front().device();
  std::vector<std::vector<double>> out(contexts.size());
  const int64_t n = static_cast<int64_t>(contexts.size());
  for (int64_t begin = 0; begin < n; begin += batch_size) {
    const int64_t count = std::min(batch_size, n - begin);
    int64_t length = 0;
    for (int64_t r = 0; r < count; ++r)
      length =
          std::max<int64_t>(length, contexts[begin + r].size() + continuations[begin + r].size());
    auto ids = torch::full({count, length}, pad_id, torch::kLong);
    auto mask = torch::zeros({count, length}, torch::kLong);
    auto ids_a = ids.accessor<int64_t, 2>();
    auto mask_a = mask.accessor<int64_t, 2>();
    for (int64_t r = 0; r < count; ++r) {  // right-padded
      int64_t t = 0;
      for (int64_t id : contexts[begin + r]) ids_a[r][t] = id, mask_a[r][t++] = 1;
      for (int64_t id : continuations[begin + r]) ids_a[r][t] = id, mask_a[r][t++] = 1;
    }
    const auto logits = model.forward(ids.to(device), mask.to(device)).to(torch::kFloat);
    // log p(token t + 1 | tokens <= t) = logit of that token - logsumexp over the vocabulary
    const auto next = ids.narrow(1, 1, length - 1).to(device).unsqueeze(-1);
    const auto head = logits.narrow(1, 0, length - 1);
    const auto logp = (head.gather(2, next).squeeze(-1) - head.logsumexp(-1)).to(torch::kDouble);
    const auto logp_cpu = logp.cpu();
    auto lp = logp_cpu.accessor<double, 2>();
    for (int64_t r = 0; r < count; ++r) {
      const int64_t start = static_cast<int64_t>(contexts[begin + r].size()) - 1;
      auto& row = out[begin + r];
      for (size_t i = 0; i < continuations[begin + r].size(); ++i)
        row.push_back(lp[r][start + static_cast<int64_t>(i)]);
    }
  }
  return out;
}

namespace {

// Every (context, continuation) pair to score, targets and choices item by item, with the
// tokens of each item's prompt.
struct ScoringPairs {
  struct Owner {
    size_t item;
    int64_t choice;  // -1: the target, -2: the answer after answer_after
  };
  std::vector<std::vector<int64_t>> prompt_ids, contexts, continuations;
  std::vector<Owner> owners;
};

// Also records each target's tokens in its item's result.
ScoringPairs collect_scoring_pairs(const Tokenizer& tok, const std::vector<TaskItem>& items,
                                   int64_t max_positions, std::vector<ItemResult>& per_item) {
  ScoringPairs pairs;
  pairs.prompt_ids.resize(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const TaskItem& item = items[i];
    pairs.prompt_ids[i] = tok.encode(item.prompt, /*add_bos=*/true);
    // The answer after answer_after is scored given the prompt and the target up to the marker.
    const size_t head = item.answer_after.empty()
                            ? 0
                            : item.target.rfind(item.answer_after) + item.answer_after.size();
    const std::string context = item.prompt + item.target.substr(0, head);
    auto add = [&](const std::string& text, int64_t choice) {
      const std::string what = choice == -1   ? "target"
                               : choice == -2 ? "answer"
                                              : "choices[" + std::to_string(choice) + "]";
      Split s = choice == -2 ? split_continuation(tok, tok.encode(context, /*add_bos=*/true),
                                                  context, text, what, item.where)
                             : split_continuation(tok, pairs.prompt_ids[i], item.prompt, text, what,
                                                  item.where);
      const int64_t total = static_cast<int64_t>(s.context.size() + s.continuation.size());
      check(total <= max_positions, item.where + ": prompt and " + what + " are " +
                                        std::to_string(total) +
                                        " tokens, more than the model's max_position_embeddings " +
                                        std::to_string(max_positions));
      if (choice == -1) per_item[i].target_ids = s.continuation;
      pairs.contexts.push_back(std::move(s.context));
      pairs.continuations.push_back(std::move(s.continuation));
      pairs.owners.push_back({i, choice});
    };
    if (item.has_target) add(item.target, -1);
    if (!item.answer_after.empty()) add(item.target.substr(head), -2);
    for (size_t c = 0; c < item.choices.size(); ++c) add(item.choices[c], static_cast<int64_t>(c));
  }
  return pairs;
}

void record_logliks(const std::vector<TaskItem>& items, const ScoringPairs& pairs,
                    const std::vector<std::vector<double>>& logprobs,
                    std::vector<ItemResult>& per_item) {
  for (size_t k = 0; k < pairs.owners.size(); ++k) {
    const ScoringPairs::Owner& owner = pairs.owners[k];
    ItemResult& r = per_item[owner.item];
    double sum = 0;
    for (double v : logprobs[k]) sum += v;
    const TaskItem& item = items[owner.item];
    const auto tokens = static_cast<int64_t>(logprobs[k].size());
    if (owner.choice >= 0) r.choice_logliks.push_back(sum);
    if (owner.choice == -2) {
      r.answer_loglik_sum = sum;
      r.answer_loglik_tokens = tokens;
    }
    // The log-likelihood reported is the target's, or the right choice's when there is none;
    // the answer's is the same unless the item reads its answer after a marker.
    if (owner.choice == -1 || (!item.has_target && owner.choice == item.answer)) {
      r.loglik_sum = sum;
      r.loglik_tokens = tokens;
      if (item.answer_after.empty()) {
        r.answer_loglik_sum = sum;
        r.answer_loglik_tokens = tokens;
      }
    }
  }
}

// Whether a token's text holds a newline, decoded once per token id.
class NewlineTokens {
 public:
  explicit NewlineTokens(const Tokenizer& tok) : tok_(tok) {}
  bool contains(int64_t id) {
    auto it = ends_line_.find(id);
    if (it == ends_line_.end())
      it = ends_line_.emplace(id, tok_.decode({id}).find('\n') != std::string::npos).first;
    return it->second;
  }

 private:
  const Tokenizer& tok_;
  std::map<int64_t, bool> ends_line_;  // token id -> its text holds a newline
};

// What the items of one generation batch share.
struct GreedyContext {
  TransformerImpl& model;
  const Tokenizer& tok;
  const std::vector<TaskItem>& items;
  const std::vector<std::vector<int64_t>>& prompt_ids;
  const EvalOptions& options;
  int64_t max_positions;
  NewlineTokens& newlines;
};

// Each item's token budget: --max-new-tokens, or else its target's length.
std::vector<int64_t> generation_budgets(const GreedyContext& g, const std::vector<size_t>& batch,
                                        const std::vector<ItemResult>& per_item) {
  std::vector<int64_t> budgets;
  for (size_t i : batch) {
    const int64_t budget = g.items[i].max_new_tokens > 0 ? g.items[i].max_new_tokens
                           : g.options.max_new_tokens > 0
                               ? g.options.max_new_tokens
                               : static_cast<int64_t>(per_item[i].target_ids.size());
    const int64_t total = static_cast<int64_t>(g.prompt_ids[i].size()) + budget;
    check(total <= g.max_positions,
          g.items[i].where + ": the prompt and " + std::to_string(budget) +
              " generated tokens are more than the model's max_position_embeddings " +
              std::to_string(g.max_positions));
    budgets.push_back(budget);
  }
  return budgets;
}

// Where the first of the `until` strings begins in text (npos: none).
size_t until_position(const std::string& text, const std::vector<std::string>& until) {
  size_t first = std::string::npos;
  for (const auto& u : until) first = std::min(first, text.find(u));
  return first;
}

// Whether the output is right: the strict pass of an instruction item's constraints, the answer
// after answer_after, or else the whole text (whitespace trimmed).
void judge_output(const TaskItem& item, ItemResult& r) {
  if (!item.constraints.empty()) {
    r.constraints_met = 0;
    for (const auto& c : item.constraints) r.constraints_met += constraint_met(c, r.output) ? 1 : 0;
    r.exact = r.constraints_met == static_cast<int64_t>(item.constraints.size());
  } else if (!item.answer_after.empty()) {
    const std::string answer = extract_answer(r.output, item.answer_after);
    r.exact = !answer.empty() && answer == extract_answer(item.target, item.answer_after);
  } else {
    r.exact = exact_match(r.output, item.target);
  }
}

// The greedy output of one item: its response up to the budget, EOS, a newline token or (cut
// before it) the first of the item's `until` strings.
void record_greedy_output(const GreedyContext& g, size_t i, const std::vector<int64_t>& response,
                          int64_t budget, ItemResult& r) {
  const int64_t eos = g.tok.eos_id();
  const TaskItem& item = g.items[i];
  for (int64_t id : response) {
    if (static_cast<int64_t>(r.output_ids.size()) == budget || id == eos || g.newlines.contains(id))
      break;
    r.output_ids.push_back(id);
    if (!item.until.empty() &&
        until_position(continuation_text(g.tok, g.prompt_ids[i], r.output_ids, eos), item.until) !=
            std::string::npos)
      break;
  }
  r.output = continuation_text(g.tok, g.prompt_ids[i], r.output_ids, eos);
  const size_t cut = until_position(r.output, item.until);
  if (cut != std::string::npos) r.output.resize(cut);
  judge_output(item, r);
  r.edit = edit_distance(r.output_ids, r.target_ids);
}

void generate_greedy_batch(const GreedyContext& g, const std::vector<size_t>& batch,
                           std::vector<ItemResult>& per_item) {
  const std::vector<int64_t> budgets = generation_budgets(g, batch, per_item);
  std::vector<std::vector<int64_t>> prompts;
  for (size_t i : batch) prompts.push_back(g.prompt_ids[i]);
  SamplingOptions sampling;
  sampling.temperature = 0;
  sampling.max_new_tokens = *std::max_element(budgets.begin(), budgets.end());
  sampling.eos_id = g.tok.eos_id();
  sampling.pad_id = g.tok.pad_id();
  sampling.full_pass_logprobs = false;
  const GenerationBatch generated = generate(g.model, prompts, sampling);
  for (size_t b = 0; b < batch.size(); ++b)
    record_greedy_output(g, batch[b], generated.response(static_cast<int64_t>(b)), budgets[b],
                         per_item[batch[b]]);
}

// Greedy continuations of the generation items, a batch of prompts at a time.
void generate_greedy_outputs(const GreedyContext& g, std::vector<ItemResult>& per_item) {
  std::vector<size_t> generation;
  for (size_t i = 0; i < g.items.size(); ++i)
    if (g.items[i].has_target) generation.push_back(i);
  const size_t batch_size = static_cast<size_t>(g.options.batch_size);
  for (size_t begin = 0; begin < generation.size(); begin += batch_size) {
    const size_t end = std::min(generation.size(), begin + batch_size);
    generate_greedy_batch(
        g, std::vector<size_t>(generation.begin() + begin, generation.begin() + end), per_item);
  }
}

void summarise(const std::vector<TaskItem>& items, EvalResult& result) {
  double exact = 0, edit = 0, edit_norm = 0, loglik = 0, accuracy = 0, p_correct = 0, brier = 0;
  double answer = 0, answer_per_token = 0, constraints = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    ItemResult& r = result.per_item[i];
    loglik += r.loglik_sum / static_cast<double>(r.loglik_tokens);
    answer += r.answer_loglik_sum;
    answer_per_token += r.answer_loglik_sum / static_cast<double>(r.answer_loglik_tokens);
    if (!items[i].constraints.empty()) {
      ++result.instruction_items;
      constraints +=
          static_cast<double>(r.constraints_met) / static_cast<double>(items[i].constraints.size());
    }
    if (items[i].has_target) {
      ++result.generation_items;
      exact += r.exact ? 1 : 0;
      edit += static_cast<double>(r.edit);
      edit_norm += static_cast<double>(r.edit) / static_cast<double>(r.target_ids.size());
    }
    if (!items[i].choices.empty()) {
      ++result.choice_items;
      r.choice_probs = choice_probabilities(r.choice_logliks);
      r.predicted = std::max_element(r.choice_logliks.begin(), r.choice_logliks.end()) -
                    r.choice_logliks.begin();
      accuracy += r.predicted == items[i].answer ? 1 : 0;
      p_correct += r.choice_probs[items[i].answer];
      brier += brier_score(r.choice_probs, items[i].answer);
    }
  }
  result.exact_match = mean_or_nan(exact, result.generation_items);
  result.edit_distance = mean_or_nan(edit, result.generation_items);
  result.edit_distance_norm = mean_or_nan(edit_norm, result.generation_items);
  result.loglik_per_token = mean_or_nan(loglik, result.items);
  result.answer_loglik = mean_or_nan(answer, result.items);
  result.answer_loglik_per_token = mean_or_nan(answer_per_token, result.items);
  result.constraint_fraction = mean_or_nan(constraints, result.instruction_items);
  result.mc_accuracy = mean_or_nan(accuracy, result.choice_items);
  result.p_correct = mean_or_nan(p_correct, result.choice_items);
  result.brier = mean_or_nan(brier, result.choice_items);
}

}  // namespace

EvalResult evaluate_tasks(TransformerImpl& model, const Tokenizer& tok,
                          const std::vector<TaskItem>& items, const EvalOptions& options) {
  check(options.max_new_tokens >= 0, "--max-new-tokens must be >= 0");
  check(options.batch_size >= 1, "eval: batch size must be at least 1");
  check(model.config.num_labels == 0, "eval: the model is not a causal LM (it has a score head)");
  model.eval();
  const int64_t max_positions = model.config.max_position_embeddings;

  EvalResult result;
  result.items = static_cast<int64_t>(items.size());
  result.per_item.resize(items.size());
  const ScoringPairs pairs = collect_scoring_pairs(tok, items, max_positions, result.per_item);
  const auto logprobs = continuation_logprobs(model, pairs.contexts, pairs.continuations,
                                              options.batch_size, tok.pad_id());
  record_logliks(items, pairs, logprobs, result.per_item);
  NewlineTokens newlines(tok);
  generate_greedy_outputs({model, tok, items, pairs.prompt_ids, options, max_positions, newlines},
                          result.per_item);
  summarise(items, result);
  return result;
}

std::vector<EvalResult> evaluate_model_dir(const std::string& dir,
                                           const std::vector<std::vector<TaskItem>>& item_sets,
                                           const EvalOptions& options) {
  Transformer model = load_hf_model_with_adapter(dir, options.adapter, /*num_labels=*/-1,
                                                 QuantizedModels::load_frozen);
  Tokenizer tok(tokenizer_path_in(dir));
  tok.check_matches(model->config, dir);
  std::vector<EvalResult> results;
  for (const auto& items : item_sets)
    results.push_back(evaluate_tasks(*model, tok, items, options));
  return results;
}

EvalResult evaluate_model_dir(const std::string& dir, const std::vector<TaskItem>& items,
                              const EvalOptions& options) {
  return std::move(evaluate_model_dir(dir, std::vector<std::vector<TaskItem>>{items}, options)[0]);
}

nlohmann::json result_json(const EvalResult& r, const std::vector<TaskItem>& items, bool per_item) {
  nlohmann::json j = {{"items", r.items},
                      {"generation_items", r.generation_items},
                      {"choice_items", r.choice_items},
                      {"exact_match", number_or_null(r.exact_match)},
                      {"edit_distance", number_or_null(r.edit_distance)},
                      {"edit_distance_norm", number_or_null(r.edit_distance_norm)},
                      {"loglik_per_token", number_or_null(r.loglik_per_token)},
                      {"answer_loglik", number_or_null(r.answer_loglik)},
                      {"answer_loglik_per_token", number_or_null(r.answer_loglik_per_token)},
                      {"instruction_items", r.instruction_items},
                      {"constraint_fraction", number_or_null(r.constraint_fraction)},
                      {"mc_accuracy", number_or_null(r.mc_accuracy)},
                      {"p_correct_choice", number_or_null(r.p_correct)},
                      {"brier", number_or_null(r.brier)},
                      {"mc_rule", "argmax of the summed log-likelihood of each choice"}};
  if (!per_item) return j;
  nlohmann::json list = nlohmann::json::array();
  for (size_t i = 0; i < r.per_item.size(); ++i) {
    const ItemResult& x = r.per_item[i];
    nlohmann::json e = {{"where", items[i].where},
                        {"loglik", x.loglik_sum},
                        {"loglik_tokens", x.loglik_tokens},
                        {"answer_loglik", x.answer_loglik_sum},
                        {"answer_loglik_tokens", x.answer_loglik_tokens}};
    if (!items[i].constraints.empty()) e["constraints_met"] = x.constraints_met;
    if (items[i].has_target) {
      e["output"] = x.output;
      e["output_ids"] = x.output_ids;
      e["target_ids"] = x.target_ids;
      e["exact_match"] = x.exact;
      e["edit_distance"] = x.edit;
    }
    if (!items[i].choices.empty()) {
      e["choice_logliks"] = x.choice_logliks;
      e["choice_probs"] = x.choice_probs;
      e["predicted"] = x.predicted;
      e["answer"] = items[i].answer;
    }
    list.push_back(std::move(e));
  }
  j["per_item"] = std::move(list);
  return j;
}

std::string result_table(const EvalResult& r) {
  std::string out;
  auto line = [&](const std::string& label, double value, const std::string& note) {
    char text[200];
    std::snprintf(text, sizeof text, "%-30s %10s%s%s\n", label.c_str(),
                  format_metric(value).c_str(), note.empty() ? "" : "  ", note.c_str());
    out += text;
  };
  out += "items: " + std::to_string(r.items) + " (" + std::to_string(r.generation_items) +
         " generation, " + std::to_string(r.choice_items) + " multiple choice)\n";
  out += "discontinuous\n";
  line("  exact match", r.exact_match, "greedy continuation == target (whitespace trimmed)");
  line("  multiple-choice accuracy", r.mc_accuracy, "argmax of the summed log-likelihood");
  out += "continuous\n";
  line("  log-likelihood per token", r.loglik_per_token, "teacher-forced target, nats");
  line("  answer log-likelihood", r.answer_loglik, "summed over the answer's tokens, nats");
  line("  answer ll per token", r.answer_loglik_per_token, "");
  line("  constraints met", r.constraint_fraction, "fraction, instruction items");
  line("  P(correct choice)", r.p_correct, "normalised over the choices");
  line("  Brier score", r.brier, "over the choices, 0 is perfect, 2 the worst");
  line("  edit distance (tokens)", r.edit_distance, "greedy output vs target");
  line("  edit distance / target len", r.edit_distance_norm, "");
  return out;
}

// ---------------------------------------------------------------------------------------------

std::string run_model_dir(const nlohmann::json& row, const std::string& sweep_dir,
                          const std::string& stage, const std::string& where) {
  namespace fs = std::filesystem;
  if (row.contains("model")) {
    const std::string model = string_field(row, "model", where);
    const std::string dir = fs::path(model).is_absolute() ? model : sweep_dir + "/" + model;
    check(is_directory(dir), where + ": model directory " + dir + " does not exist");
    return dir;
  }
  const std::string point = string_field(row, "point", where);
  const std::string point_dir = sweep_dir + "/points/" + point;
  check(is_directory(point_dir), where + ": point directory " + point_dir + " does not exist");
  std::string chosen = !stage.empty() ? stage : row.value("stage", std::string());
  if (chosen.empty()) {
    std::vector<std::string> finished;
    std::error_code error;
    for (const auto& entry : fs::directory_iterator(point_dir, error)) {
      const std::string name = entry.path().filename().string();
      if (path_exists(point_dir + "/" + name + "/complete.json") &&
          path_exists(point_dir + "/" + name + "/final/config.json"))
        finished.push_back(name);
    }
    std::sort(finished.begin(), finished.end());
    check(!finished.empty(), where + ": no finished stage (STAGE/final/) in " + point_dir);
    if (finished.size() > 1 && row.contains("loss")) {
      std::vector<std::string> matching;
      for (const auto& name : finished) {
        const auto done = read_json_file(point_dir + "/" + name + "/complete.json");
        if (done.contains("final_val_loss") && done["final_val_loss"] == row["loss"])
          matching.push_back(name);
      }
      if (matching.size() == 1) finished = matching;
    }
    std::string names;
    for (const auto& name : finished) names += (names.empty() ? "" : ", ") + name;
    check(finished.size() == 1,
          where + ": " + point_dir + " has several finished stages (" + names + "); pass --stage");
    chosen = finished[0];
  }
  const std::string dir = point_dir + "/" + chosen + "/final";
  check(path_exists(dir + "/config.json"),
        where + ": " + dir + " is not a finished stage's model (no config.json)");
  return dir;
}

std::vector<AcrossRow> locate_across(const std::string& runs_path, const std::string& stage) {
  const std::string parent = std::filesystem::path(runs_path).parent_path().string();
  const std::string sweep_dir = parent.empty() ? "." : parent;
  const RecordReadResult read = read_json_records(runs_path);
  std::vector<AcrossRow> rows;
  for (const auto& record : read.records) {
    check(record.value.is_object(), record.where + ": expected a JSON object");
    AcrossRow row;
    row.where = record.where;
    check(record.value.contains("N") && record.value["N"].is_number() &&
              record.value["N"].get<double>() > 0,
          record.where + ": field \"N\" must be a positive number");
    row.n = record.value["N"].get<double>();
    row.point = record.value.value("point", std::string());
    row.model_dir = run_model_dir(record.value, sweep_dir, stage, record.where);
    rows.push_back(std::move(row));
  }
  // Every model is found before any is evaluated: a missing one costs nothing.
  std::stable_sort(rows.begin(), rows.end(),
                   [](const AcrossRow& a, const AcrossRow& b) { return a.n < b.n; });
  return rows;
}

std::vector<AcrossRow> evaluate_across(const std::string& runs_path,
                                       const std::vector<TaskItem>& items,
                                       const EvalOptions& options, const std::string& stage,
                                       bool progress) {
  std::vector<AcrossRow> rows = locate_across(runs_path, stage);
  for (auto& row : rows) {
    row.result = evaluate_model_dir(row.model_dir, items, options);
    if (progress)
      std::fprintf(stderr, "[eval] %s (N %.4g): exact match %s, log-likelihood/token %s\n",
                   row.model_dir.c_str(), row.n, format_metric(row.result.exact_match).c_str(),
                   format_metric(row.result.loglik_per_token).c_str());
  }
  return rows;
}

std::string across_table(const std::vector<AcrossRow>& rows) {
  std::string out;
  char text[400];
  std::snprintf(text, sizeof text, "%-12s %8s %8s %10s %8s %8s %10s  %s\n", "N", "exact", "mc_acc",
                "ll/token", "p_corr", "brier", "edit/len", "run");
  out += text;
  for (const auto& row : rows) {
    const EvalResult& r = row.result;
    std::snprintf(text, sizeof text, "%-12.4g %8s %8s %10s %8s %8s %10s  %s\n", row.n,
                  format_metric(r.exact_match).c_str(), format_metric(r.mc_accuracy).c_str(),
                  format_metric(r.loglik_per_token).c_str(), format_metric(r.p_correct).c_str(),
                  format_metric(r.brier).c_str(), format_metric(r.edit_distance_norm).c_str(),
                  (row.point.empty() ? row.model_dir : row.point).c_str());
    out += text;
  }
  return out;
}

nlohmann::json across_json(const std::vector<AcrossRow>& rows, const std::string& runs_path,
                           const std::string& tasks_path) {
  nlohmann::json list = nlohmann::json::array();
  std::vector<TaskItem> none;
  for (const auto& row : rows) {
    nlohmann::json j = result_json(row.result, none, /*per_item=*/false);
    j["N"] = row.n;
    j["point"] = row.point;
    j["model"] = row.model_dir;
    list.push_back(std::move(j));
  }
  return {{"runs", runs_path}, {"tasks", tasks_path}, {"rows", list}};
}

std::string across_svg(const std::vector<AcrossRow>& rows, const std::string& tasks_name) {
  auto series = [&](const std::string& name, double (*value)(const EvalResult&)) {
    ChartSeries s{name, {}, {}};
    for (const auto& row : rows) {
      s.x.push_back(std::log10(row.n));
      s.y.push_back(value(row.result));
    }
    return s;
  };
  auto keep_drawn = [](std::vector<ChartSeries> list) {
    std::vector<ChartSeries> out;
    for (auto& s : list)
      if (std::any_of(s.y.begin(), s.y.end(), [](double y) { return std::isfinite(y); }))
        out.push_back(std::move(s));
    return out;
  };
  const std::vector<ChartSeries> left = keep_drawn(
      {series("exact match", [](const EvalResult& r) { return r.exact_match; }),
       series("multiple-choice accuracy", [](const EvalResult& r) { return r.mc_accuracy; })});
  const std::vector<ChartSeries> right =
      keep_drawn({series("exp(log-likelihood per token)",
                         [](const EvalResult& r) { return std::exp(r.loglik_per_token); }),
                  series("1 - edit distance / target length",
                         [](const EvalResult& r) { return 1 - r.edit_distance_norm; }),
                  series("P(correct choice)", [](const EvalResult& r) { return r.p_correct; })});
  ChartOptions options;
  options.x_label = "log10 N (non-embedding parameters)";
  options.width = 560;
  options.height = 340;
  ChartOptions left_options = options, right_options = options;
  left_options.title = "Discontinuous: exact match, MC accuracy";
  left_options.attributes = {{"data-panel", "discontinuous"}};
  right_options.title = "Continuous: per-token probability, edit distance";
  right_options.attributes = {{"data-panel", "continuous"}};
  return render_two_panel_document(left, left_options, right, right_options,
                                   "tiller eval --across: " + tasks_name);
}

}  // namespace tiller::eval
