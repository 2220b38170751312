#include "common/train/checkpoint.h"

#include <filesystem>
#include <regex>
#include <set>
#include <sstream>

#include "common/io/hf_dir.h"
#include "common/io/safetensors.h"
#include "common/model/lora.h"
#include "common/train/optimizer.h"
#include "common/util/error.h"
#include "common/util/files.h"

#if defined(TILLER_WITH_CUDA)
#include <ATen/cuda/CUDAGeneratorImpl.h>
#endif

namespace tiller {

namespace fs = std::filesystem;

namespace {

std::vector<std::pair<int64_t, std::string>> finished_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  if (!is_directory(dir)) return out;
  static const std::regex pattern("step-([0-9]+)");
  for (const auto& entry : fs::directory_iterator(dir)) {
    std::smatch m;
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && std::regex_match(name, m, pattern))
      out.emplace_back(std::stoll(m[1].str()), entry.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Removes a finished checkpoint so that a kill at any instant leaves it whole or gone: renamed
// out of the step-N names first (atomic), then deleted. A kill found a checkpoint without its
// state.json when remove_all was cut short in place.
void discard(const std::string& checkpoint) {
  if (!path_exists(checkpoint)) return;
  const std::string doomed = checkpoint + ".old";
  remove_all(doomed);
  fs::rename(checkpoint, doomed);
  remove_all(doomed);
}

// The default generators whose states a checkpoint keeps, by name: the CPU's ("cpu") and each
// visible GPU's ("cuda:N"), so that dropout and sampling on a GPU resume where they were.
std::vector<std::pair<std::string, at::Generator>> default_generators() {
  std::vector<std::pair<std::string, at::Generator>> generators{
      {"cpu", at::detail::getDefaultCPUGenerator()}};
#if defined(TILLER_WITH_CUDA)
  if (torch::cuda::is_available())
    for (int64_t i = 0; i < static_cast<int64_t>(torch::cuda::device_count()); ++i)
      generators.emplace_back(
          "cuda:" + std::to_string(i),
          at::cuda::detail::getDefaultCUDAGenerator(static_cast<c10::DeviceIndex>(i)));
#endif
  return generators;
}

std::map<std::string, torch::Tensor> rng_states() {
  std::map<std::string, torch::Tensor> states;
  for (const auto& [name, generator] : default_generators()) states[name] = generator.get_state();
  return states;
}

// A GPU the checkpoint did not see keeps its state; the CPU's must be there.
void restore_rng_states(const std::map<std::string, torch::Tensor>& states,
                        const std::string& path) {
  check(states.count("cpu"), path + ": no cpu state");
  for (auto& [name, generator] : default_generators())
    if (const auto it = states.find(name); it != states.end()) generator.set_state(it->second);
}

}  // namespace

namespace {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// An optimizer's state file: one for the whole model, or one per tensor-parallel rank (each
// covers that rank's shards, so a resume needs the same degree).
std::string optimizer_file(const std::string& part, int tp_rank, int tp_size) {
  if (tp_size == 1) return part + ".optimizer.pt";
  return part + ".optimizer.tp" + std::to_string(tp_rank) + "-of-" + std::to_string(tp_size) +
         ".pt";
}

// The tensor-parallel degree a checkpoint's optimizer state was written under (0: none found).
int saved_tensor_parallel(const std::string& ckpt, const std::string& part) {
  if (path_exists(ckpt + "/" + optimizer_file(part, 0, 1))) return 1;
  const std::string prefix = part + ".optimizer.tp0-of-", suffix = ".pt";
  for (const auto& entry : fs::directory_iterator(ckpt)) {
    const std::string name = entry.path().filename().string();
    if (name.size() <= prefix.size() + suffix.size() || name.rfind(prefix, 0) != 0 ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const std::string degree =
        name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
    if (!degree.empty() && degree.find_first_not_of("0123456789") == std::string::npos &&
        degree.size() < 6)
      return std::stoi(degree);
  }
  return 0;
}

void write_checkpoint(const std::string& dir, const CheckpointParts& parts,
                      const std::vector<NamedTensors>& model_weights,
                      const std::vector<std::vector<std::string>>& optimizer_states,
                      const nlohmann::json& state, int64_t keep) {
  const int64_t step = state.at("step").get<int64_t>();
  make_directories(dir);
  // Leftovers of an interrupted save or deletion are never loaded; clear them.
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().extension() == ".tmp" || entry.path().extension() == ".old")
      remove_all(entry.path().string());

  const std::string name = "step-" + std::to_string(step);
  const std::string final_dir = dir + "/" + name, tmp = final_dir + ".tmp";
  make_directories(tmp);
  try {
    for (size_t i = 0; i < parts.models.size(); ++i)
      write_safetensors(tmp + "/" + parts.models[i].first + ".safetensors", model_weights[i]);
    for (size_t i = 0; i < parts.optimizers.size(); ++i) {
      const auto& states = optimizer_states[i];
      const int tp_size = static_cast<int>(states.size());
      for (int r = 0; r < tp_size; ++r)
        write_file_atomic(tmp + "/" + optimizer_file(parts.optimizers[i].first, r, tp_size),
                          states[static_cast<size_t>(r)]);
    }
    const auto states = rng_states();
    write_safetensors(tmp + "/rng.safetensors", {states.begin(), states.end()});
    write_file_atomic(tmp + "/state.json", state.dump(2) + "\n");
    fsync_directory(tmp);
    discard(final_dir);  // a checkpoint of the same step from an earlier attempt
    fs::rename(tmp, final_dir);
    fsync_directory(dir);
    write_file_atomic(dir + "/latest", name + "\n");
  } catch (const fs::filesystem_error& e) {
    remove_all(tmp);
    throw Error("cannot write checkpoint " + final_dir + ": " + e.code().message());
  } catch (...) {
    remove_all(tmp);
    throw;
  }
  // A checkpoint of a later step belongs to an abandoned attempt (killed after renaming its
  // directory, before writing `latest`): this run resumed from an earlier one and goes its own way.
  // Keep-N pruning counts only this run's checkpoints, so it never removes the one just written.
  std::vector<std::string> this_run;
  for (const auto& [other_step, path] : finished_checkpoints(dir))
    if (other_step > step)
      discard(path);
    else
      this_run.push_back(path);
  for (size_t i = 0; keep > 0 && i + static_cast<size_t>(keep) < this_run.size(); ++i)
    discard(this_run[i]);
}

}  // namespace

void save_checkpoint(const std::string& dir, const CheckpointParts& parts,
                     const nlohmann::json& state, int64_t keep) {
  // Collectives first, on every rank: full weights of tensor-parallel models, the optimizer state
  // gathered over data parallel, then each tensor-parallel rank's state to rank 0.
  std::vector<NamedTensors> model_weights;
  // A LoRA model's checkpoint holds what trains (adapters, modules to save): its base is the
  // stage's init, loaded again at resume.
  for (const auto& [part, model] : parts.models)
    model_weights.push_back(has_lora(*model) ? lora_weights(*model) : model->named_weights());
  std::vector<std::vector<std::string>> optimizer_states;
  for (const auto& [part, optimizer] : parts.optimizers) {
    std::string state = optimizer->gathered_state();
    // Without tensor parallelism the state moves in: a gather of one would copy its hundreds
    // of MB, which was the peak memory of a stage's end.
    if (optimizer->tensor_parallel().single()) {
      optimizer_states.emplace_back();
      optimizer_states.back().push_back(std::move(state));
    } else {
      optimizer_states.push_back(dist::all_gather_bytes(optimizer->tensor_parallel(), state));
    }
  }
  const dist::Group& world = dist::world();
  std::string failure;
  if (world.rank() == 0) {
    try {
      write_checkpoint(dir, parts, model_weights, optimizer_states, state, keep);
    } catch (const std::exception& e) {
      failure = e.what();
    }
  }
  // Every rank stops when rank 0 could not write (and none goes on to a collective alone).
  if (world.max(failure.empty() ? 0.0 : 1.0) > 0)
    throw Error(failure.empty() ? "rank 0 could not write checkpoint step-" +
                                      std::to_string(state.at("step").get<int64_t>()) + " in " + dir
                                : failure);
}

nlohmann::json load_latest_checkpoint(const std::string& dir, const CheckpointParts& parts) {
  const std::string latest_file = dir + "/latest";
  if (!path_exists(latest_file)) return nullptr;
  std::string name = read_file(latest_file);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  check(std::regex_match(name, std::regex("step-[0-9]+")), latest_file + ": not a checkpoint name");
  const std::string ckpt = dir + "/" + name;
  check(is_directory(ckpt), latest_file + " names " + name + ", which does not exist");

  for (const auto& [part, model] : parts.models) {
    const auto weights = read_safetensors(ckpt + "/" + part + ".safetensors");
    if (has_lora(*model))
      load_lora_weights(*model, weights, ckpt + "/" + part);
    else
      load_weights(*model, weights, ckpt + "/" + part);
  }
  for (const auto& [part, optimizer] : parts.optimizers) {
    const dist::Group& tp = optimizer->tensor_parallel();
    const std::string path = ckpt + "/" + optimizer_file(part, tp.rank(), tp.size());
    if (!path_exists(path)) {
      const int saved = saved_tensor_parallel(ckpt, part);
      check(saved == 0, ckpt + ": the " + part + " state was saved under run.tensor_parallel " +
                            std::to_string(saved) +
                            "; resume it with the same degree (this job "
                            "has " +
                            std::to_string(tp.size()) + ")");
    }
    optimizer->load_gathered_state(read_file(path), path);
  }
  restore_rng_states(read_safetensors(ckpt + "/rng.safetensors"), ckpt + "/rng.safetensors");
  auto state = read_json_file(ckpt + "/state.json");
  check(state.is_object() && state.contains("step"), ckpt + "/state.json: no step");
  return state;
}

std::vector<int64_t> verify_checkpoints(const std::string& dir) {
  check(is_directory(dir), dir + ": not a directory");
  std::vector<int64_t> steps;
  const auto checkpoints = finished_checkpoints(dir);
  std::vector<std::set<std::string>> files;  // per checkpoint, the names of its files
  for (const auto& [step, path] : checkpoints) {
    files.emplace_back();
    for (const auto& entry : fs::directory_iterator(path)) {
      const std::string file = entry.path().string();
      const std::string name = entry.path().filename().string();
      files.back().insert(name);
      if (entry.path().extension() == ".safetensors") {
        read_safetensors(file);
      } else if (name.find(".optimizer.") != std::string::npos &&
                 entry.path().extension() == ".pt") {  // optimizer_file(), any TP degree
        try {
          std::istringstream in(read_file(file));
          torch::serialize::InputArchive archive;
          archive.load_from(in);
        } catch (const c10::Error& e) {
          throw Error(file + ": not a readable optimizer archive (" +
                      std::string(e.what_without_backtrace()).substr(0, 120) + ")");
        }
      } else if (name == "state.json") {
        const auto state = read_json_file(file);
        check(state.is_object() && state.contains("step") && state["step"] == step,
              file + ": no step, or not " + std::to_string(step));
      }
    }
    for (const char* required : {"state.json", "rng.safetensors"})
      check(files.back().count(required), path + ": no " + required);
    steps.push_back(step);
  }
  // Every checkpoint of a stage is written by the same code: one missing a file the newest has
  // was cut short.
  for (size_t i = 0; i + 1 < files.size(); ++i)
    for (const auto& name : files.back())
      check(files[i].count(name), checkpoints[i].second + ": no " + name);
  if (path_exists(dir + "/latest")) {
    std::string name = read_file(dir + "/latest");
    while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
    check(is_directory(dir + "/" + name), dir + "/latest names " + name + ", which does not exist");
  }
  // No `latest` beside finished checkpoints: the run was killed between renaming its first
  // checkpoint's directory and writing `latest`. Those checkpoints were never committed; a resume
  // starts over and discards them, as it discards any step newer than `latest`.
  return steps;
}

}  // namespace tiller
