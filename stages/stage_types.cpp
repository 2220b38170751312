#include "stages/stage_types.h"

#include "common/recipe/pipeline.h"
#include "reward/reward_stage.h"
#include "rlhf/rlhf_stage.h"
#include "sft/sft_stage.h"

namespace tiller {

namespace {

StageType registered(const char* name, StageType type) {
  type.type = name;
  return type;
}

// The rlhf (PPO) stage's entry. TODO(rlhf port): move beside the stage, as rlhf_stage_type().
StageType rlhf_stage_type() {
  StageType type = typed_stage_type<RlhfStageConfig>(parse_rlhf_stage, run_rlhf_stage);
  type.description = "RLHF with PPO against a reward model";
  type.stated_defaults = [](const std::any& config) {
    return rlhf_stated_defaults(std::any_cast<const RlhfStageConfig&>(config));
  };
  type.batch_layout = [](const std::any& config, int ranks) {
    const int64_t batch = std::any_cast<const RlhfStageConfig&>(config).batch_size;
    return "rollout batch " + std::to_string(batch) + " episodes shared by " +
           std::to_string(ranks) + " ranks";
  };
  type.summary_rows = [](const std::string& stage, const nlohmann::json& summary) {
    auto get = [&](const char* key) { return summary.value(key, nlohmann::json()); };
    std::vector<SummaryRow> rows;
    if (summary.contains("baselines"))
      for (const auto& [name, figures] : summary["baselines"].items())
        rows.push_back(
            {"ground-truth rate, " + name, figures.value("ground_truth", nlohmann::json())});
    rows.push_back({"ground-truth rate, policy before " + stage, get("ground_truth_initial")});
    rows.push_back({"ground-truth rate, after " + stage, get("ground_truth_final")});
    rows.push_back({stage + ": RM score before", get("rm_score_initial")});
    rows.push_back({stage + ": RM score after", get("rm_score_final")});
    rows.push_back({stage + ": final KL to the reference (nats/response)", get("kl_final")});
    return rows;
  };
  type.report_figures = {"ground_truth_initial", "ground_truth_final", "rm_score_initial",
                         "rm_score_final", "kl_final"};
  type.report_charts = {
      {"rm_score", "Reward-model score", {"rm_score"}},
      {"ground_truth", "Ground-truth rate", {"ground_truth"}},
      {"kl", "KL to the reference (k1, k3)", {"kl_k1", "kl_k3"}},
      {"beta", "KL coefficient", {"beta"}},
      {"entropy", "Entropy", {"entropy"}},
      {"response_length", "Response length (tokens)", {"response_length"}},
      {"eos_rate", "Responses ending with EOS", {"eos_rate"}},
      {"clipfrac", "Policy clip fraction", {"clipfrac"}},
      {"approx_kl", "Approximate KL per update", {"approx_kl"}},
      {"policy_loss", "Policy loss", {"policy_loss"}},
      {"value_loss", "Value loss", {"value_loss"}},
      {"explained_variance", "Value explained variance", {"explained_variance"}},
      {"seconds", "Seconds per iteration", {"seconds_generate", "seconds_score", "seconds_train"}}};
  type.step_name = "iteration";
  return type;
}

}  // namespace

const StageRegistry& stage_registry() {
  // A new stage type: its folder, and one line here.
  static const StageRegistry registry = {
      registered("pretrain", sft_stage_type(/*pretrain=*/true)),
      registered("sft", sft_stage_type(/*pretrain=*/false)),
      registered("reward", reward_stage_type()),
      registered("rlhf", rlhf_stage_type()),
  };
  return registry;
}

std::any parse_stage(const StageEntry& entry, ConfigErrors& errors) {
  Recipe one;
  one.stages = {entry};
  const auto parsed = parse_stages(stage_registry(), one, errors);
  if (parsed.empty())
    errors.add(entry.path + ".type",
               "'" + entry.type + "' is not one of: " + stage_type_names(stage_registry()));
  return parsed.empty() ? std::any() : parsed[0].config;
}

}  // namespace tiller
