#include "tests/test_util.h"

#include "common/io/hf_dir.h"
#include "common/io/llama2c.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "common/util/process.h"
#include "tiller_build_paths.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace tiller::test {

namespace fs = std::filesystem;

std::string shared_data() {
  if (const char* env = std::getenv("TILLER_SHARED_DATA")) return env;
  return (fs::path(TILLER_SOURCE_DIR).parent_path() / "shared" / "data").string();
}

std::string shared_file(const std::string& relative) {
  const std::string path = shared_data() + "/" + relative;
  return fs::exists(path) ? path : "";
}

std::string temp_dir(const std::string& name) {
  const fs::path root = fs::temp_directory_path() / ("tiller-test-" + std::to_string(::getpid()));
  const fs::path dir = root / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  static struct Cleanup {
    fs::path root;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(root, ec);
    }
  } cleanup{root};
  return dir.string();
}

int run_command(const std::string& command, std::string* output) {
  std::string full = command + " 2>&1";
  FILE* pipe = ::popen(full.c_str(), "r");
  if (pipe == nullptr) return -1;
  std::array<char, 4096> buffer{};
  std::string text;
  size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) text.append(buffer.data(), n);
  int status = ::pclose(pipe);
  if (output != nullptr) *output = text;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string python_importing(const std::string& module) {
  for (const char* python : {"/usr/bin/python3", "python3"}) {
    std::string out;
    if (run_command(std::string(python) + " -c 'import " + module + "'", &out) == 0) return python;
  }
  return "";
}

std::string tiller_binary() {
  return TILLER_BINARY;
}

CliResult run_tiller_cli(const std::vector<std::string>& args) {
  static int counter = 0;
  const std::string dir = temp_dir("tiller_cli_" + std::to_string(counter++));
  std::vector<std::string> argv = {tiller_binary()};
  argv.insert(argv.end(), args.begin(), args.end());
  CliResult r;
  std::string ignored;
  r.code = run_command(
      "( OMP_WAIT_POLICY=passive " + shell_command(argv) + " >" + dir + "/out 2>" + dir + "/err )",
      &ignored);
  r.out = read_bytes(dir + "/out");
  r.err = read_bytes(dir + "/err");
  return r;
}

std::string stories260k_hf_dir(const std::string& dir) {
  const std::string bin = shared_file("models/stories260K/stories260K.bin");
  const std::string tok = shared_file("models/stories260K/tok512.model");
  if (bin.empty() || tok.empty()) return "";
  Transformer model = import_llama2c(bin);
  SaveOptions options;
  options.tokenizer_path = tok;
  save_hf_model(*model, dir, options);
  return dir;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace tiller::test

namespace tiller::test {

int spawn_logged(const std::vector<std::string>& args, const std::string& log) {
  return spawn_logged(args, log, {});
}

int spawn_logged(const std::vector<std::string>& args, const std::string& log,
                 const std::vector<std::string>& environment) {
  return spawn_with_output(args, log, environment);
}

int wait_exit(int pid, double seconds) {
  check(pid > 0, "wait_exit: no such process " + std::to_string(pid));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (true) {
    int status = 0;
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (done < 0 || std::chrono::steady_clock::now() > deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof address;
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0)
    port = ntohs(address.sin_port);
  close(fd);
  return port;
}

std::string quickstart_recipe_in(const std::string& dir) {
  std::string text = read_file(std::string(TILLER_SOURCE_DIR) + "/recipes/quickstart.json");
  for (size_t at = text.find("runs/quickstart"); at != std::string::npos;
       at = text.find("runs/quickstart", at + dir.size()))
    text.replace(at, std::string("runs/quickstart").size(), dir);
  const std::string path = dir + "-recipe.json";
  write_file_atomic(path, text);
  return path;
}

Job launch_job(int world, const std::vector<std::string>& args, const std::string& log_prefix,
               const std::vector<std::string>& extra_env) {
  Job job;
  const int port = free_port();
  for (int rank = 0; rank < world; ++rank) {
    std::vector<std::string> env = extra_env;
    env.push_back("OMP_WAIT_POLICY=passive");
    if (world > 1)
      env.insert(env.end(), {"RANK=" + std::to_string(rank), "LOCAL_RANK=" + std::to_string(rank),
                             "WORLD_SIZE=" + std::to_string(world), "MASTER_ADDR=127.0.0.1",
                             "MASTER_PORT=" + std::to_string(port)});
    job.logs.push_back(log_prefix + ".rank" + std::to_string(rank) + ".log");
    job.pids.push_back(spawn_logged(args, job.logs.back(), env));
  }
  return job;
}

std::vector<int> wait_job(const Job& job, double seconds) {
  std::vector<int> codes;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  for (int pid : job.pids) {
    const double left =
        std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count();
    const int code = wait_exit(pid, std::max(0.0, left));
    if (code == -1) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    codes.push_back(code);
  }
  return codes;
}

std::string job_logs(const Job& job) {
  std::string out;
  for (const auto& log : job.logs) out += "---- " + log + "\n" + read_bytes(log);
  return out;
}

std::vector<std::string> quickstart_pretrain_args(const std::string& dir,
                                                  const std::vector<std::string>& extra) {
  std::vector<std::string> args = {tiller_binary(),
                                   "pretrain",
                                   quickstart_recipe_in(dir),
                                   "synthetic_data.corpus_stories=400",
                                   "run.threads=1",
                                   "pretrain.train.micro_batch_size=8",
                                   "pretrain.train.log_every=1",
                                   "pretrain.train.eval_every=0"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

std::map<int64_t, nlohmann::json> metrics_by_step(const std::string& path) {
  std::map<int64_t, nlohmann::json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    try {
      auto record = nlohmann::json::parse(line);
      const int64_t step = record.at("step").get<int64_t>();
      // A resumed stage must not log a step twice.
      if (out.count(step)) ADD_FAILURE() << path << ": step " << step << " logged twice";
      out[step] = record;
    } catch (const std::exception&) {
      // a line cut by a kill
    }
  }
  return out;
}

int64_t last_logged_step(const std::string& metrics_path) {
  std::ifstream in(metrics_path);
  std::string line;
  int64_t step = -1;
  while (std::getline(in, line)) {
    try {
      step = std::max<int64_t>(step, nlohmann::json::parse(line).at("step").get<int64_t>());
    } catch (...) {
      // a line cut by a kill
    }
  }
  return step;
}

std::string shell_command(const std::vector<std::string>& args) {
  std::string out;
  for (const auto& a : args) out += "'" + a + "' ";
  return out;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

ModelConfig llama_config(int64_t vocab, int64_t hidden, int64_t intermediate, int64_t layers,
                         int64_t heads, int64_t kv_heads, int64_t context) {
  ModelConfig c;
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.intermediate_size = intermediate;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.max_position_embeddings = context;
  return c;
}

Transformer sharp_random_model(const ModelConfig& config, uint64_t seed) {
  Transformer model(config);
  model->init_weights(seed);
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters())
    if (p.dim() == 2) p.mul_(10);
  model->eval();
  return model;
}

}  // namespace tiller::test

namespace tiller::test {

void expect_close_to_scale(const torch::Tensor& got, const torch::Tensor& want, double tolerance,
                           const std::string& what) {
  ASSERT_FALSE(torch::isnan(got).any().item<bool>()) << what << ": NaN";
  const double scale = std::max(1.0, want.abs().max().item<double>());
  const double diff = (got - want).abs().max().item<double>();
  EXPECT_LE(diff, tolerance * scale) << what << ": max difference " << diff;
}

void expect_kernel_close(const torch::Tensor& got, const torch::Tensor& want,
                         const std::string& what) {
  expect_close_to_scale(got, want, 1e-5, what);
}

void expect_same_weights(TransformerImpl& a, TransformerImpl& b) {
  auto wa = a.named_weights(), wb = b.named_weights();
  ASSERT_EQ(wa.size(), wb.size());
  for (size_t i = 0; i < wa.size(); ++i) {
    EXPECT_EQ(wa[i].first, wb[i].first);
    EXPECT_EQ(wa[i].second.scalar_type(), wb[i].second.scalar_type()) << wa[i].first;
    EXPECT_TRUE(torch::equal(wa[i].second, wb[i].second)) << wa[i].first;
  }
}

std::string write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  EXPECT_TRUE(out.good()) << "could not write " << path;
  return path;
}

std::string write_temp_file(const std::string& dir_name, const std::string& name,
                            const std::string& text) {
  return write_file(temp_dir(dir_name) + "/" + name, text);
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

}  // namespace tiller::test
