// `tiller eval reward`: accuracy and margins of a reward model on preference pairs.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "common/train/pairwise_reward.h"
#include "common/util/runtime.h"

namespace tiller {

namespace {

struct EvalRewardArgs {
  std::string model, data, format = "preference", template_name;
  int64_t max_seq_len = 0;
  bool json = false;
};

void run_eval_reward(const EvalRewardArgs& a) {
  auto r = evaluate_reward_model(a.model, a.data, a.format, a.template_name, a.max_seq_len);
  if (a.json) {
    nlohmann::json j = {{"pairs", r.pairs},
                        {"accuracy", r.accuracy},
                        {"loss", r.loss},
                        {"margin", r.margin},
                        {"chosen_reward", r.chosen_reward},
                        {"rejected_reward", r.rejected_reward},
                        {"records", r.data.records},
                        {"dropped_identical", r.data.identical},
                        {"dropped_prompt_too_long", r.data.prompt_too_long},
                        {"truncated", r.data.truncated}};
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("pairs %lld  accuracy %.4f  loss %.4f  margin %.4f  chosen %.4f  rejected %.4f\n",
              (long long)r.pairs, r.accuracy, r.loss, r.margin, r.chosen_reward, r.rejected_reward);
  std::printf(
      "(%lld records; dropped %lld identical, %lld with a prompt over max_seq_len; %lld sequences "
      "truncated)\n",
      (long long)r.data.records, (long long)r.data.identical, (long long)r.data.prompt_too_long,
      (long long)r.data.truncated);
}

}  // namespace

void add_eval_reward_command(CLI::App& eval_cmd, CommandAction& action) {
  auto eval_reward = std::make_shared<EvalRewardArgs>();
  auto* eval_reward_cmd = eval_cmd.add_subcommand(
      "reward", "accuracy and margins of a reward model on preference pairs");
  eval_reward_cmd->add_option("--model", eval_reward->model, "reward-model directory")->required();
  eval_reward_cmd
      ->add_option(
          "--data", eval_reward->data,
          "preference or ranking JSONL (.gz read too); rankings count comparisons as pairs")
      ->required();
  eval_reward_cmd->add_option("--format", eval_reward->format)
      ->check(CLI::IsMember({"preference", "hh", "ranking", "oasst"}))
      ->capture_default_str();
  eval_reward_cmd->add_option("--template", eval_reward->template_name,
                              "chat template (default: the one trained with)");
  eval_reward_cmd
      ->add_option("--max-seq-len", eval_reward->max_seq_len, "0: the length trained with")
      ->capture_default_str();
  eval_reward_cmd->add_flag("--json", eval_reward->json, "print one JSON object");
  eval_reward_cmd->callback([eval_reward, &action] {
    action = [eval_reward] {
      warn_if_slow_blas();
      run_eval_reward(*eval_reward);
      return 0;
    };
  });
}

}  // namespace tiller
