// `tiller eval make-suite` and `tiller eval emergence` (docs/eval.md, "Emergence").
#include <cstdio>
#include <filesystem>
#include <memory>

#include "cli/eval_cmd.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "common/util/runtime.h"
#include "eval/emergence.h"
#include "eval/emergence_data.h"

namespace tiller {
namespace {

struct MakeSuiteArgs {
  std::string out;
  eval::EmergenceDataOptions options;
};

void run_make_suite(const MakeSuiteArgs& a) {
  const std::string suite = eval::write_emergence_suite(a.out, a.options);
  std::printf(
      "wrote %s/corpus.txt (%lld lines), the task files and %s (%lld items a task, %lld "
      "pool examples)\n",
      a.out.c_str(), static_cast<long long>(a.options.corpus_lines), suite.c_str(),
      static_cast<long long>(a.options.test_items), static_cast<long long>(a.options.pool_items));
}

struct EmergenceArgs {
  std::string across, suite, out, stage;
  bool json = false;
  int threads = 0;
  eval::EvalOptions options;
};

void run_emergence(const EmergenceArgs& a) {
  // Everything that can be wrong with the input is found before a model loads.
  const auto variants = eval::suite_variants(eval::read_suite(a.suite));
  const std::string sweep_dir = std::filesystem::path(a.across).parent_path().string();
  const std::string out =
      !a.out.empty() ? a.out : (sweep_dir.empty() ? "." : sweep_dir) + "/emergence";
  set_threads(a.threads);
  warn_if_slow_blas();
  const auto points =
      eval::evaluate_suite_across(a.across, variants, a.options, a.stage, /*progress=*/true);
  const eval::MirageRule rule;
  const auto readings = eval::read_variants(points, variants, rule);
  nlohmann::json j = eval::emergence_json(points, variants, readings, rule);
  j["suite"] = a.suite;
  j["runs"] = a.across;
  const std::string markdown = eval::emergence_markdown(points, variants, readings);
  make_directories(out);
  for (const auto& [figure, svg] : eval::emergence_svgs(points, variants))
    write_file_atomic(out + "/" + figure + ".svg", svg);
  write_file_atomic(out + "/emergence.md", markdown);
  write_file_atomic(out + "/emergence.json", j.dump(1) + "\n");
  if (a.json) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s\nwrote %s/emergence.json, %s/emergence.md and the figures\n", markdown.c_str(),
                out.c_str(), out.c_str());
  }
}

}  // namespace

void add_eval_emergence_commands(CLI::App& eval_cmd) {
  auto make = std::make_shared<MakeSuiteArgs>();
  auto* make_cmd = eval_cmd.add_subcommand(
      "make-suite",
      "write the synthetic emergence suite: a pretraining corpus, k-shot, step-by-step and "
      "instruction tasks, suite.json");
  make_cmd->add_option("--out", make->out, "directory to write")->required();
  make_cmd->add_option("--seed", make->options.seed)->capture_default_str();
  make_cmd->add_option("--corpus-lines", make->options.corpus_lines, "documents of corpus.txt")
      ->check(CLI::Range(int64_t{1}, int64_t{10000000}))
      ->capture_default_str();
  make_cmd->add_option("--items", make->options.test_items, "test items per task")
      ->capture_default_str();
  make_cmd
      ->add_option("--pool-items", make->options.pool_items,
                   "k-shot examples per task (per operation for the in-context task)")
      ->capture_default_str();
  make_cmd->callback([make] { run_make_suite(*make); });

  auto args = std::make_shared<EmergenceArgs>();
  auto* cmd = eval_cmd.add_subcommand(
      "emergence", "evaluate a suite across a sweep's model sizes, with the mirage reading");
  cmd->add_option("--across", args->across, "a sweep's runs.jsonl")->required();
  cmd->add_option("--suite", args->suite, "suite.json (docs/eval.md)")->required();
  cmd->add_option("--out", args->out, "output directory (default: SWEEP_DIR/emergence)");
  cmd->add_option("--stage", args->stage, "the measured stage of each point (default: found)");
  cmd->add_flag("--json", args->json, "print emergence.json on stdout instead of the table");
  cmd->add_option("--batch-size", args->options.batch_size, "sequences per forward pass")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}))
      ->capture_default_str();
  cmd->add_option("--threads", args->threads, "intra-op threads (0: all cores)")
      ->check(CLI::Range(0, 1024));
  cmd->callback([args] { run_emergence(*args); });
}

}  // namespace tiller
