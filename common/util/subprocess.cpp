#include "common/util/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "common/util/error.h"

extern char** environ;

namespace tiller {
namespace {

using Clock = std::chrono::steady_clock;

// How long a program gets between SIGTERM and SIGKILL once its time is up.
constexpr std::chrono::milliseconds kTerminateGrace{500};
// Longer limits are cut to this (a year), which keeps the deadline's arithmetic in range.
constexpr double kLongestTimeoutSeconds = 365.0 * 24 * 3600;
// The most bytes moved by one read or write.
constexpr size_t kChunkBytes = 64 * 1024;

// A file descriptor closed when it goes out of scope.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { close(); }
  int get() const { return fd_; }
  bool is_open() const { return fd_ >= 0; }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  void reset(int fd) {
    close();
    fd_ = fd;
  }

 private:
  int fd_;
};

struct Pipe {
  Fd read_end, write_end;
};

// Both ends close-on-exec, so that no child (ours, or one another thread starts meanwhile) keeps
// an end open and hides the other side's EOF.
void make_pipe(Pipe& pipe) {
  int fds[2];
  check(::pipe2(fds, O_CLOEXEC) == 0, std::string("cannot make a pipe: ") + std::strerror(errno));
  pipe.read_end.reset(fds[0]);
  pipe.write_end.reset(fds[1]);
}

void set_non_blocking(const Fd& fd) {
  ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK);
}

// SIGPIPE blocked in this thread for the scope: a write to a program that has stopped reading
// fails with EPIPE instead of killing Tiller. A SIGPIPE raised meanwhile is consumed before the
// mask is restored (one that was already pending before is left alone).
class SigpipeBlocked {
 public:
  SigpipeBlocked() {
    sigset_t pipe_only;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe_only, &previous_mask_);
  }
  ~SigpipeBlocked() {
    sigset_t pending;
    sigpending(&pending);
    if (!was_pending_ && sigismember(&pending, SIGPIPE) == 1) {
      sigset_t pipe_only;
      sigemptyset(&pipe_only);
      sigaddset(&pipe_only, SIGPIPE);
      const timespec no_wait{0, 0};
      while (sigtimedwait(&pipe_only, nullptr, &no_wait) == -1 && errno == EINTR) {
      }
    }
    pthread_sigmask(SIG_SETMASK, &previous_mask_, nullptr);
  }

 private:
  sigset_t previous_mask_;
  bool was_pending_ = false;
};

// Starts the program with the pipes' ends as its stdin, stdout and stderr, as the leader of a new
// process group, with no signal blocked and SIGPIPE at its default (whatever this thread has).
// Returns the errno of a failed start (0 when started).
int spawn(const std::vector<std::string>& argv, const std::string& working_dir, const Fd& stdin_end,
          const Fd& stdout_end, const Fd& stderr_end, pid_t& pid) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, stdin_end.get(), 0);
  posix_spawn_file_actions_adddup2(&actions, stdout_end.get(), 1);
  posix_spawn_file_actions_adddup2(&actions, stderr_end.get(), 2);
  if (!working_dir.empty()) posix_spawn_file_actions_addchdir_np(&actions, working_dir.c_str());

  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  posix_spawnattr_setflags(&attributes,
                           POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  posix_spawnattr_setpgroup(&attributes, 0);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attributes, &none);
  sigset_t pipe_only;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  posix_spawnattr_setsigdefault(&attributes, &pipe_only);

  std::vector<char*> args;
  for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  pid = -1;
  const int failed = posix_spawnp(&pid, args[0], &actions, &attributes, args.data(), environ);
  posix_spawnattr_destroy(&attributes);
  posix_spawn_file_actions_destroy(&actions);
  if (failed == 0 && pid <= 0) return EINVAL;  // a pid of -1 must never reach killpg()
  return failed;
}

int milliseconds_until(Clock::time_point deadline) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
  return static_cast<int>(std::clamp<int64_t>(left.count(), 0, 60 * 60 * 1000));
}

// One read from a ready pipe, appended to `text`; the pipe is closed at its end (or on an error).
void read_some(Fd& pipe, std::string& text) {
  char buffer[kChunkBytes];
  const ssize_t count = ::read(pipe.get(), buffer, sizeof buffer);
  if (count > 0) {
    text.append(buffer, static_cast<size_t>(count));
  } else if (count == 0 || (errno != EAGAIN && errno != EINTR)) {
    pipe.close();
  }
}

// Writes what the pipe takes of input[written..]; closes it when everything is written or the
// program has stopped reading (EPIPE: its loss, not ours).
void write_some(Fd& pipe, const std::string& input, size_t& written) {
  const size_t count = std::min(input.size() - written, kChunkBytes);
  const ssize_t done = ::write(pipe.get(), input.data() + written, count);
  if (done > 0) written += static_cast<size_t>(done);
  if (written == input.size() || (done < 0 && errno != EAGAIN && errno != EINTR)) pipe.close();
}

void keep_tail(std::string& text, size_t limit, bool final) {
  if (text.size() > (final ? limit : 2 * limit)) text.erase(0, text.size() - limit);
}

enum class Exchange { kOutputsEnded, kTimeUp, kOutputTooLong };

// Feeds stdin and drains stdout and stderr until both outputs end, the deadline comes or stdout
// outgrows its limit.
Exchange exchange(const std::string& input, Pipe& in, Pipe& out, Pipe& err,
                  Clock::time_point deadline, const SubprocessOptions& options,
                  SubprocessResult& result) {
  size_t written = 0;
  if (input.empty()) in.write_end.close();
  while (out.read_end.is_open() || err.read_end.is_open()) {
    pollfd fds[3];
    nfds_t count = 0;
    const auto watch = [&](const Fd& fd, short events) {
      fds[count] = pollfd{fd.is_open() ? fd.get() : -1, events, 0};
      return count++;
    };
    const nfds_t in_slot = watch(in.write_end, POLLOUT);
    const nfds_t out_slot = watch(out.read_end, POLLIN);
    const nfds_t err_slot = watch(err.read_end, POLLIN);
    const int wait_ms = milliseconds_until(deadline);
    if (wait_ms == 0) return Exchange::kTimeUp;
    const int ready = ::poll(fds, count, wait_ms);
    if (ready < 0 && errno == EINTR) continue;
    check(ready >= 0, std::string("poll on a child process's pipes: ") + std::strerror(errno));
    if (fds[in_slot].revents != 0) write_some(in.write_end, input, written);
    if (fds[out_slot].revents != 0) read_some(out.read_end, result.output);
    if (result.output.size() > options.stdout_limit_bytes) return Exchange::kOutputTooLong;
    if (fds[err_slot].revents != 0) {
      read_some(err.read_end, result.error_tail);
      keep_tail(result.error_tail, options.stderr_tail_bytes, false);
    }
  }
  return Exchange::kOutputsEnded;
}

// Whether the program has exited by the deadline, without reaping it: while it is an unreaped
// zombie its pid (and so its process group's id) cannot be reused, and killpg() stays safe.
bool exited_by(pid_t pid, Clock::time_point deadline) {
  while (true) {
    siginfo_t info{};
    const int waited = ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT);
    if (waited == 0 && info.si_pid == pid) return true;
    if (waited < 0 && errno == ECHILD) return true;  // reaped already (SIGCHLD ignored)
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

void reap(pid_t pid, SubprocessResult& result) {
  int status = 0;
  pid_t waited;
  do {
    waited = ::waitpid(pid, &status, 0);
  } while (waited < 0 && errno == EINTR);
  if (waited != pid) return;
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
}

}  // namespace

SubprocessResult run_subprocess(const std::vector<std::string>& argv, const std::string& input,
                                const SubprocessOptions& options) {
  check(!argv.empty(), "run_subprocess: no program");
  SubprocessResult result;
  Pipe in, out, err;
  make_pipe(in);
  make_pipe(out);
  make_pipe(err);
  pid_t pid = -1;
  const int failed =
      spawn(argv, options.working_dir, in.read_end, out.write_end, err.write_end, pid);
  in.read_end.close();
  out.write_end.close();
  err.write_end.close();
  if (failed != 0) {
    result.spawn_error = std::strerror(failed);
    return result;
  }
  set_non_blocking(in.write_end);
  set_non_blocking(out.read_end);
  set_non_blocking(err.read_end);

  const double seconds = std::clamp(options.timeout_seconds, 0.0, kLongestTimeoutSeconds);
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(seconds));
  Exchange ending = Exchange::kOutputsEnded;
  try {
    SigpipeBlocked sigpipe_blocked;
    ending = exchange(input, in, out, err, deadline, options, result);
    if (ending == Exchange::kOutputsEnded && !exited_by(pid, deadline)) ending = Exchange::kTimeUp;
  } catch (const Error&) {
    ::killpg(pid, SIGKILL);
    reap(pid, result);
    throw;
  }
  if (ending != Exchange::kOutputsEnded) {
    result.timed_out = ending == Exchange::kTimeUp;
    result.output_too_long = ending == Exchange::kOutputTooLong;
    ::killpg(pid, SIGTERM);
    exited_by(pid, Clock::now() + kTerminateGrace);
  }
  keep_tail(result.error_tail, options.stderr_tail_bytes, true);
  // Whatever the program left running in its group goes with it (or, when it was stopped, whatever
  // ignored SIGTERM).
  ::killpg(pid, SIGKILL);
  reap(pid, result);
  return result;
}

}  // namespace tiller
