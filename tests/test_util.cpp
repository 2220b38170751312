#include "tests/test_util.h"

#include "common/util/error.h"
#include "tiller_build_paths.h"

#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

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
