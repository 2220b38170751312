// Helpers shared by the tests: paths to the shared data and temporary directories.
#pragma once
#include <gtest/gtest.h>

#include <functional>
#include <string>

namespace tiller::test {

// ../shared/data relative to the source tree (or $TILLER_SHARED_DATA).
std::string shared_data();
// shared_data()/relative if it exists, else "" (callers GTEST_SKIP with a message).
std::string shared_file(const std::string& relative);
// A fresh empty directory under the build's temp area, removed at exit.
std::string temp_dir(const std::string& name);
// Runs a shell command; returns its exit status and fills output with stdout + stderr.
int run_command(const std::string& command, std::string* output);
// The tiller binary built alongside the tests.
std::string tiller_binary();
// The message of the tiller::Error that f throws, or "" when it throws none.
std::string error_of(const std::function<void()>& f);

}  // namespace tiller::test

#define TILLER_REQUIRE_SHARED(var, relative)                                                \
  const std::string var = ::tiller::test::shared_file(relative);                            \
  if (var.empty())                                                                          \
  GTEST_SKIP() << "skipped: " << relative << " not found under ../shared/data (the shared " \
               << "third-party data is absent)"
