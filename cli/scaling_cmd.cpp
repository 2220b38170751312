#include "cli/scaling_cmd.h"

#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "common/util/error.h"
#include "report/scaling_report.h"
#include "scaling/analysis.h"
#include "scaling/curve.h"
#include "scaling/hparams.h"
#include "scaling/runs_table.h"

namespace tiller {
namespace {

struct ScalingFitArgs {
  std::string path;
  scaling::RunsColumns columns;
  scaling::ScalingOptions options;
  double predict_n = 0, predict_d = 0, predict_c = 0;
  std::string svg_dir;
  bool json = false;
};

// --bootstrap R and --seed S, as every fit with intervals takes them.
void add_bootstrap_options(CLI::App& cmd, const std::string& resampled, int& bootstrap,
                           uint64_t& seed) {
  cmd.add_option("--bootstrap", bootstrap,
                 "resamples of " + resampled + " for the intervals (0: none)")
      ->check(CLI::Range(0, 100000))
      ->capture_default_str();
  cmd.add_option("--seed", seed, "seed of the bootstrap")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
}

void run_scaling_fit(ScalingFitArgs args) {
  const scaling::RunsTable table = scaling::read_runs(args.path, args.columns);
  const scaling::RunsColumns& c = args.columns;
  check((table.has_n && table.has_d) || (table.has_c && !table.has_n && !table.has_d),
        args.path +
            ": the fits need N and D, or C with one of them (C alone: Kaplan's L(C)); found " +
            (table.has_n ? "" : "no '" + c.n + "' (--n-col), ") +
            (table.has_d ? "" : "no '" + c.d + "' (--d-col), ") +
            (table.has_c ? "a C column" : "no '" + c.c + "' (--c-col)"));
  const scaling::ScalingAnalysis analysis = scaling::analyze_runs(table, args.options);
  std::vector<std::string> charts;
  if (!args.svg_dir.empty())
    charts = write_scaling_charts(render_scaling_charts(table, &analysis), args.svg_dir);
  if (args.json) {
    std::printf("%s\n", scaling::to_json(analysis).dump().c_str());
    return;
  }
  std::fputs(scaling::format_report(analysis).c_str(), stdout);
  if (!charts.empty()) std::printf("\nCharts:\n");
  for (const std::string& path : charts) std::printf("  %s\n", path.c_str());
}

struct ScalingHparamsArgs {
  std::string path;
  scaling::HparamColumns columns;
  scaling::HparamOptions options;
  bool json = false;
};

void run_scaling_hparams(const ScalingHparamsArgs& args) {
  const scaling::HparamAnalysis analysis =
      scaling::analyze_hparams(scaling::read_hparam_runs(args.path, args.columns), args.options);
  if (args.json)
    std::printf("%s\n", scaling::to_json(analysis).dump().c_str());
  else
    std::fputs(scaling::format_report(analysis).c_str(), stdout);
}

void add_hparams_command(CLI::App& scaling_cmd) {
  auto* cmd = scaling_cmd.add_subcommand(
      "hparams",
      "fit B_opt = k_B C^b and eta_opt = k_eta C^e over an LR x batch grid (DeepSeek LLM)");
  auto args = std::make_shared<ScalingHparamsArgs>();
  cmd->add_option("FILE", args->path, "runs.jsonl, or a CSV with a header row")->required();
  cmd->add_option("--lr-col", args->columns.lr, "column of peak learning rates")
      ->capture_default_str();
  cmd->add_option("--batch-col", args->columns.batch, "column of batch sizes (tokens per step)")
      ->capture_default_str();
  auto* c_col = cmd->add_option("--c-col", args->columns.c, "column of compute C (FLOPs; else 6ND)")
                    ->capture_default_str();
  cmd->add_option("--loss-col", args->columns.loss, "column of final validation losses")
      ->capture_default_str();
  auto* budget_col = cmd->add_option("--budget-col", args->columns.budget,
                                     "column of compute budgets: runs with equal values share a "
                                     "budget (instead of grouping by C)");
  budget_col->excludes(c_col);
  cmd->add_option("--tolerance", args->options.tolerance,
                  "near-optimal: loss within this percent of the budget's lowest")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--budget-tolerance", args->options.budget_tolerance,
                  "runs whose C differ by at most this percent share a budget")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str()
      ->excludes(budget_col);
  add_bootstrap_options(*cmd, "the near-optimal runs", args->options.bootstrap, args->options.seed);
  cmd->add_option("--predict-c", args->options.predict_c,
                  "also give B_opt and eta_opt at this many FLOPs (repeatable)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_flag("--average-repeats", args->options.average_repeats,
                "runs of one budget at the same batch and lr are repeats (seeds): one point, "
                "their mean loss");
  cmd->add_flag("--json", args->json, "print one JSON object");
  cmd->callback([args, c_col] {
    ScalingHparamsArgs a = *args;
    a.columns.require_c = c_col->count() > 0;
    run_scaling_hparams(a);
  });
}

struct ScalingCurveArgs {
  std::string path, recipe, stage;
  std::vector<std::string> from_runs;
  scaling::CurveOptions options;
  bool json = false;
};

void run_scaling_curve(const ScalingCurveArgs& args) {
  // By default the stage is the directory holding metrics.jsonl, and the resolved recipe
  // RUN_DIR/recipe.json sits two levels above it (RUN_DIR/STAGE/metrics.jsonl).
  const std::filesystem::path metrics = std::filesystem::absolute(args.path);
  const std::string stage =
      args.stage.empty() ? metrics.parent_path().filename().string() : args.stage;
  const std::string recipe = args.recipe.empty()
                                 ? (metrics.parent_path().parent_path() / "recipe.json").string()
                                 : args.recipe;
  const scaling::CurveLog log = scaling::read_curve_log(args.path);
  const ScheduleOptions schedule = scaling::schedule_from_recipe(recipe, stage);
  const std::vector<scaling::FinishedRun> finished =
      args.from_runs.empty()
          ? std::vector<scaling::FinishedRun>{}
          : scaling::read_finished_runs(args.from_runs, stage, schedule.kind, args.path);
  const scaling::CurveForecast forecast =
      scaling::forecast_curve(log, schedule, args.options, args.path, finished);
  if (args.json)
    std::printf("%s\n", scaling::to_json(forecast).dump().c_str());
  else
    std::fputs(scaling::format_report(forecast).c_str(), stdout);
}

void add_curve_command(CLI::App& scaling_cmd) {
  auto* cmd = scaling_cmd.add_subcommand(
      "curve",
      "forecast a stage's final loss from its early curve: L0 + A S1^-alpha - C S2 (LR "
      "annealing, Tissue et al. 2024) beside a power law in steps");
  auto args = std::make_shared<ScalingCurveArgs>();
  cmd->add_option("METRICS", args->path, "a pretrain/sft stage's metrics.jsonl")->required();
  auto* at_step =
      cmd->add_option("--at-step", args->options.at_step, "fit the points up to this step")
          ->check(CLI::PositiveNumber);
  cmd->add_option("--at-fraction", args->options.at_fraction,
                  "fit the points up to this fraction of the run's steps")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str()
      ->excludes(at_step);
  cmd->add_option("--recipe", args->recipe,
                  "the resolved recipe (default: RUN_DIR/recipe.json two levels above METRICS)");
  cmd->add_option("--stage", args->stage,
                  "the stage's name in the recipe (default: the directory holding METRICS)");
  cmd->add_option("--lambda", args->options.lambda, "decay factor of the annealing momentum")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--from-runs", args->from_runs,
                  "finished runs to map onto this one: a sweep or run directory (searched for "
                  "STAGE/metrics.jsonl beside complete.json) or a metrics.jsonl (repeatable)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  add_bootstrap_options(*cmd, "the fitted points", args->options.bootstrap, args->options.seed);
  cmd->add_flag("--json", args->json, "print one JSON object");
  cmd->callback([args] { run_scaling_curve(*args); });
}

}  // namespace

void add_scaling_commands(CLI::App& app) {
  auto* scaling_cmd =
      app.add_subcommand("scaling", "scaling laws: fit losses of training runs, forecast");
  scaling_cmd->require_subcommand(1);
  auto* fit = scaling_cmd->add_subcommand(
      "fit",
      "fit the scaling laws the runs support: Chinchilla's L(N, D), L(N) or L(D) of a single-D "
      "(single-N) sweep, Kaplan's power laws; forecast");
  auto args = std::make_shared<ScalingFitArgs>();
  fit->add_option("FILE", args->path, "runs.jsonl, or a CSV with a header row")->required();
  auto* n_col =
      fit->add_option("--n-col", args->columns.n, "column of parameters N")->capture_default_str();
  auto* d_col = fit->add_option("--d-col", args->columns.d, "column of training tokens D")
                    ->capture_default_str();
  auto* c_col = fit->add_option("--c-col", args->columns.c, "column of compute C (FLOPs, 6ND)")
                    ->capture_default_str();
  fit->add_option("--loss-col", args->columns.loss, "column of final losses")
      ->capture_default_str();
  fit->add_option("--exclude-highest-loss", args->options.exclude_highest_loss,
                  "leave out the K runs of highest loss (outliers)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  add_bootstrap_options(*fit, "the runs", args->options.bootstrap, args->options.seed);
  auto* predict_n =
      fit->add_option("--predict-n", args->predict_n,
                      "forecast the loss at N parameters: L(N) laws, and with --predict-d the "
                      "two-variable laws")
          ->check(CLI::PositiveNumber);
  auto* predict_d = fit->add_option("--predict-d", args->predict_d,
                                    "forecast the loss at D tokens: L(D) laws, and with "
                                    "--predict-n the two-variable laws")
                        ->check(CLI::PositiveNumber);
  auto* predict_c =
      fit->add_option("--predict-c", args->predict_c, "forecast the loss at C FLOPs: Kaplan's L(C)")
          ->check(CLI::PositiveNumber);
  auto* holdout = fit->add_flag("--holdout-largest", args->options.holdout_largest,
                                "fit on every run but the largest (by C) and forecast it with "
                                "each law: forecast, actual, error");
  holdout->excludes(predict_n)->excludes(predict_d)->excludes(predict_c);
  fit->add_option("--budget", args->options.budgets,
                  "also give the compute-optimal N, D at this many FLOPs (repeatable)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  fit->add_option("--svg-dir", args->svg_dir,
                  "write loss_vs_N.svg, loss_vs_D.svg, loss_vs_C.svg (runs, fit, forecast) here");
  fit->add_flag("--json", args->json, "print one JSON object");
  fit->callback([args, n_col, d_col, c_col, predict_n, predict_d, predict_c] {
    ScalingFitArgs a = *args;
    a.columns.require_n = n_col->count() > 0;
    a.columns.require_d = d_col->count() > 0;
    a.columns.require_c = c_col->count() > 0;
    if (predict_n->count() > 0) a.options.predict_n = a.predict_n;
    if (predict_d->count() > 0) a.options.predict_d = a.predict_d;
    if (predict_c->count() > 0) a.options.predict_c = a.predict_c;
    run_scaling_fit(a);
  });
  add_hparams_command(*scaling_cmd);
  add_curve_command(*scaling_cmd);
}

}  // namespace tiller
