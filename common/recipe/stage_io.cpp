#include "common/recipe/stage_io.h"

#include "common/dist/process_group.h"
#include "common/io/hf_dir.h"
#include "common/io/llama2c.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/error.h"
#include "common/util/files.h"

#include <filesystem>
#include <fstream>
#include <set>

namespace tiller {

std::string stage_output_dir(const Recipe& recipe, const std::string& stage) {
  return recipe.stage_dir(stage) + "/final";
}

bool stage_complete(const Recipe& recipe, const std::string& stage) {
  return path_exists(recipe.stage_dir(stage) + "/complete.json") &&
         is_directory(stage_output_dir(recipe, stage));
}

namespace {

// FNV-1a, 64 bits: a stable digest of the bytes fed to it (not a security measure).
class Digest {
 public:
  void add(const void* data, size_t size) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < size; ++i) h_ = (h_ ^ p[i]) * 0x100000001b3ull;
  }
  void add(const std::string& s) {
    add(s.data(), s.size());
    add("\0", 1);
  }
  std::string hex() const {
    char out[17];
    std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(h_));
    return out;
  }

 private:
  uint64_t h_ = 0xcbf29ce484222325ull;
};

// A file's size and contents (files over 64 MiB: their first and last MiB, e.g. big weights).
void add_file(Digest& d, const std::filesystem::path& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) return;
  d.add(std::to_string(size));
  std::ifstream in(path, std::ios::binary);
  constexpr uintmax_t kWhole = 64ull << 20, kEdge = 1ull << 20;
  std::vector<char> buffer(1 << 16);
  auto read_span = [&](uintmax_t begin, uintmax_t length) {
    in.seekg(static_cast<std::streamoff>(begin));
    while (length > 0 && in) {
      const auto n = static_cast<std::streamsize>(std::min<uintmax_t>(length, buffer.size()));
      in.read(buffer.data(), n);
      d.add(buffer.data(), static_cast<size_t>(in.gcount()));
      length -= static_cast<uintmax_t>(n);
    }
  };
  if (size <= kWhole) {
    read_span(0, size);
  } else {
    read_span(0, kEdge);
    read_span(size - kEdge, kEdge);
  }
}

// A path named in a config: a file's contents, or a directory's files (one level, by name).
void add_path(Digest& d, const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_regular_file(path, ec)) {
    d.add("file " + path);
    add_file(d, path);
  } else if (std::filesystem::is_directory(path, ec)) {
    d.add("dir " + path);
    std::set<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(path, ec))
      if (entry.is_regular_file()) files.insert(entry.path());
    for (const auto& f : files) {
      d.add(f.filename().string());
      add_file(d, f);
    }
  }
}

std::string fingerprint_of(const Recipe& recipe, const std::string& stage, size_t depth);

// Every string in the config: a reference to an earlier stage, or a path that exists. A path is
// a string with a '/' or a '.' in it: bare words are names and choices ("sft", "plain"), which
// must not pick up a file of that name in the working directory.
void add_strings(Digest& d, const Recipe& recipe, const nlohmann::json& json, size_t depth) {
  if (json.is_object() || json.is_array()) {
    for (const auto& item : json) add_strings(d, recipe, item, depth);
  } else if (json.is_string()) {
    const std::string s = json.get<std::string>();
    if (s.size() > 1 && s[0] == '@') {
      d.add("ref " + s + " " + fingerprint_of(recipe, s.substr(1), depth + 1));
    } else if (s.find_first_of("/.") != std::string::npos && path_exists(s)) {
      add_path(d, s);
    }
  }
}

std::string fingerprint_of(const Recipe& recipe, const std::string& stage, size_t depth) {
  Digest d;
  // References only point back (a recipe lists its stages in order); the depth bounds a recipe
  // whose references loop.
  if (depth > recipe.stages.size() + 1) return d.hex();
  d.add("seed " + std::to_string(recipe.run.seed));
  if (stage == "base") {
    const auto& base =
        recipe.resolved.contains("base") ? recipe.resolved["base"] : nlohmann::json();
    d.add("base " + base.dump());
    add_strings(d, recipe, base, depth);
    return d.hex();
  }
  for (const auto& entry : recipe.stages) {
    if (entry.name != stage) continue;
    d.add("stage " + entry.body->dump());
    add_strings(d, recipe, *entry.body, depth);
    return d.hex();
  }
  d.add("unknown " + stage);
  return d.hex();
}

}  // namespace

std::string stage_fingerprint(const Recipe& recipe, const std::string& stage) {
  return fingerprint_of(recipe, stage, 0);
}

void check_stage_reusable(const Recipe& recipe, const std::string& stage) {
  const std::string path = recipe.stage_dir(stage) + "/complete.json";
  if (!path_exists(path)) return;
  const auto done = read_json_file(path);
  if (!done.contains("fingerprint")) return;  // written before fingerprints existed
  const std::string now = stage_fingerprint(recipe, stage);
  check(done["fingerprint"] == now,
        "stage '" + stage + "' in " + recipe.run.dir +
            " was completed with a different config or different inputs (fingerprint " +
            done["fingerprint"].get<std::string>() + ", now " + now +
            "); its outputs are not reused: remove " + recipe.stage_dir(stage) +
            " (and the stages after it) or choose another run.dir");
}

void mark_stage_complete(const Recipe& recipe, const std::string& stage,
                         const nlohmann::json& summary) {
  nlohmann::json marked = summary;
  marked["fingerprint"] = stage_fingerprint(recipe, stage);
  write_file_atomic(recipe.stage_dir(stage) + "/complete.json", marked.dump(2) + "\n");
}

void save_resolved_recipe(const Recipe& recipe, const std::vector<std::string>& comment) {
  make_directories(recipe.run.dir);
  std::string text;
  for (const auto& line : comment) text += "// " + line + "\n";
  write_file_atomic(recipe.run.dir + "/recipe.json", text + recipe.resolved.dump(2) + "\n");
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
    check_stage_reusable(recipe, "base");
    // Rank 0 converts; every rank waits for it (a no-op in a single process).
    if (dist::is_main() && !stage_complete(recipe, "base")) {
      auto model = import_llama2c(recipe.base.llama2c);
      Tokenizer(recipe.base.tokenizer).check_matches(model->config, recipe.base.llama2c);
      SaveOptions options;
      options.tokenizer_path = recipe.base.tokenizer;
      save_hf_model(*model, stage_output_dir(recipe, "base"), options);
      mark_stage_complete(recipe, "base", {{"stage", "base"}, {"from", recipe.base.llama2c}});
    }
    dist::world().barrier();
    return stage_output_dir(recipe, "base");
  }
  check_stage_reusable(recipe, name);
  check(stage_complete(recipe, name), "stage '" + name + "' has not completed (no " +
                                          stage_output_dir(recipe, name) + "); run it first");
  return stage_output_dir(recipe, name);
}

}  // namespace tiller
