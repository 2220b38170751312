#include "common/recipe/recipe.h"

#include <algorithm>
#include <set>

#include "common/recipe/yaml_recipe.h"
#include "common/util/device.h"
#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

namespace {

std::vector<std::string> split_path(const std::string& key) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t dot = key.find('.', start);
    parts.push_back(key.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return parts;
}

bool is_index(const std::string& s) {
  return !s.empty() && s.size() < 9 && s.find_first_not_of("0123456789") == std::string::npos;
}

// The recipe file as a JSON object; for a YAML file, also where each value was written.
nlohmann::json read_recipe_file(const std::string& path, ConfigLocations& locations) {
  if (!is_yaml_path(path)) {
    nlohmann::json json = read_json_file(path);
    check(json.is_object(), path + ": a recipe is a JSON object");
    return json;
  }
  YamlDocument document = read_yaml_file(path);
  check(document.json.is_object(), path + ": a recipe is a YAML mapping (key: value lines)");
  for (const auto& [at, line] : document.lines) locations[at] = path + ":" + std::to_string(line);
  return std::move(document.json);
}

// An override replaces what the file said at its path: a mistake there, or below, names it.
void locate_override(ConfigLocations& locations, const std::string& at,
                     const std::string& assignment) {
  auto it = locations.lower_bound(at);
  while (it != locations.end() && it->first.compare(0, at.size(), at) == 0) {
    const char next = it->first.size() > at.size() ? it->first[at.size()] : '\0';
    const bool below = next == '\0' || next == '.' || next == '[';
    it = below ? locations.erase(it) : std::next(it);
  }
  locations[at] = "override " + assignment;
}

// synthetic_data.arithmetic: its presence turns the arithmetic files on.
void read_synthetic_arithmetic(ConfigReader& synthetic, SyntheticArithmeticOptions& o,
                               ConfigErrors& errors) {
  ConfigReader arithmetic(synthetic.object("arithmetic"), synthetic.path_of("arithmetic"), errors);
  o.enabled = true;
  o.corpus_problems = arithmetic.integer("corpus_problems", o.corpus_problems);
  o.sft_examples = arithmetic.integer("sft_examples", o.sft_examples);
  o.prompts = arithmetic.integer("prompts", o.prompts);
  o.max_operand = arithmetic.integer("max_operand", o.max_operand);
  o.max_factor = arithmetic.integer("max_factor", o.max_factor);
  o.operations = arithmetic.string("operations", o.operations);
  for (const char* key : {"corpus_problems", "sft_examples", "prompts"})
    arithmetic.require(arithmetic.integer(key, 1) >= 1 && arithmetic.integer(key, 1) <= 10000000,
                       key, "must be in [1, 10000000]");
  for (const char* key : {"max_operand", "max_factor"})
    arithmetic.require(arithmetic.integer(key, 1) >= 1 && arithmetic.integer(key, 1) <= 999, key,
                       "must be in [1, 999]");
  arithmetic.require(
      !o.operations.empty() && o.operations.find_first_not_of("+-*") == std::string::npos,
      "operations", "must be some of \"+-*\", like \"+-\"");
}

}  // namespace

std::string apply_override(nlohmann::json& json, const std::string& assignment) {
  const size_t eq = assignment.find('=');
  // Before anything quotes it: a key or text value that is not UTF-8 would make the resolved
  // recipe, and any message naming the override, unprintable (found by yaml_recipe_fuzz).
  if (!is_utf8(assignment)) {
    const std::string key = assignment.substr(0, eq);
    throw Error(is_utf8(key) ? "override '" + key + "=...': the value is not UTF-8 text"
                             : std::string("an override's key is not UTF-8 text"));
  }
  check(eq != std::string::npos && eq > 0,
        "override '" + assignment + "' must look like key.sub=value");
  const std::string key = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  nlohmann::json value;
  try {
    value = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception&) {  // not JSON, or a number beyond double: text
    value = text;
  }
  auto parts = split_path(key);
  for (const auto& p : parts) check(!p.empty(), "override '" + assignment + "': empty key segment");
  nlohmann::json* node = &json;
  std::string path;  // as ConfigReader spells it
  size_t i = 0;
  // "sft.train.steps": the first segment names a stage.
  if (json.contains("stages") && json["stages"].is_array() && parts[0] != "stages" &&
      !json.contains(parts[0])) {
    auto& stages = json["stages"];
    for (size_t s = 0; s < stages.size(); ++s) {
      // A name that is not a string is the recipe check's to report, not a reason to throw.
      if (!stages[s].is_object()) continue;
      const auto name = stages[s].find("name");
      if (name != stages[s].end() && name->is_string() && name->get<std::string>() == parts[0]) {
        node = &stages[s];
        path = "stages[" + std::to_string(s) + "]";
        i = 1;
        break;
      }
    }
  }
  for (; i < parts.size(); ++i) {
    const bool last = i + 1 == parts.size();
    if (node->is_array()) {
      check(is_index(parts[i]) && std::stoul(parts[i]) < node->size(),
            "override '" + assignment + "': '" + parts[i] + "' is not an index of the list");
      node = &(*node)[std::stoul(parts[i])];
      path += "[" + std::to_string(std::stoul(parts[i])) + "]";
    } else {
      if (node->is_null()) *node = nlohmann::json::object();
      if (!node->is_object())
        throw Error("override '" + assignment + "': '" + (i > 0 ? parts[i - 1] : "<root>") +
                    "' is not an object");
      node = &(*node)[parts[i]];
      path += (path.empty() ? "" : ".") + parts[i];
    }
    if (last) *node = value;
  }
  return path;
}

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides,
                   ConfigErrors& errors) {
  Recipe recipe;
  recipe.source = path;
  ConfigLocations locations;
  recipe.resolved = read_recipe_file(path, locations);
  for (const auto& o : overrides) {
    const std::string at = apply_override(recipe.resolved, o);
    if (!locations.empty()) locate_override(locations, at, o);
  }
  errors.set_locations(std::move(locations));
  const auto& root = recipe.resolved;

  ConfigReader top(root, "", errors);
  {
    ConfigReader run(top.object("run"), "run", errors);
    recipe.run.name = run.string("name", recipe.run.name);
    recipe.run.dir = run.string("dir", "runs/" + recipe.run.name);
    recipe.run.seed =
        static_cast<uint64_t>(run.integer("seed", static_cast<int64_t>(recipe.run.seed)));
    const int64_t threads = run.integer("threads", 0);
    recipe.run.threads = static_cast<int>(std::clamp<int64_t>(threads, 0, 1024));
    recipe.run.device = run.string("device", recipe.run.device);
    recipe.run.dist_timeout_s = run.integer("dist_timeout_s", recipe.run.dist_timeout_s);
    run.require(recipe.run.dist_timeout_s >= 1 && recipe.run.dist_timeout_s <= 86400,
                "dist_timeout_s", "must be in [1, 86400] seconds");
    const int64_t tensor_parallel = run.integer("tensor_parallel", 1);
    run.require(tensor_parallel >= 1 && tensor_parallel <= 1024, "tensor_parallel",
                "must be in [1, 1024] ranks");
    recipe.run.tensor_parallel = static_cast<int>(std::clamp<int64_t>(tensor_parallel, 1, 1024));
    run.require(!recipe.run.name.empty() && recipe.run.name.find('/') == std::string::npos, "name",
                "must be a non-empty name without '/'");
    run.require(threads >= 0 && threads <= 1024, "threads", "must be in [0, 1024] (0: every core)");
    run.require(is_device_name(recipe.run.device), "device",
                "must be cpu, cuda or cuda:N, got '" + recipe.run.device + "'");
  }
  {
    const auto& base_json = top.raw("base");
    if (base_json.is_string()) {
      const std::string ref = base_json.get<std::string>();
      if (ref.size() > 1 && ref[0] == '@')
        recipe.base.stage = ref.substr(1);
      else
        errors.add("base", "a string base must name a stage, like \"@pretrain\"");
    } else if (!base_json.is_null()) {
      ConfigReader base(base_json, "base", errors);
      recipe.base.hf = base.string("hf", "");
      recipe.base.llama2c = base.string("llama2c", "");
      recipe.base.tokenizer = base.string("tokenizer", "");
      const int sources = !recipe.base.hf.empty() + !recipe.base.llama2c.empty();
      base.require(sources == 1, "hf", "give exactly one of base.hf or base.llama2c");
      base.require(recipe.base.llama2c.empty() || !recipe.base.tokenizer.empty(), "tokenizer",
                   "base.llama2c needs base.tokenizer (a SentencePiece tokenizer.model)");
      if (!recipe.base.hf.empty() && !is_directory(recipe.base.hf))
        errors.add("base.hf", "directory " + recipe.base.hf + " does not exist");
      if (!recipe.base.llama2c.empty() && !path_exists(recipe.base.llama2c))
        errors.add("base.llama2c", "file " + recipe.base.llama2c + " does not exist");
      if (!recipe.base.tokenizer.empty() && !path_exists(recipe.base.tokenizer))
        errors.add("base.tokenizer", "file " + recipe.base.tokenizer + " does not exist");
    }
  }
  if (top.has("synthetic_data")) {
    ConfigReader syn(top.object("synthetic_data"), "synthetic_data", errors);
    SyntheticDataOptions& o = recipe.synthetic.options;
    recipe.synthetic.enabled = true;
    o.dir = syn.required_string("dir");
    o.seed = static_cast<uint64_t>(syn.integer("seed", static_cast<int64_t>(o.seed)));
    o.corpus_stories = syn.integer("corpus_stories", o.corpus_stories);
    o.sft_examples = syn.integer("sft_examples", o.sft_examples);
    o.preference_pairs = syn.integer("preference_pairs", o.preference_pairs);
    o.prompts = syn.integer("prompts", o.prompts);
    for (const char* key : {"corpus_stories", "sft_examples", "preference_pairs"})
      syn.require(syn.integer(key, 1) >= 1 && syn.integer(key, 1) <= 10000000, key,
                  "must be in [1, 10000000]");
    syn.require(o.prompts >= 2 && o.prompts <= 10000000, "prompts", "must be in [2, 10000000]");
    if (syn.has("arithmetic")) read_synthetic_arithmetic(syn, o.arithmetic, errors);
  }
  const auto& stages = top.raw("stages");
  if (!stages.is_array() || stages.empty()) {
    errors.add("stages", "a non-empty list of stages is required");
    return recipe;
  }
  std::set<std::string> names;
  for (size_t i = 0; i < stages.size(); ++i) {
    const std::string at = "stages[" + std::to_string(i) + "]";
    const auto& s = stages[i];
    if (!s.is_object()) {
      errors.add(at, "expected an object");
      continue;
    }
    StageEntry entry;
    entry.path = at;
    entry.body = &s;
    entry.name = s.contains("name") && s["name"].is_string() ? s["name"].get<std::string>() : "";
    entry.type = s.contains("type") && s["type"].is_string() ? s["type"].get<std::string>() : "";
    if (entry.name.empty() || entry.name.find('/') != std::string::npos || entry.name == "base")
      errors.add(at + ".name", "a stage needs a name (not 'base', no '/')");
    if (!names.insert(entry.name).second)
      errors.add(at + ".name", "duplicate stage name '" + entry.name + "'");
    recipe.stages.push_back(entry);
  }
  if (!recipe.base.stage.empty() && !names.count(recipe.base.stage))
    errors.add("base", "names stage '" + recipe.base.stage + "', which the recipe does not have");
  return recipe;
}

const StageEntry& only_stage_of_type(const Recipe& recipe, const std::string& type) {
  const StageEntry* found = nullptr;
  for (const auto& s : recipe.stages) {
    if (s.type != type) continue;
    check(found == nullptr,
          recipe.source + ": more than one " + type + " stage; use `tiller run --only NAME`");
    found = &s;
  }
  check(found != nullptr, recipe.source + ": no stage of type " + type);
  return *found;
}

}  // namespace tiller
