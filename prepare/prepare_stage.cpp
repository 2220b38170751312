#include "prepare/prepare_stage.h"

#include <cstdio>

#include "common/dist/process_group.h"
#include "common/recipe/stage_io.h"
#include "common/util/files.h"
#include "prepare/prepare.h"

namespace tiller {

namespace {

PrepareStageConfig parse_prepare_stage(const StageEntry& entry, ConfigErrors& errors) {
  PrepareStageConfig c;
  ConfigReader r(*entry.body, entry.path, errors);
  c.name = r.string("name", "");
  r.string("type", "");
  c.prepare = read_prepare_config(r, errors, /*in_recipe=*/true);
  return c;
}

nlohmann::json run_prepare_stage(const Recipe& recipe, const PrepareStageConfig& c) {
  PrepareConfig config = c.prepare;
  config.seed = recipe.run.seed;
  // "@base" or "@stage": that model directory's tokenizer.
  if (!config.tokenizer.empty() && config.tokenizer[0] == '@')
    config.tokenizer = resolve_model_reference(recipe, config.tokenizer);
  const std::string final_dir = stage_output_dir(recipe, c.name);
  nlohmann::json summary;
  if (dist::is_main()) {
    make_directories(recipe.stage_dir(c.name));
    remove_all(final_dir);  // a run killed between writing it and marking the stage complete
    const nlohmann::json stats = prepare_data(config, final_dir, "[" + c.name + "]");
    summary = {{"stage", c.name},
               {"type", "prepare"},
               {"documents_read", stats["input"]["documents"]},
               {"documents_kept", stats["kept_documents"]},
               {"train_tokens", stats["output"]["train"]["tokens"]},
               {"mb_per_s", stats["mb_per_s"]},
               {"peak_rss_mib", stats["memory"]["peak_rss_mib"]}};
    for (const auto& step : stats["steps"])
      summary["removed_by_" + step["step"].get<std::string>()] = step["removed_documents"];
    mark_stage_complete(recipe, c.name, summary);
    std::printf("[%s] done: %s (%lld of %lld documents kept)\n", c.name.c_str(), final_dir.c_str(),
                (long long)stats["kept_documents"].get<int64_t>(),
                (long long)stats["input"]["documents"].get<int64_t>());
  }
  dist::world().barrier();  // the next stage, on every rank, reads what rank 0 wrote
  return summary;
}

}  // namespace

StageType prepare_stage_type() {
  StageType type = typed_stage_type<PrepareStageConfig>(parse_prepare_stage, run_prepare_stage);
  type.description = "data preparation: text -> cleaned, deduplicated, tokenised shards";
  type.stated_defaults = [](const std::any& config) {
    return prepare_config_values(std::any_cast<const PrepareStageConfig&>(config).prepare);
  };
  type.summary_rows = [](const std::string& stage, const nlohmann::json& summary) {
    return std::vector<SummaryRow>{
        {stage + ": documents kept", summary.value("documents_kept", nlohmann::json())},
        {stage + ": train tokens", summary.value("train_tokens", nlohmann::json())}};
  };
  type.report_figures = {"documents_read", "documents_kept", "train_tokens", "mb_per_s"};
  return type;
}

}  // namespace tiller
