// Verifiable rewards for online RL (the grpo stage): programs that score a response, combined with
// weights. A recipe lists them under "rewards":
//
//   rewards:
//     - {type: math_answer, weight: 1.0, tolerance: 1e-6}   # 1 when the final answer is right
//     - {type: regex, pattern: '#### -?\d+', weight: 0.1}  # format rules: 1 when it matches
//     - {type: contains, text: '####', weight: 0.1}
//     - {type: length, max_tokens: 64, penalty: 0.01}      # -penalty per token over max_tokens
//     - {type: model, model: "@reward", weight: 1.0}       # a Tiller reward model
//     - {type: command, command: ["python3", "verify.py"], timeout_seconds: 30}
//
// Every function's scores are kept apart (metrics per function) and summed with their weights
// into the score the policy learns from.
//
// Keys of every entry: type, weight (default 1, finite), name (default the type; _2, _3 when
// taken). Each type's own keys and defaults (unknown keys are errors):
//   math_answer  tolerance 1e-6 (absolute below 1, relative above), missing 0 (the score when no
//                answer can be extracted); 1 right, 0 wrong (rlhf/math_answer.h)
//   regex        pattern (ECMAScript, required), ignore_case false; 1 when found anywhere
//   contains     text (required), ignore_case false; 1 when found
//   length       max_tokens -1 (none), min_tokens 0, penalty (required): -penalty per response
//                token (response_ids, EOS included) above max_tokens or below min_tokens
//   model        model (required, e.g. "@reward"), max_seq_len 0 (the stage's default)
//   command      command (argv, required), timeout_seconds 60, on_timeout "error" or a number (the
//                score of every episode of a batch that timed out), working_dir ""
#pragma once
#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/recipe/config_reader.h"

namespace tiller {

// One episode as the reward functions see it.
struct ScoredEpisode {
  std::string prompt;    // the prompt's text as the policy saw it (template applied)
  std::string response;  // the generated text, EOS removed
  std::string answer;    // the reference answer ("" when the data has none)
  std::vector<int64_t> prompt_ids, response_ids;  // tokens (response: EOS included when produced)
  bool ended_with_eos = false;
};

// One entry of "rewards", as parsed (every value stated, defaults included).
struct RewardFunctionSpec {
  std::string type;  // math_answer | regex | contains | length | model | command
  std::string name;  // metrics key; default: the type, suffixed _2, _3 when repeated
  double weight = 1.0;
  nlohmann::json options;  // the type's own keys with the values that run (for the resolved recipe)
};

class RewardFunction {
 public:
  virtual ~RewardFunction() = default;
  // One score per episode, in order. Throws tiller::Error (one line naming the function) when it
  // cannot score (a verifier that crashed, a malformed reply).
  virtual std::vector<double> score(const std::vector<ScoredEpisode>& episodes) = 0;
};

// Builds the functions the stage itself provides (type "model" needs the stage's loaded models).
using RewardFunctionFactory =
    std::function<std::unique_ptr<RewardFunction>(const RewardFunctionSpec& spec)>;

// Parses the "rewards" list; mistakes go to `errors` with their paths ("stages[3].rewards[1].
// pattern: ..."). An empty or missing list is an error (online RL needs a reward).
std::vector<RewardFunctionSpec> parse_reward_functions(const nlohmann::json& json,
                                                       const std::string& path,
                                                       ConfigErrors& errors);

// The list as it runs, for the resolved recipe: parses back to the same specs.
nlohmann::json reward_function_values(const std::vector<RewardFunctionSpec>& specs);

// Every function's scores per episode and their weighted sum.
struct RewardScores {
  std::vector<std::string> names;            // one per function
  std::vector<std::vector<double>> by_name;  // [function][episode]
  std::vector<double> total;                 // [episode]: sum of weight * score
};

// The functions of a "rewards" list, built once per stage.
class RewardSet {
 public:
  // `model_factory` builds type "model" (nullptr: that type is refused with a clear error).
  RewardSet(const std::vector<RewardFunctionSpec>& specs,
            const RewardFunctionFactory& model_factory);
  RewardScores score(const std::vector<ScoredEpisode>& episodes);
  const std::vector<RewardFunctionSpec>& specs() const { return specs_; }

 private:
  std::vector<RewardFunctionSpec> specs_;
  std::vector<std::unique_ptr<RewardFunction>> functions_;
};

// The built-in functions, each from its parsed spec (type regex, contains, length, math_answer;
// command in rlhf/command_reward.h).
std::unique_ptr<RewardFunction> make_rule_reward(const RewardFunctionSpec& spec);
std::unique_ptr<RewardFunction> make_command_reward(const RewardFunctionSpec& spec);

}  // namespace tiller
