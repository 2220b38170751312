// Error: the one exception type for user-facing failures (bad input, missing files).
#pragma once
#include <stdexcept>
#include <string>

namespace tiller {

// A user error: its message is one line saying what and where, printed as is by the CLI.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Throws Error(message) unless condition holds. For input checks; never use assert on input.
inline void check(bool condition, const std::string& message) {
  if (!condition) throw Error(message);
}

}  // namespace tiller
