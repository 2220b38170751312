#include "common/util/process.h"

#include <fcntl.h>
#include <spawn.h>

#include <cerrno>
#include <cstring>

#include "common/util/error.h"

extern char** environ;

namespace tiller {

int spawn_with_output(const std::vector<std::string>& args, const std::string& output_file,
                      const std::vector<std::string>& environment) {
  check(!args.empty(), "spawn_with_output: no program");
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    const std::string name = entry.substr(0, entry.find('='));
    bool replaced = false;
    for (const auto& add : environment) replaced = replaced || add.substr(0, add.find('=')) == name;
    if (!replaced) env_strings.push_back(entry);
  }
  env_strings.insert(env_strings.end(), environment.begin(), environment.end());
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, output_file.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                   0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = -1;
  const int spawned = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  // A pid of -1 must never reach kill() or waitpid(): it means every process of the user.
  check(spawned == 0 && pid > 0,
        "cannot start " + args.front() + ": " + std::strerror(spawned == 0 ? EINVAL : spawned));
  return pid;
}

}  // namespace tiller
