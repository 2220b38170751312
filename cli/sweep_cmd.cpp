#include "cli/sweep_cmd.h"

#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <fstream>

#include "common/recipe/recipe.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "common/util/process.h"
#include "scaling/sweep.h"
#include "stages/stage_types.h"

namespace tiller {
namespace {

struct SweepArgs {
  std::string recipe;
  std::vector<std::string> grid;
  std::vector<std::string> overrides;
  std::string stage;
  std::string out;
};

// Runs this tiller binary with `args`, stdout and stderr to `log` (appended, or discarded when
// empty); returns the exit status.
int run_tiller(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> argv = {"/proc/self/exe"};
  argv.insert(argv.end(), args.begin(), args.end());
  const int pid = spawn_with_output(argv, log.empty() ? "/dev/null" : log);
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string last_line(const std::string& path) {
  std::string text = path_exists(path) ? read_file(path) : "";
  while (!text.empty() && text.back() == '\n') text.pop_back();
  return text.substr(text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1);
}

void run_sweep(const SweepArgs& a) {
  ConfigErrors errors;
  const Recipe recipe = load_recipe(a.recipe, a.overrides, errors);
  errors.throw_if_any(a.recipe);
  // A sweep measures a stage that trains a language model (its validation loss).
  auto sweepable = [](const StageEntry& entry) {
    const StageType* type = find_stage_type(stage_registry(), entry.type);
    return type != nullptr && type->sweepable;
  };
  const std::string kinds = stage_type_names(stage_registry(), " or ", /*sweepable_only=*/true);
  std::string stage = a.stage;
  if (stage.empty()) {
    for (const auto& s : recipe.stages)
      if (stage.empty() && sweepable(s)) stage = s.name;
    check(!stage.empty(), a.recipe + ": no " + kinds + " stage to sweep");
  }
  bool found = false;
  for (const auto& s : recipe.stages) {
    if (s.name != stage) continue;
    found = true;
    check(sweepable(s),
          "--stage " + stage + ": a sweep measures a " + kinds + " stage, not " + s.type);
  }
  check(found, "--stage: no stage named '" + stage + "' in " + a.recipe);

  std::vector<scaling::GridAxis> axes;
  for (const auto& g : a.grid) axes.push_back(scaling::parse_grid_axis(g));
  const auto points = scaling::expand_grid(axes);
  const std::string out = a.out.empty() ? recipe.run.dir + "-sweep" : a.out;
  auto args_for = [&](const scaling::GridPoint& p) {
    std::vector<std::string> args = {"run", a.recipe};
    args.insert(args.end(), a.overrides.begin(), a.overrides.end());
    args.insert(args.end(), p.overrides.begin(), p.overrides.end());
    args.push_back("run.dir=" + out + "/points/" + p.name);
    return args;
  };

  // Every point's recipe is checked before any runs: a typo in the grid costs nothing.
  for (const auto& p : points) {
    auto args = args_for(p);
    args.push_back("--check");
    const std::string check_log = out + "/check.log";
    make_directories(out);
    write_file_atomic(check_log, "");
    if (run_tiller(args, check_log) != 0)
      throw Error("sweep point " + p.name + ": " + last_line(check_log));
  }
  std::printf("[sweep] %zu points of %s, measuring stage %s, in %s\n", points.size(),
              a.recipe.c_str(), stage.c_str(), out.c_str());

  std::vector<nlohmann::json> records;
  for (const auto& p : points) {
    const std::string dir = out + "/points/" + p.name;
    const std::string stage_dir = dir + "/" + stage;
    if (path_exists(stage_dir + "/complete.json")) {
      std::printf("[sweep] %s: done already\n", p.name.c_str());
    } else {
      std::printf("[sweep] %s: running (log %s/log.txt)\n", p.name.c_str(), dir.c_str());
      std::fflush(stdout);
      make_directories(dir);
      const auto started = std::chrono::steady_clock::now();
      auto args = args_for(p);
      args.insert(args.end(), {"--until", stage});
      const int code = run_tiller(args, dir + "/log.txt");
      check(code == 0 && path_exists(stage_dir + "/complete.json"),
            "sweep point " + p.name + " failed (exit " + std::to_string(code) + "; " + dir +
                "/log.txt): " + last_line(dir + "/log.txt"));
      std::printf(
          "[sweep] %s: %.1f s\n", p.name.c_str(),
          std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    }
    records.push_back(scaling::sweep_record(p, stage_dir));
    const auto& r = records.back();
    std::printf("[sweep] %s: val loss %.4f  N %.4g  D %.4g  C %.4g\n", p.name.c_str(),
                r["loss"].get<double>(), r["N"].get<double>(), r["D"].get<double>(),
                r["C"].get<double>());
    std::string lines;
    for (const auto& record : records) lines += record.dump() + "\n";
    write_file_atomic(out + "/runs.jsonl", lines);
    std::fflush(stdout);
  }
  std::printf("[sweep] %s/runs.jsonl: %zu runs; fit with `tiller scaling fit %s/runs.jsonl`\n",
              out.c_str(), records.size(), out.c_str());
}

}  // namespace

void add_sweep_command(CLI::App& app) {
  auto args = std::make_shared<SweepArgs>();
  auto* cmd = app.add_subcommand(
      "sweep", "run a grid of recipe overrides and collect runs.jsonl for `scaling fit`");
  cmd->add_option("recipe", args->recipe, "recipe JSON file")->required();
  cmd->add_option("overrides", args->overrides, "key.sub=value overrides for every point");
  cmd->add_option("--grid", args->grid,
                  "key=v1,v2,... or linked keys k1:k2=a1:a2,b1:b2 (repeat for more axes)")
      ->required();
  cmd->add_option("--stage", args->stage,
                  "the pretrain or sft stage measured (default: the first)");
  cmd->add_option("--out", args->out, "sweep directory (default: RUN_DIR-sweep)");
  cmd->callback([args] { run_sweep(*args); });
}

}  // namespace tiller
