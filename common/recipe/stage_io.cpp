#include "common/recipe/stage_io.h"

#include "common/io/hf_dir.h"
#include "common/io/llama2c.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

std::string stage_output_dir(const Recipe& recipe, const std::string& stage) {
  return recipe.stage_dir(stage) + "/final";
}

bool stage_complete(const Recipe& recipe, const std::string& stage) {
  return path_exists(recipe.stage_dir(stage) + "/complete.json") &&
         is_directory(stage_output_dir(recipe, stage));
}

void mark_stage_complete(const Recipe& recipe, const std::string& stage,
                         const nlohmann::json& summary) {
  write_file_atomic(recipe.stage_dir(stage) + "/complete.json", summary.dump(2) + "\n");
}

void save_resolved_recipe(const Recipe& recipe) {
  make_directories(recipe.run.dir);
  write_file_atomic(recipe.run.dir + "/recipe.json", recipe.resolved.dump(2) + "\n");
}

std::string resolve_model_reference(const Recipe& recipe, const std::string& reference) {
  if (reference.empty() || reference[0] != '@') {
    check(is_directory(reference), "model directory " + reference + " does not exist");
    return reference;
  }
  const std::string name = reference.substr(1);
  if (name == "base") {
    if (!recipe.base.stage.empty()) return resolve_model_reference(recipe, "@" + recipe.base.stage);
    if (!recipe.base.hf.empty()) return recipe.base.hf;
    check(!recipe.base.llama2c.empty(), recipe.source + ": the recipe has no base model");
    if (!stage_complete(recipe, "base")) {
      auto model = import_llama2c(recipe.base.llama2c);
      Tokenizer(recipe.base.tokenizer).check_matches(model->config, recipe.base.llama2c);
      SaveOptions options;
      options.tokenizer_path = recipe.base.tokenizer;
      save_hf_model(*model, stage_output_dir(recipe, "base"), options);
      mark_stage_complete(recipe, "base", {{"stage", "base"}, {"from", recipe.base.llama2c}});
    }
    return stage_output_dir(recipe, "base");
  }
  check(stage_complete(recipe, name), "stage '" + name + "' has not completed (no " +
                                          stage_output_dir(recipe, name) + "); run it first");
  return stage_output_dir(recipe, name);
}

}  // namespace tiller
