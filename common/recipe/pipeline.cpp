#include "common/recipe/pipeline.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "common/data/synthetic.h"
#include "common/dist/launch.h"
#include "common/dist/process_group.h"
#include "common/dist/tensor_parallel.h"
#include "common/recipe/stage_io.h"
#include "common/util/device.h"
#include "common/util/error.h"
#include "common/util/files.h"
#include "common/util/runtime.h"

namespace tiller {

namespace {

// A recipe whose stages are parsed.
struct ParsedRecipe {
  Recipe recipe;
  std::vector<ParsedStage> stages;
};

// Joins the multi-process job the launcher describes (torchrun, srun, mpirun), if any. On CUDA
// each process takes the GPU of its local rank.
void join_job(Recipe& recipe) {
  const dist::Launch launch = dist::launch_from_environment();
  if (launch.single()) {
    check(recipe.run.tensor_parallel == 1,
          "run.tensor_parallel " + std::to_string(recipe.run.tensor_parallel) +
              " needs a multi-process job (torchrun, srun, mpirun) of a multiple of that many "
              "ranks; this is a single process");
    return;
  }
  if (recipe.run.device == "cuda") recipe.run.device = "cuda:" + std::to_string(launch.local_rank);
  dist::initialize(launch, {std::chrono::seconds(recipe.run.dist_timeout_s), recipe.run.device});
  std::printf("distributed: %d ranks via %s, rendezvous %s:%d, %s\n", launch.world_size,
              launch.launcher.c_str(), launch.master_addr.c_str(), launch.master_port,
              recipe.run.device == "cpu" ? "gloo" : "nccl");
  dist::set_up_layout(recipe.run.tensor_parallel);
  if (recipe.run.tensor_parallel > 1)
    std::printf("distributed: %d data parallel x %d tensor parallel\n",
                launch.world_size / recipe.run.tensor_parallel, recipe.run.tensor_parallel);
}

// A run.device this build or machine cannot run (no CUDA build, no GPU, cuda:N beyond the GPUs,
// more processes on this machine than GPUs) stops the run, and `--check`, with the recipe's other
// mistakes found so far: before the job is joined and before the synthetic data is written, so
// nothing is left behind (the stages' checks of files that data would hold would add only noise).
void check_device_here(const Recipe& recipe, const std::string& path, ConfigErrors& errors) {
  const std::string& device = recipe.run.device;
  if (device == "cpu" || !is_device_name(device)) return;  // load_recipe reports a misspelling
  const int local_processes = dist::launch_from_environment().local_processes();
  const std::string problem = device_problem(device, local_processes, this_cuda_machine());
  if (problem.empty()) return;
  errors.add("run.device", problem);
  errors.throw_if_any(path);
}

// "pretrain, sft": the types that run under tensor parallelism.
std::string tensor_parallel_types(const StageRegistry& registry) {
  std::string names;
  for (const StageType& stage : registry)
    if (stage.tensor_parallel) names += (names.empty() ? "" : ", ") + stage.type;
  return names;
}

// The stages the flags choose, in recipe order (run_chosen_stages checks that the names exist).
std::vector<std::string> chosen_stages(const Recipe& recipe, const PipelineOptions& options) {
  std::vector<std::string> names;
  bool started = options.from.empty();
  for (const auto& stage : recipe.stages) {
    if (!options.only_type.empty()) {
      if (stage.type == options.only_type) names.push_back(stage.name);
      continue;
    }
    started = started || stage.name == options.from;
    if (!started || (!options.only.empty() && stage.name != options.only)) continue;
    names.push_back(stage.name);
    if (stage.name == options.until) break;
  }
  return names;
}

// Every stage's type is registered, and every stage chosen to run runs under the recipe's tensor
// parallelism: checked before the job is joined (a single process asked for tensor parallelism
// hears of its stages first).
void check_stage_types(const StageRegistry& registry, const Recipe& recipe,
                       const PipelineOptions& options, ConfigErrors& errors) {
  const std::vector<std::string> chosen = chosen_stages(recipe, options);
  for (const auto& entry : recipe.stages) {
    const StageType* type = find_stage_type(registry, entry.type);
    const bool runs = std::find(chosen.begin(), chosen.end(), entry.name) != chosen.end();
    if (type == nullptr)
      errors.add(entry.path + ".type",
                 "'" + entry.type + "' is not one of: " + stage_type_names(registry));
    else if (runs && recipe.run.tensor_parallel > 1 && !type->tensor_parallel)
      errors.add("run.tensor_parallel",
                 std::to_string(recipe.run.tensor_parallel) + " ranks, but stage '" + entry.name +
                     "' (" + entry.type + ") does not support tensor parallelism yet (" +
                     tensor_parallel_types(registry) + " stages do); set run.tensor_parallel=1");
  }
}

// Writes `stated` into `body`, object into object; any other value (null included: it may mean
// something, as rollout.missing_eos_penalty's does) replaces what is there.
void merge_stated(nlohmann::json& body, const nlohmann::json& stated) {
  for (const auto& item : stated.items()) {
    nlohmann::json& target = body[item.key()];
    if (item.value().is_object() && (target.is_object() || target.is_null())) {
      if (target.is_null()) target = nlohmann::json::object();
      merge_stated(target, item.value());
    } else {
      target = item.value();
    }
  }
}

// The resolved recipe states every value each stage runs with, defaults included, from its
// parsed config (its type's stated_defaults). Stage bodies are the fingerprints' input, so a
// default written out or left implicit fingerprints alike.
void state_stage_values(const std::vector<ParsedStage>& stages, nlohmann::json& resolved) {
  for (const auto& stage : stages) {
    if (!stage.type->stated_defaults) continue;
    const nlohmann::json stated = stage.type->stated_defaults(stage.config);
    for (auto& body : resolved["stages"])
      if (body.value("name", "") == stage.name) merge_stated(body, stated);
  }
}

// The run section and the synthetic data's as they run (before join_job gives each rank of a
// multi-process job its own GPU: the recipe's "cuda" stays "cuda").
void state_run_values(const Recipe& recipe, nlohmann::json& resolved) {
  const RunConfig& run = recipe.run;
  resolved["run"] = {{"name", run.name},
                     {"dir", run.dir},
                     {"seed", run.seed},
                     {"threads", run.threads},
                     {"device", run.device},
                     {"dist_timeout_s", run.dist_timeout_s},
                     {"tensor_parallel", run.tensor_parallel}};
  if (!recipe.synthetic.enabled) return;
  const SyntheticDataOptions& o = recipe.synthetic.options;
  resolved["synthetic_data"] = {{"dir", o.dir},
                                {"seed", o.seed},
                                {"corpus_stories", o.corpus_stories},
                                {"sft_examples", o.sft_examples},
                                {"preference_pairs", o.preference_pairs},
                                {"prompts", o.prompts}};
  const SyntheticArithmeticOptions& a = o.arithmetic;
  if (a.enabled)
    resolved["synthetic_data"]["arithmetic"] = {{"corpus_problems", a.corpus_problems},
                                                {"sft_examples", a.sft_examples},
                                                {"prompts", a.prompts},
                                                {"max_operand", a.max_operand},
                                                {"max_factor", a.max_factor},
                                                {"operations", a.operations}};
}

// `tiller --threads N` wins over run.threads; when the recipe sets run.threads too, the choice
// is said.
void choose_threads(Recipe& recipe, int flag) {
  if (flag < 0) return;
  const nlohmann::json& run = recipe.resolved.value("run", nlohmann::json::object());
  if (run.is_object() && run.contains("threads") && recipe.run.threads != flag)
    std::printf("threads: %d from --threads (the recipe's run.threads %d is overridden)\n", flag,
                recipe.run.threads);
  recipe.run.threads = flag;
}

// Loads the recipe and parses every stage; all mistakes are reported together.
ParsedRecipe parse_recipe(const StageRegistry& registry, const PipelineOptions& options) {
  ConfigErrors errors;
  ParsedRecipe parsed{load_recipe(options.path, options.overrides, errors), {}};
  check_stage_types(registry, parsed.recipe, options, errors);
  check_device_here(parsed.recipe, options.path, errors);
  choose_threads(parsed.recipe, options.threads);
  if (errors.empty()) state_run_values(parsed.recipe, parsed.recipe.resolved);
  if (!options.check_only && errors.empty()) join_job(parsed.recipe);
  // The recipe's own dataset exists before the stages check their files (rank 0 writes it).
  const SyntheticDataConfig& synthetic = parsed.recipe.synthetic;
  if (synthetic.enabled && errors.empty() && dist::is_main() &&
      write_synthetic_dataset(synthetic.options))
    std::printf("synthetic data written to %s\n", synthetic.options.dir.c_str());
  dist::world().barrier();
  parsed.stages = parse_stages(registry, parsed.recipe, errors);
  errors.throw_if_any(options.path);
  state_stage_values(parsed.stages, parsed.recipe.resolved);
  return parsed;
}

void run_stage(const ParsedRecipe& parsed, const std::string& name) {
  check_stage_reusable(parsed.recipe, name);
  if (stage_complete(parsed.recipe, name)) {
    std::printf("[%s] already complete (%s); skipped\n", name.c_str(),
                stage_output_dir(parsed.recipe, name).c_str());
    return;
  }
  for (const auto& stage : parsed.stages)
    if (stage.name == name) stage.type->run(parsed.recipe, stage.config);
}

// Whether the job's data-parallel ranks can share the batches of every stage that will run (those
// the flags choose, less those already complete): every refusal in one line, before the first
// stage starts and before anything is written.
void check_data_parallel_layout(const ParsedRecipe& parsed, const PipelineOptions& options) {
  const int ranks = dist::layout().data.size();
  if (ranks == 1) return;
  const std::vector<std::string> chosen = chosen_stages(parsed.recipe, options);
  std::string refusals;
  for (const auto& stage : parsed.stages) {
    if (!stage.type->data_parallel_error ||
        std::find(chosen.begin(), chosen.end(), stage.name) == chosen.end() ||
        stage_complete(parsed.recipe, stage.name))
      continue;
    const std::string error = stage.type->data_parallel_error(stage.config, ranks);
    if (!error.empty())
      refusals += (refusals.empty() ? "" : "; ") + ("stage " + stage.name + ": " + error);
  }
  check(refusals.empty(), options.path + " cannot run on " + std::to_string(ranks) +
                              " data-parallel ranks: " + refusals);
}

// The job's layout and each stage's effective global batch, for the head of the resolved recipe.
std::vector<std::string> distributed_layout(const ParsedRecipe& parsed) {
  const dist::Group& world = dist::world();
  if (world.single()) return {};
  const dist::Group& data = dist::layout().data;
  std::vector<std::string> lines = {
      "distributed: " + std::to_string(world.size()) + " ranks (" + dist::launch().launcher +
      "), " + std::to_string(data.size()) + "-way data parallel x " +
      std::to_string(dist::layout().tensor.size()) +
      "-way tensor parallel; every batch_size below is the global batch"};
  for (const auto& stage : parsed.stages)
    if (stage.type->batch_layout)
      lines.push_back("stage " + stage.name + ": " +
                      stage.type->batch_layout(stage.config, data.size()));
  return lines;
}

// Every stage the flags choose, in recipe order.
void run_chosen_stages(const ParsedRecipe& parsed, const PipelineOptions& options) {
  if (!options.only_type.empty()) {
    run_stage(parsed, only_stage_of_type(parsed.recipe, options.only_type).name);
    return;
  }
  for (const auto* flag : {&options.from, &options.only, &options.until}) {
    bool named = flag->empty();
    for (const auto& stage : parsed.recipe.stages) named = named || stage.name == *flag;
    check(named, "no stage named '" + *flag + "' in " + options.path);
  }
  for (const std::string& name : chosen_stages(parsed.recipe, options)) run_stage(parsed, name);
}

}  // namespace

std::vector<ParsedStage> parse_stages(const StageRegistry& registry, const Recipe& recipe,
                                      ConfigErrors& errors) {
  std::vector<ParsedStage> stages;
  for (const auto& entry : recipe.stages) {
    const StageType* type = find_stage_type(registry, entry.type);
    if (type != nullptr) stages.push_back({entry.name, type, type->parse(entry, errors)});
  }
  return stages;
}

int run_pipeline(const StageRegistry& registry, const PipelineOptions& options) {
  ParsedRecipe parsed = parse_recipe(registry, options);
  if (options.check_only) {
    std::printf("%s: OK (%zu stages)\n", options.path.c_str(), parsed.recipe.stages.size());
    return 0;
  }
  set_threads(parsed.recipe.run.threads);
  // The count that runs (0 asked for every core): exact resume holds under the same count.
  parsed.recipe.run.threads = torch::get_num_threads();
  parsed.recipe.resolved["run"]["threads"] = parsed.recipe.run.threads;
  warn_if_slow_blas();
  check_data_parallel_layout(parsed, options);
  if (dist::is_main()) save_resolved_recipe(parsed.recipe, distributed_layout(parsed));
  run_chosen_stages(parsed, options);
  if (options.only_type.empty() && dist::is_main()) write_run_summary(registry, parsed.recipe);
  dist::shutdown();
  return 0;
}

void write_run_summary(const StageRegistry& registry, const Recipe& recipe) {
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& stage : recipe.stages) {
    const std::string path = recipe.stage_dir(stage.name) + "/complete.json";
    const StageType* type = find_stage_type(registry, stage.type);
    if (!path_exists(path) || type == nullptr || !type->summary_rows) continue;
    for (const SummaryRow& row : type->summary_rows(stage.name, read_json_file(path)))
      if (row.value.is_number()) rows.push_back({{"label", row.label}, {"value", row.value}});
  }
  if (rows.empty()) return;
  write_file_atomic(recipe.run.dir + "/summary.json",
                    nlohmann::json{{"rows", rows}}.dump(2) + "\n");
  std::printf("\n%-56s %s\n", "summary", "value");
  for (const auto& row : rows)
    std::printf("%-56s %.4f\n", row["label"].get<std::string>().c_str(),
                row["value"].get<double>());
  std::printf("(%s/summary.json; `tiller report %s` draws the curves)\n", recipe.run.dir.c_str(),
              recipe.run.dir.c_str());
}

}  // namespace tiller
