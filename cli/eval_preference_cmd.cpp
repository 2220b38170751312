// `tiller eval preference`: implicit-reward accuracy of a DPO policy against its reference.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "common/tokenizer/chat_template.h"  // chat_template_names
#include "common/util/runtime.h"
#include "dpo/preference_eval.h"

namespace tiller {

namespace {

void run_eval_preference(const PreferenceEvalOptions& o, bool json) {
  const PreferenceEvalResult r = evaluate_preference_policy(o);
  if (json) {
    std::printf("%s\n", nlohmann::json{{"pairs", r.pairs},
                                       {"accuracy", r.accuracy},
                                       {"chosen_reward", r.chosen_reward},
                                       {"rejected_reward", r.rejected_reward},
                                       {"margin", r.margin},
                                       {"records", r.data.records},
                                       {"dropped_identical", r.data.identical},
                                       {"dropped_prompt_too_long", r.data.prompt_too_long},
                                       {"truncated", r.data.truncated}}
                            .dump()
                            .c_str());
    return;
  }
  std::printf("pairs %lld  accuracy %.4f  margin %.4f  chosen %.4f  rejected %.4f\n",
              (long long)r.pairs, r.accuracy, r.margin, r.chosen_reward, r.rejected_reward);
}

}  // namespace

void add_eval_preference_command(CLI::App& eval_cmd, CommandAction& action) {
  auto options = std::make_shared<PreferenceEvalOptions>();
  auto json = std::make_shared<bool>(false);
  auto* cmd = eval_cmd.add_subcommand(
      "preference", "implicit-reward accuracy of a DPO policy against its reference");
  cmd->add_option("--model", options->model, "the policy's directory")->required();
  cmd->add_option("--reference", options->reference, "the reference's directory")->required();
  cmd->add_option("--data", options->data, "preference JSONL (.gz read too)")->required();
  cmd->add_option("--format", options->format)
      ->check(CLI::IsMember({"preference", "hh"}))
      ->capture_default_str();
  cmd->add_option("--template", options->template_name, "the chat template trained with")
      ->check(CLI::IsMember(chat_template_names()))
      ->capture_default_str();
  cmd->add_option("--max-seq-len", options->max_seq_len, "0: the model's context")
      ->capture_default_str();
  cmd->add_option("--beta", options->beta, "scales rewards and margins")->capture_default_str();
  cmd->add_flag("--json", *json, "print one JSON object");
  cmd->callback([options, json, &action] {
    action = [options, json] {
      warn_if_slow_blas();
      run_eval_preference(*options, *json);
      return 0;
    };
  });
}

}  // namespace tiller
