// The `command` reward: an external verifier program, fed the batch's episodes as JSONL on stdin,
// that prints one score per line, run with a time limit (protocol: docs/rewards.md).
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/recipe/config_reader.h"
#include "common/util/subprocess.h"
#include "rlhf/reward_functions.h"

namespace tiller {

// The keys of a `command` entry of "rewards" (besides type, name and weight).
struct CommandRewardOptions {
  std::vector<std::string> command;     // argv; argv[0] looked up on PATH when it has no '/'
  double timeout_seconds = 30;          // per batch
  std::optional<double> timeout_score;  // on_timeout: a score for every episode; none: "error"
  std::string working_dir;              // "" = the current directory

  // {command, timeout_seconds, on_timeout, working_dir}, every value stated.
  nlohmann::json values() const;
};

// Reads those keys from a "rewards" entry; mistakes go to the reader's errors with their paths.
// The reader's other keys (type, name, weight) are the caller's to read.
CommandRewardOptions read_command_reward_options(ConfigReader& reader);

class CommandReward : public RewardFunction {
 public:
  // Throws tiller::Error when the options are malformed or working_dir is not a directory.
  CommandReward(std::string name, CommandRewardOptions options);

  // Runs the verifier once for the whole batch. Throws tiller::Error (one line naming the verifier)
  // when it cannot start, fails, times out with on_timeout "error", or replies malformed.
  std::vector<double> score(const std::vector<ScoredEpisode>& episodes) override;

  // How many batches timed out and got the on_timeout score.
  int64_t timeouts() const { return timeouts_; }
  const CommandRewardOptions& options() const { return options_; }

 private:
  std::string describe() const;  // "verifier 'python3 verify.py' (reward check)"
  // The on_timeout score for each episode (counted, with a warning), or the timeout's error.
  std::vector<double> timeout_scores(size_t episodes);
  // Throws the error of a verifier that did not start, was stopped or failed.
  void check_finished(const SubprocessResult& run, const SubprocessOptions& run_options,
                      size_t episodes) const;
  // The reply's scores, one per line; throws on a wrong count or a line that is no number.
  std::vector<double> scores_in(const std::string& reply, size_t episodes) const;

  std::string name_;
  CommandRewardOptions options_;
  int64_t timeouts_ = 0;
};

}  // namespace tiller
