// Helpers shared by the tests: paths to the shared data and temporary directories.
#pragma once
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/model/model_config.h"
#include "common/model/transformer.h"

namespace tiller::test {

// The working directory changed for a scope (recipes name paths relative to where they run).
class InDirectory {
 public:
  explicit InDirectory(const std::string& dir) : previous_(std::filesystem::current_path()) {
    std::filesystem::current_path(dir);
  }
  ~InDirectory() { std::filesystem::current_path(previous_); }

 private:
  std::filesystem::path previous_;
};

// stories260K's weights and tokenizer, relative to the shared data.
inline constexpr char kStoriesBin[] = "models/stories260K/stories260K.bin";
inline constexpr char kStoriesTok[] = "models/stories260K/tok512.model";

// ../shared/data relative to the source tree (or $TILLER_SHARED_DATA).
std::string shared_data();
// shared_data()/relative if it exists, else "" (callers GTEST_SKIP with a message).
std::string shared_file(const std::string& relative);
// A fresh empty directory under the build's temp area, removed at exit.
std::string temp_dir(const std::string& name);
// Runs a shell command; returns its exit status and fills output with stdout + stderr.
int run_command(const std::string& command, std::string* output);
// The system Python that imports `module` (Debian's python3-torch, python3-numpy: the oracles'),
// or "" when none does.
std::string python_importing(const std::string& module);
// The tiller binary built alongside the tests.
std::string tiller_binary();
// `tiller ARGS` (OMP_WAIT_POLICY=passive): its exit status, stdout and stderr, apart.
struct CliResult {
  int code = -1;
  std::string out, err;
};
CliResult run_tiller_cli(const std::vector<std::string>& args);
// stories260K (../shared/data) imported and saved as an HF directory at `dir`; "" when the
// shared model is absent (the caller skips).
std::string stories260k_hf_dir(const std::string& dir);
// Starts a command (argv[0] a path) in the background, stdout and stderr appended to `log`.
int spawn_logged(const std::vector<std::string>& args, const std::string& log);
// The same with variables added to (or replacing those in) the environment, "NAME=value" each.
int spawn_logged(const std::vector<std::string>& args, const std::string& log,
                 const std::vector<std::string>& environment);
// Waits for the process up to `seconds`; its exit status (128 + signal when killed by one), or
// -1 when it is still running then (it is left running).
int wait_exit(int pid, double seconds);
// A TCP port on 127.0.0.1 that was free a moment ago.
int free_port();
// recipes/quickstart.json with its run and data directories moved to `dir`; returns the copy's
// path (beside `dir`).
std::string quickstart_recipe_in(const std::string& dir);
// A multi-process job started the way torchrun starts one: `world` copies of args (args[0] the
// binary) with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1 and a free MASTER_PORT (none
// of them when world is 1), OMP_WAIT_POLICY=passive, each logging to LOG_PREFIX.rankN.log.
struct Job {
  std::vector<int> pids;
  std::vector<std::string> logs;
};
Job launch_job(int world, const std::vector<std::string>& args, const std::string& log_prefix,
               const std::vector<std::string>& extra_env = {});
// Every process's exit status; those still running `seconds` after the call are killed and read
// -1.
std::vector<int> wait_job(const Job& job, double seconds);
// Every process's log, headed by its path (for failure messages).
std::string job_logs(const Job& job);
// `tiller pretrain` of the quickstart recipe moved under dir: small data, 1 thread, micro-batches
// of 8, a metrics line every step, then `extra` overrides.
std::vector<std::string> quickstart_pretrain_args(const std::string& dir,
                                                  const std::vector<std::string>& extra);
// metrics.jsonl as step -> record (a line cut short by a kill is skipped).
std::map<int64_t, nlohmann::json> metrics_by_step(const std::string& path);

// The largest integer "step" in a metrics.jsonl (-1 when none; partial lines ignored).
int64_t last_logged_step(const std::string& metrics_path);
// The arguments as one shell command line, each single-quoted.
std::string shell_command(const std::vector<std::string>& args);
// Writes text to path (bytes as they are); returns path.
std::string write_file(const std::string& path, const std::string& text);
// write_file at temp_dir(dir_name)/name.
std::string write_temp_file(const std::string& dir_name, const std::string& name,
                            const std::string& text);
// text's lines, without their '\n' (a last line without one included).
std::vector<std::string> lines_of(const std::string& text);
// A whole file's bytes ("" when it cannot be read).
std::string read_bytes(const std::string& path);
// The message of the tiller::Error that f throws, or "" when it throws none.
std::string error_of(const std::function<void()>& f);

// A small Llama of the given shape (vocabulary, width, MLP width, layers, heads, KV heads,
// context); the other fields keep ModelConfig's defaults.
ModelConfig llama_config(int64_t vocab, int64_t hidden, int64_t intermediate, int64_t layers,
                         int64_t heads, int64_t kv_heads, int64_t context);

// Random weights of `config` with the matrices scaled from N(0, 0.02) to N(0, 0.2), in eval
// mode: logits with clear margins, so greedy choices do not hinge on rounding and two code paths'
// sequences can be compared exactly, while fp32 log-probs still agree well within 1e-5.
Transformer sharp_random_model(const ModelConfig& config, uint64_t seed);

}  // namespace tiller::test

namespace tiller::test {
// Expects got within tolerance * max(1, max |want|) of want everywhere, and no NaN in got.
void expect_close_to_scale(const torch::Tensor& got, const torch::Tensor& want, double tolerance,
                           const std::string& what);
// The same weights under the same names, of the same type and values, in the same order.
void expect_same_weights(TransformerImpl& a, TransformerImpl& b);

// expect_close_to_scale at 1e-5: a fused kernel against its formula.
void expect_kernel_close(const torch::Tensor& got, const torch::Tensor& want,
                         const std::string& what);
}  // namespace tiller::test

#define TILLER_REQUIRE_SHARED(var, relative)                                                \
  const std::string var = ::tiller::test::shared_file(relative);                            \
  if (var.empty())                                                                          \
  GTEST_SKIP() << "skipped: " << relative << " not found under ../shared/data (the shared " \
               << "third-party data is absent)"
