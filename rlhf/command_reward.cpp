#include "rlhf/command_reward.h"

#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <sstream>

#include "common/util/error.h"

namespace tiller {
namespace {

// How much of a verifier's command line and of a bad reply an error quotes.
constexpr size_t kQuotedChars = 80;

std::string shortened(const std::string& text) {
  return text.size() <= kQuotedChars ? text : text.substr(0, kQuotedChars) + "...";
}

// As JSON writes it: quoted, escaped, one line whatever the bytes.
std::string quoted(const std::string& text) {
  return nlohmann::json(shortened(text))
      .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string seconds_text(double seconds) {
  std::ostringstream text;
  text << seconds;
  return text.str();
}

std::string trimmed(const std::string& text) {
  const char* blanks = " \t\r\n";
  const size_t first = text.find_first_not_of(blanks);
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(blanks) - first + 1);
}

// A decimal number as JSON writes one, a leading '+' also allowed; inf and nan are not scores.
std::optional<double> finite_number(std::string text) {
  if (!text.empty() && text.front() == '+') text.erase(0, 1);
  double value = 0;
  const char* end = text.data() + text.size();
  const auto [stop, error] = std::from_chars(text.data(), end, value);
  if (text.empty() || error != std::errc() || stop != end || !std::isfinite(value)) return {};
  return value;
}

// The reply's lines, trailing blank ones dropped.
std::vector<std::string> reply_lines(const std::string& output) {
  std::vector<std::string> lines;
  std::istringstream stream(output);
  for (std::string line; std::getline(stream, line);) lines.push_back(line);
  while (!lines.empty() && trimmed(lines.back()).empty()) lines.pop_back();
  return lines;
}

// The last non-blank line of a verifier's stderr, for an error message.
std::string last_stderr_line(const std::string& error_tail) {
  const std::vector<std::string> lines = reply_lines(error_tail);
  if (lines.empty()) return "nothing on stderr";
  return "its stderr ends: " + quoted(trimmed(lines.back()));
}

// One JSON object per line; bytes that are not UTF-8 (a response cut mid-character) become U+FFFD.
std::string episodes_jsonl(const std::vector<ScoredEpisode>& episodes) {
  std::string input;
  for (size_t i = 0; i < episodes.size(); ++i) {
    const nlohmann::json line = {{"prompt", episodes[i].prompt},
                                 {"response", episodes[i].response},
                                 {"answer", episodes[i].answer},
                                 {"index", i}};
    input += line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  return input;
}

std::vector<std::string> read_argv(ConfigReader& reader) {
  const std::string key = "command";
  if (!reader.has(key)) {
    reader.require(false, key, "required: the verifier's argv, e.g. [\"python3\", \"verify.py\"]");
    return {};
  }
  const nlohmann::json& value = reader.raw(key);
  std::vector<std::string> argv;
  bool all_strings = value.is_array() && !value.empty();
  for (const auto& arg : value.is_array() ? value : nlohmann::json::array()) {
    all_strings = all_strings && arg.is_string();
    if (arg.is_string()) argv.push_back(arg.get<std::string>());
  }
  reader.require(all_strings && !argv.front().empty(), key,
                 "expected a non-empty list of strings (argv, run without a shell; for a shell "
                 "line: [\"sh\", \"-c\", \"...\"]), got " +
                     value.dump());
  return all_strings ? argv : std::vector<std::string>{};
}

std::optional<double> read_timeout_score(ConfigReader& reader) {
  const std::string key = "on_timeout";
  if (!reader.has(key)) return {};
  const nlohmann::json& value = reader.raw(key);
  if (value.is_number() && std::isfinite(value.get<double>())) return value.get<double>();
  reader.require(value == "error", key,
                 "expected \"error\" or a finite number (the score of every episode of a batch "
                 "that timed out), got " +
                     value.dump());
  return {};
}

}  // namespace

nlohmann::json CommandRewardOptions::values() const {
  return {{"command", command},
          {"timeout_seconds", timeout_seconds},
          {"on_timeout", timeout_score ? nlohmann::json(*timeout_score) : nlohmann::json("error")},
          {"working_dir", working_dir}};
}

CommandRewardOptions read_command_reward_options(ConfigReader& reader) {
  CommandRewardOptions options;
  options.command = read_argv(reader);
  options.timeout_seconds = reader.number("timeout_seconds", options.timeout_seconds);
  reader.require(options.timeout_seconds > 0 && std::isfinite(options.timeout_seconds),
                 "timeout_seconds", "must be a finite number > 0");
  options.timeout_score = read_timeout_score(reader);
  options.working_dir = reader.string("working_dir", options.working_dir);
  return options;
}

CommandReward::CommandReward(std::string name, CommandRewardOptions options)
    : name_(std::move(name)), options_(std::move(options)) {
  check(!options_.command.empty() && !options_.command.front().empty(),
        "reward " + name_ + ": command is empty");
  check(options_.timeout_seconds > 0 && std::isfinite(options_.timeout_seconds),
        "reward " + name_ + ": timeout_seconds must be a finite number > 0");
  check(options_.working_dir.empty() || std::filesystem::is_directory(options_.working_dir),
        describe() + ": working_dir '" + options_.working_dir + "' is not a directory");
}

std::string CommandReward::describe() const {
  std::string line;
  for (const auto& arg : options_.command) line += (line.empty() ? "" : " ") + arg;
  return "verifier '" + shortened(line) + "' (reward " + name_ + ")";
}

std::vector<double> CommandReward::score(const std::vector<ScoredEpisode>& episodes) {
  if (episodes.empty()) return {};
  SubprocessOptions run_options;
  run_options.timeout_seconds = options_.timeout_seconds;
  run_options.working_dir = options_.working_dir;
  const SubprocessResult run =
      run_subprocess(options_.command, episodes_jsonl(episodes), run_options);
  if (run.timed_out) return timeout_scores(episodes.size());
  check_finished(run, run_options, episodes.size());
  return scores_in(run.output, episodes.size());
}

std::vector<double> CommandReward::timeout_scores(size_t episodes) {
  const std::string late = describe() + " did not answer within " +
                           seconds_text(options_.timeout_seconds) + " s; killed";
  check(options_.timeout_score.has_value(), late);
  ++timeouts_;
  std::cerr << "warning: " << late << "; its " << episodes << " episodes score "
            << *options_.timeout_score << " (timeouts so far: " << timeouts_ << ")\n";
  return std::vector<double>(episodes, *options_.timeout_score);
}

void CommandReward::check_finished(const SubprocessResult& run,
                                   const SubprocessOptions& run_options, size_t episodes) const {
  if (!run.spawn_error.empty()) {
    throw Error(
        describe() + " cannot start: " + run.spawn_error +
        " (command[0] is looked up on PATH unless it has a '/'" +
        (options_.working_dir.empty() ? "" : "; relative to working_dir " + options_.working_dir) +
        ")");
  }
  if (run.output_too_long) {
    throw Error(describe() + " printed more than " +
                std::to_string(run_options.stdout_limit_bytes >> 20) + " MiB for " +
                std::to_string(episodes) +
                " episodes; killed (one score per episode and line expected)");
  }
  if (run.signal != 0) {
    throw Error(describe() + " was killed by signal " + std::to_string(run.signal) + " (" +
                strsignal(run.signal) + "); " + last_stderr_line(run.error_tail));
  }
  if (run.exit_code != 0) {
    throw Error(describe() + " exited with status " + std::to_string(run.exit_code) + "; " +
                last_stderr_line(run.error_tail));
  }
}

std::vector<double> CommandReward::scores_in(const std::string& reply, size_t episodes) const {
  const std::vector<std::string> lines = reply_lines(reply);
  if (lines.size() != episodes) {
    throw Error(describe() + " printed " + std::to_string(lines.size()) + " score lines for " +
                std::to_string(episodes) + " episodes (one per episode, in order)");
  }
  std::vector<double> scores;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::optional<double> score = finite_number(trimmed(lines[i]));
    if (!score) {
      throw Error(describe() + ": line " + std::to_string(i + 1) +
                  " of its reply is not a finite number: " + quoted(lines[i]));
    }
    scores.push_back(*score);
  }
  return scores;
}

std::unique_ptr<RewardFunction> make_command_reward(const RewardFunctionSpec& spec) {
  ConfigErrors errors;
  CommandRewardOptions options;
  {
    ConfigReader reader(spec.options, "rewards[" + spec.name + "]", errors);
    options = read_command_reward_options(reader);
  }
  errors.throw_if_any("reward " + spec.name);
  return std::make_unique<CommandReward>(spec.name, std::move(options));
}

}  // namespace tiller
