#include "tests/test_util.h"

#include "common/util/error.h"
#include "tiller_build_paths.h"

#include <fcntl.h>
#include <spawn.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

extern char** environ;

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

std::string tiller_binary() {
  return TILLER_BINARY;
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
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  return pid;
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

}  // namespace tiller::test
