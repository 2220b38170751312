// run_subprocess: input in, output out, at once and whole; exit status, signal and spawn errors
// reported; the time limit kills the program's whole process group; nothing is left unreaped.
#include "common/util/subprocess.h"

#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "tests/test_util.h"

using namespace tiller;

namespace {

SubprocessResult run_shell(const std::string& script, const std::string& input = "",
                           double timeout_seconds = 60) {
  SubprocessOptions options;
  options.timeout_seconds = timeout_seconds;
  return run_subprocess({"/bin/sh", "-c", script}, input, options);
}

// The first line of a file ("" when it cannot be read).
std::string first_line(const std::string& path) {
  std::ifstream file(path);
  std::string line;
  std::getline(file, line);
  return line;
}

// Whether a process is gone or a zombie (a zombie that is not ours: init reaps it, not us).
bool no_longer_runs(const std::string& pid) {
  const std::string stat = first_line("/proc/" + pid + "/stat");
  if (stat.empty()) return true;
  const size_t state = stat.rfind(')') + 2;  // "pid (name) S ..."
  return state < stat.size() && stat[state] == 'Z';
}

// A signal is delivered when its target is next scheduled: a process sent SIGKILL may still show
// as running for a moment. Waits up to 10 s for it to end.
bool ends_soon(const std::string& pid) {
  for (int tries = 0; tries < 1000 && !no_longer_runs(pid); ++tries)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return no_longer_runs(pid);
}

}  // namespace

TEST(Subprocess, PassesItsInputThroughWholeEvenWhenOutputAndInputFillThePipesAtOnce) {
  // 3 MiB through `cat`, which writes before it has read everything: both pipes fill up together.
  std::string input;
  for (int i = 0; input.size() < 3 * 1024 * 1024; ++i) input += std::to_string(i * 7919) + '\0';
  const SubprocessResult result = run_shell("cat; echo done >&2", input);
  ASSERT_TRUE(result.succeeded()) << result.spawn_error << result.error_tail;
  EXPECT_EQ(result.output, input);
  EXPECT_EQ(result.error_tail, "done\n");
}

TEST(Subprocess, KeepsOnlyTheEndOfALongStderr) {
  SubprocessOptions options;
  options.stderr_tail_bytes = 16;
  const SubprocessResult result = run_subprocess(
      {"/bin/sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x >&2; echo the-last-line >&2"}, "",
      options);
  ASSERT_TRUE(result.succeeded()) << result.spawn_error;
  EXPECT_EQ(result.error_tail, "xxthe-last-line\n");
}

TEST(Subprocess, ReportsExitStatusAndSignal) {
  const SubprocessResult failed = run_shell("echo partial; exit 3");
  EXPECT_EQ(failed.exit_code, 3);
  EXPECT_EQ(failed.signal, 0);
  EXPECT_EQ(failed.output, "partial\n");
  EXPECT_FALSE(failed.succeeded());

  const SubprocessResult killed = run_shell("kill -SEGV $$");
  EXPECT_EQ(killed.exit_code, -1);
  EXPECT_EQ(killed.signal, SIGSEGV);
  EXPECT_FALSE(killed.timed_out);
}

TEST(Subprocess, AProgramThatIsNotThereIsASpawnError) {
  const SubprocessResult by_path = run_subprocess({"/nonexistent/verifier"}, "x", {});
  EXPECT_EQ(by_path.spawn_error, "No such file or directory");
  const SubprocessResult on_path = run_subprocess({"tiller-no-such-verifier"}, "x", {});
  EXPECT_EQ(on_path.spawn_error, "No such file or directory");
  EXPECT_FALSE(on_path.succeeded());
}

TEST(Subprocess, AProgramThatExitsWithoutReadingItsInputIsNoError) {
  // Far more than a pipe holds: the writes after its exit fail with EPIPE (a SIGPIPE would have
  // ended this test program).
  const std::string input(4 * 1024 * 1024, 'x');
  const SubprocessResult result = run_shell("echo early", input);
  ASSERT_TRUE(result.succeeded()) << result.exit_code << " " << result.signal;
  EXPECT_EQ(result.output, "early\n");
}

TEST(Subprocess, RunsInTheGivenWorkingDirectory) {
  const std::string dir = test::temp_dir("subprocess_working_dir");
  SubprocessOptions options;
  options.working_dir = dir;
  const SubprocessResult result = run_subprocess({"/bin/sh", "-c", "pwd -P"}, "", options);
  ASSERT_TRUE(result.succeeded());
  EXPECT_EQ(result.output, std::filesystem::canonical(dir).string() + "\n");
}

TEST(Subprocess, TheTimeLimitKillsTheWholeProcessGroupAndReapsTheProgram) {
  const std::string dir = test::temp_dir("subprocess_timeout");
  // The shell starts a background sleep (its own child, same process group), notes both pids and
  // waits: the limit must end both, and not wait for the 30 s.
  const std::string script =
      "sleep 30 & echo $! > " + dir + "/child; echo $$ > " + dir + "/leader; echo started; wait";
  const SubprocessResult result = run_shell(script, "", 0.5);
  EXPECT_TRUE(result.timed_out);
  EXPECT_FALSE(result.succeeded());
  EXPECT_EQ(result.output, "started\n");
  EXPECT_EQ(result.signal, SIGTERM);
  const std::string leader = first_line(dir + "/leader");
  const std::string child = first_line(dir + "/child");
  ASSERT_FALSE(leader.empty() || child.empty());
  EXPECT_FALSE(std::filesystem::exists("/proc/" + leader)) << "the program was reaped";
  EXPECT_TRUE(ends_soon(child)) << "its background child was killed with it";
}

TEST(Subprocess, AProgramThatIgnoresSigtermIsKilledAfterTheGrace) {
  const SubprocessResult result =
      run_shell("trap '' TERM; echo waiting; sleep 30; echo never", "", 0.5);
  EXPECT_TRUE(result.timed_out);
  EXPECT_EQ(result.signal, SIGKILL);
}

TEST(Subprocess, WhatTheProgramLeavesRunningIsKilledWhenItExits) {
  const std::string dir = test::temp_dir("subprocess_leftover");
  // The background sleep does not hold stdout (redirected), so the program's exit ends the run.
  const SubprocessResult result =
      run_shell("sleep 30 > /dev/null 2>&1 & echo $! > " + dir + "/child; echo 1");
  ASSERT_TRUE(result.succeeded());
  const std::string child = first_line(dir + "/child");
  ASSERT_FALSE(child.empty());
  EXPECT_TRUE(ends_soon(child));
}

TEST(Subprocess, AProgramThatPrintsTooMuchIsStoppedAtTheStdoutLimit) {
  SubprocessOptions options;
  options.stdout_limit_bytes = 100000;
  const SubprocessResult result = run_subprocess({"yes"}, "", options);
  EXPECT_TRUE(result.output_too_long);
  EXPECT_FALSE(result.timed_out);
  EXPECT_FALSE(result.succeeded());
  EXPECT_GT(result.output.size(), 100000u);
  EXPECT_LE(result.output.size(), 100000u + 64 * 1024) << "reading stops within one read";
}
