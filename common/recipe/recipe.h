// Recipe: the JSON (or YAML) file that names a run, its base model and its ordered stages. This
// file reads the skeleton (run, base, stage names and types) and applies command-line overrides;
// each stage parses its own body, reporting into the same error list.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "common/data/synthetic.h"
#include "common/recipe/config_reader.h"

namespace tiller {

struct RunConfig {
  std::string name = "run";
  std::string dir;  // default: runs/<name>
  uint64_t seed = 1234;
  int threads = 0;  // 0: every core
  std::string device = "cpu";
  int64_t dist_timeout_s = 300;  // multi-process jobs: rendezvous and each collective
  int tensor_parallel = 1;       // ranks each model is sharded over (the rest: data parallel)
};

// Where the base model comes from: exactly one of an HF directory, a llama2.c file (with its
// tokenizer), or a pretrain stage's output ("@name").
struct BaseConfig {
  std::string hf;
  std::string llama2c;
  std::string tokenizer;
  std::string stage;  // "@pretrain"-style reference, without the '@'
};

// "synthetic_data": the project's own dataset (common/data/synthetic.h), written into `dir` before
// the stages are checked, so that they can name its files.
struct SyntheticDataConfig {
  bool enabled = false;
  SyntheticDataOptions options;
};

struct StageEntry {
  std::string name;
  std::string type;                      // pretrain, sft, reward, rlhf
  std::string path;                      // "stages[2]", for errors
  const nlohmann::json* body = nullptr;  // points into Recipe::resolved
};

struct Recipe {
  std::string source;
  nlohmann::json resolved;  // the recipe after overrides, as saved in the run directory
  RunConfig run;
  BaseConfig base;
  SyntheticDataConfig synthetic;
  std::vector<StageEntry> stages;

  // RUN_DIR/<stage>
  std::string stage_dir(const std::string& stage) const { return run.dir + "/" + stage; }
};

// Applies "a.b.c=value" to json: the value is parsed as JSON when it is valid JSON, else taken as
// a string. The first segment may name a stage ("sft.train.steps=10" = "stages.<i>.train...").
// Returns the path it set, as ConfigReader spells paths ("stages[1].train.steps").
std::string apply_override(nlohmann::json& json, const std::string& assignment);

// Reads the file (JSON with comments; YAML when it ends in .yaml or .yml, see yaml_recipe.h),
// applies overrides, and reads the skeleton. Mistakes are added to `errors` (the caller adds the
// stages' own and throws once); for a YAML file, `errors` names the line of each mistake.
Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides,
                   ConfigErrors& errors);

// The stage of a given type, for `tiller sft R.json` and friends; throws when there is none or
// more than one.
const StageEntry& only_stage_of_type(const Recipe& recipe, const std::string& type);

}  // namespace tiller
