#include "cli/eval_cmd.h"

#include <algorithm>
#include <any>
#include <cstdio>
#include <filesystem>
#include <iterator>
#include <memory>

#include "common/data/sft_data.h"
#include "common/io/hf_dir.h"
#include "common/recipe/recipe.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "common/util/runtime.h"
#include "eval/fewshot.h"
#include "eval/make_task.h"
#include "eval/task_eval.h"
#include "sft/sft_stage.h"
#include "stages/stage_types.h"

namespace tiller {
namespace {

struct EvalArgs {
  std::string model, across, tasks, svg, stage;
  bool json = false;
  eval::EvalOptions options;
  int threads = 0;
  std::string fewshot_pool;
  eval::FewShotOptions fewshot;
};

// The task's items, with --num-fewshot examples from --fewshot-pool before each prompt.
std::vector<eval::TaskItem> read_items(const EvalArgs& a) {
  check(a.fewshot.k == 0 || !a.fewshot_pool.empty(),
        "eval: --num-fewshot " + std::to_string(a.fewshot.k) +
            " needs --fewshot-pool POOL.jsonl (the solved examples to draw from)");
  const auto items = eval::read_task_file(a.tasks);
  if (a.fewshot.k == 0) return items;
  return eval::with_shots(items, eval::read_task_file(a.fewshot_pool), a.fewshot);
}

void run_eval(const EvalArgs& a) {
  check(a.model.empty() != a.across.empty(),
        "eval: give --model DIR or --across SWEEP_DIR/runs.jsonl (or a subcommand: reward, "
        "preference, make-task)");
  check(!a.tasks.empty(), "eval: --tasks TASK.jsonl is required");
  check(a.svg.empty() || !a.across.empty(), "eval: --svg needs --across");
  check(a.stage.empty() || !a.across.empty(), "eval: --stage needs --across");
  check(a.options.adapter.empty() || !a.model.empty(), "eval: --adapter needs --model");
  const auto items = read_items(a);
  set_threads(a.threads);
  warn_if_slow_blas();
  if (!a.model.empty()) {
    const auto result = eval::evaluate_model_dir(a.model, items, a.options);
    if (a.json) {
      auto j = eval::result_json(result, items, /*per_item=*/true);
      j["model"] = a.model;
      if (!a.options.adapter.empty()) j["adapter"] = a.options.adapter;
      j["tasks"] = a.tasks;
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("model %s, tasks %s\n%s", a.model.c_str(), a.tasks.c_str(),
                  eval::result_table(result).c_str());
    }
    return;
  }
  const auto rows =
      eval::evaluate_across(a.across, items, a.options, a.stage, /*progress=*/!a.json);
  if (!a.svg.empty()) {
    write_file_atomic(a.svg, eval::across_svg(rows, a.tasks));
    if (!a.json) std::printf("wrote %s\n", a.svg.c_str());
  }
  if (a.json) {
    std::printf("%s\n", eval::across_json(rows, a.across, a.tasks).dump().c_str());
  } else {
    std::printf("%s", eval::across_table(rows).c_str());
  }
}

struct MakeTaskArgs {
  std::string from, out;
  std::vector<std::string> held_out_of;
  eval::MakeTaskOptions options;
};

// The documents of `from` that the pretrain stage in STAGE_DIR held out for validation, read from
// its run's resolved recipe (RUN_DIR/recipe.json) and its tokenizer (STAGE_DIR/final).
std::vector<int64_t> held_out_by_stage(const std::string& stage_dir, const std::string& from,
                                       const std::vector<std::string>& documents) {
  namespace fs = std::filesystem;
  const fs::path path = fs::path(stage_dir).lexically_normal();
  const std::string stage = (path.filename().empty() ? path.parent_path() : path).filename();
  const std::string run_dir = (path.filename().empty() ? path.parent_path() : path).parent_path();
  const std::string recipe_path = (run_dir.empty() ? "." : run_dir) + "/recipe.json";
  check(path_exists(recipe_path),
        "--held-out-of " + stage_dir + ": no " + recipe_path + " (a stage directory of a run)");
  ConfigErrors errors;
  const Recipe recipe = load_recipe(recipe_path, {}, errors);
  errors.throw_if_any(recipe_path);
  const StageEntry* entry = nullptr;
  for (const auto& s : recipe.stages)
    if (s.name == stage) entry = &s;
  check(entry != nullptr,
        "--held-out-of " + stage_dir + ": " + recipe_path + " has no stage named '" + stage + "'");
  const std::any parsed = parse_stage(*entry, errors);
  errors.throw_if_any(recipe_path);
  const auto* lm_stage = std::any_cast<SftStageConfig>(&parsed);
  check(lm_stage != nullptr && lm_stage->pretrain,
        "--held-out-of " + stage_dir + ": stage " + stage + " is not a pretrain stage");
  const SftStageConfig& c = *lm_stage;
  check(c.val_path.empty(), "--held-out-of " + stage_dir +
                                ": the stage validates on its own file " + c.val_path +
                                "; make the task --from that file instead");
  std::error_code error;
  check(fs::equivalent(c.data.path, from, error), "--held-out-of " + stage_dir +
                                                      ": the stage pretrained on " + c.data.path +
                                                      ", not on " + from);
  Tokenizer tok(tokenizer_path_in(stage_dir + "/final"));
  return eval::held_out_documents(documents, tok, c.train.max_seq_len, c.val_fraction,
                                  recipe.run.seed);
}

void run_make_task(const MakeTaskArgs& a) {
  std::vector<std::string> documents = read_text_documents(a.from, false, nullptr);
  std::string source;
  if (a.held_out_of.empty()) {
    // The last 5% of the documents (what a val_fraction of 0.05 holds out in size, not in which).
    const size_t tail = std::max<size_t>(1, documents.size() / 20);
    documents.erase(documents.begin(), documents.end() - static_cast<std::ptrdiff_t>(tail));
    source = "the last " + std::to_string(tail) + " documents of " + a.from;
  } else {
    std::vector<int64_t> kept;
    for (size_t i = 0; i < documents.size(); ++i) kept.push_back(static_cast<int64_t>(i));
    for (const auto& stage_dir : a.held_out_of) {
      const auto held = held_out_by_stage(stage_dir, a.from, documents);
      std::vector<int64_t> both;
      std::set_intersection(kept.begin(), kept.end(), held.begin(), held.end(),
                            std::back_inserter(both));
      kept = std::move(both);
    }
    check(!kept.empty(), "make-task: no document of " + a.from + " is held out by every stage");
    std::vector<std::string> held;
    for (int64_t i : kept) held.push_back(std::move(documents[i]));
    documents = std::move(held);
    source = std::to_string(documents.size()) + " documents of " + a.from +
             " held out for validation by " + std::to_string(a.held_out_of.size()) + " stage(s)";
  }
  std::string note;
  const auto items = eval::make_task_items(documents, a.options, &note);
  std::string text;
  for (const auto& item : items) text += item.dump() + "\n";
  write_file_atomic(a.out, text);
  if (!note.empty()) std::fprintf(stderr, "tiller: note: %s\n", note.c_str());
  std::printf("wrote %zu items to %s (sentences from %s; %lld-word targets, %lld choices)\n",
              items.size(), a.out.c_str(), source.c_str(), (long long)a.options.target_words,
              (long long)a.options.choices);
}

}  // namespace

void add_eval_task_commands(CLI::App& eval_cmd) {
  auto args = std::make_shared<EvalArgs>();
  eval_cmd.add_option("--model", args->model, "HF model directory to evaluate");
  eval_cmd.add_option("--adapter", args->options.adapter,
                      "a LoRA adapter directory (PEFT layout) applied to --model");
  eval_cmd.add_option("--across", args->across,
                      "a sweep's runs.jsonl: evaluate every run's model, sorted by N");
  eval_cmd.add_option("--tasks", args->tasks, "task JSONL (docs/eval.md)");
  eval_cmd.add_option("--svg", args->svg, "with --across: write the two-panel chart here");
  eval_cmd.add_option("--stage", args->stage,
                      "with --across: the measured stage of each point (default: found)");
  eval_cmd.add_flag("--json", args->json, "print one JSON object");
  eval_cmd
      .add_option("--max-new-tokens", args->options.max_new_tokens,
                  "greedy tokens per generation item (0: the target's token count)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20))
      ->capture_default_str();
  eval_cmd.add_option("--batch-size", args->options.batch_size, "sequences per forward pass")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}))
      ->capture_default_str();
  eval_cmd.add_option("--threads", args->threads, "intra-op threads (0: all cores)")
      ->check(CLI::Range(0, 1024));
  eval_cmd
      .add_option("--num-fewshot", args->fewshot.k,
                  "solved examples from --fewshot-pool before each prompt (k-shot)")
      ->check(CLI::Range(int64_t{0}, int64_t{1024}))
      ->capture_default_str();
  eval_cmd.add_option("--fewshot-pool", args->fewshot_pool,
                      "task JSONL of solved examples (items with a target) for --num-fewshot");
  eval_cmd.add_option("--fewshot-seed", args->fewshot.seed, "which examples each item gets")
      ->capture_default_str();
  eval_cmd.add_option("--fewshot-separator", args->fewshot.separator,
                      "between the examples and before the prompt (default: a newline)");

  auto make = std::make_shared<MakeTaskArgs>();
  auto* make_cmd = eval_cmd.add_subcommand(
      "make-task", "write a toy task (sentence endings, with choices) from a text corpus");
  make_cmd
      ->add_option("--from", make->from, "text corpus (one document a line, or {\"text\"} JSONL)")
      ->required();
  make_cmd->add_option("--out", make->out, "task JSONL to write")->required();
  make_cmd->add_option("--count", make->options.count, "items")
      ->check(CLI::Range(int64_t{1}, int64_t{10000000}))
      ->capture_default_str();
  make_cmd->add_option("--seed", make->options.seed)->capture_default_str();
  make_cmd->add_option("--target-words", make->options.target_words, "K: words in each target")
      ->check(CLI::Range(int64_t{1}, int64_t{50}))
      ->capture_default_str();
  make_cmd->add_option("--choices", make->options.choices, "choices per item (1 right)")
      ->check(CLI::Range(int64_t{2}, int64_t{26}))
      ->capture_default_str();
  make_cmd->add_option("--held-out-of", make->held_out_of,
                       "RUN_DIR/STAGE of a pretrain on --from: use only the documents it held out "
                       "for validation (repeatable: held out by all); default: the file's last 5%");
  make_cmd->callback([make] { run_make_task(*make); });

  eval_cmd.callback([args, &eval_cmd] {
    if (!eval_cmd.get_subcommands().empty()) return;  // eval reward, eval make-task
    run_eval(*args);
  });
}

}  // namespace tiller
