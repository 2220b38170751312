#include "cli/report_cmd.h"

#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>

#include "common/util/error.h"
#include "report/run_report.h"

namespace tiller {

namespace {

struct ReportArgs {
  std::string run_dir;
  std::string out;  // empty: RUN_DIR/report.html
};

void run_report(const ReportArgs& args) {
  const std::string out =
      args.out.empty() ? (std::filesystem::path(args.run_dir) / "report.html").string() : args.out;
  try {
    write_run_report(args.run_dir, out);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error("report: " + std::string(e.what()));
  }
  std::printf("wrote %s\n", out.c_str());
}

}  // namespace

void add_report_command(CLI::App& app) {
  auto args = std::make_shared<ReportArgs>();
  auto* cmd = app.add_subcommand(
      "report",
      "write a run directory's report.html (curves, stage table, PPO samples), or a sweep "
      "directory's (runs, scaling fit, charts)");
  cmd->add_option("run_dir", args->run_dir,
                  "run directory written by `tiller run`, or sweep directory by `tiller sweep`")
      ->required();
  cmd->add_option("--out", args->out, "output file (default: RUN_DIR/report.html)");
  cmd->callback([args] { run_report(*args); });
}

}  // namespace tiller
