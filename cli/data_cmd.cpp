// `tiller data prepare CONFIG [key=value ...]`: raw text in, cleaned, deduplicated, tokenised
// shards out (prepare/prepare.h; docs/data.md).
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "common/recipe/recipe.h"
#include "common/recipe/yaml_recipe.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "prepare/prepare.h"

namespace tiller {

namespace {

struct DataPrepareArgs {
  std::string config;
  std::vector<std::string> overrides;
  bool check_only = false;
};

// The config file (JSON, or YAML by its extension) with the overrides applied, checked whole.
PrepareConfig load_prepare_config(const DataPrepareArgs& a, nlohmann::json& json) {
  ConfigErrors errors;
  if (is_yaml_path(a.config)) {
    YamlDocument document = read_yaml_file(a.config);
    ConfigLocations locations;
    for (const auto& [at, line] : document.lines)
      locations[at] = a.config + ":" + std::to_string(line);
    errors.set_locations(locations);
    json = std::move(document.json);
  } else {
    json = read_json_file(a.config);
  }
  check(json.is_object(), a.config + ": a data prepare config is a JSON object");
  for (const auto& o : a.overrides) apply_override(json, o);
  PrepareConfig config;
  {
    ConfigReader r(json, "", errors);
    config = read_prepare_config(r, errors, /*in_recipe=*/false);
  }
  errors.throw_if_any(a.config);
  return config;
}

int run_data_prepare(const DataPrepareArgs& a) {
  nlohmann::json json;
  const PrepareConfig config = load_prepare_config(a, json);
  check(!path_exists(config.output),
        "output " + config.output + " exists: remove it or choose another (nothing was changed)");
  if (a.check_only) {
    std::printf("%s: ok\n%s\n", a.config.c_str(), prepare_config_values(config).dump(2).c_str());
    return 0;
  }
  const nlohmann::json stats = prepare_data(config, config.output, "[prepare]");
  std::printf(
      "[prepare] %lld documents read (%.1f MB) -> %lld kept: %lld train / %lld validation "
      "documents, %lld + %lld tokens; %.1f MB/s on %lld threads, peak RSS %.0f MiB (%.0f above "
      "the %.0f MiB at start; bound %lld MiB)\n",
      (long long)stats["input"]["documents"].get<int64_t>(),
      stats["input"]["bytes"].get<double>() / 1e6,
      (long long)stats["kept_documents"].get<int64_t>(),
      (long long)stats["output"]["train"]["documents"].get<int64_t>(),
      (long long)stats["output"].value("val", nlohmann::json::object()).value("documents", 0),
      (long long)stats["output"]["train"]["tokens"].get<int64_t>(),
      (long long)stats["output"].value("val", nlohmann::json::object()).value("tokens", 0),
      stats["mb_per_s"].get<double>(), (long long)stats["threads"].get<int64_t>(),
      stats["memory"]["peak_rss_mib"].get<double>(),
      stats["memory"]["peak_above_baseline_mib"].get<double>(),
      stats["memory"]["baseline_rss_mib"].get<double>(), (long long)config.memory_mb);
  for (const auto& step : stats["steps"])
    std::printf("[prepare]   %-18s removed %lld documents\n",
                step["step"].get<std::string>().c_str(),
                (long long)step["removed_documents"].get<int64_t>());
  std::printf("[prepare] wrote %s (stats.json, prepare.json, shards)\n", config.output.c_str());
  return 0;
}

}  // namespace

void add_data_commands(CLI::App& app, CommandAction& action) {
  auto* data = app.add_subcommand("data", "prepare pretraining data");
  data->require_subcommand(1);
  auto args = std::make_shared<DataPrepareArgs>();
  auto* prepare = data->add_subcommand(
      "prepare",
      "clean, filter, deduplicate and tokenise text into shards that pretraining reads "
      "(data.format: shards); see docs/data.md");
  prepare->add_option("config", args->config, "the config (JSON or YAML)")
      ->required()
      ->check(CLI::ExistingFile);
  prepare->add_option("overrides", args->overrides, "key=value changes to the config");
  prepare->add_flag("--check", args->check_only,
                    "check the config and print every value it would run with; prepare nothing");
  prepare->callback([args, &action] { action = [args] { return run_data_prepare(*args); }; });
}

}  // namespace tiller
