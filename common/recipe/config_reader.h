// ConfigReader: typed, path-aware reading of JSON config objects. Every unknown key, wrong type and
// bad value is collected (with its JSON path) so that all mistakes are reported at once.
//
// `null` is a value, not an absence: the typed getters and object() refuse it (a recipe that says
// `"lr": null` must not run at a default the user never sees). A key whose null has a documented
// meaning is read with number_or_null(), or with raw() by a caller that handles null itself.
#pragma once
#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace tiller {

// Where each value of a config was written, by JSON path ("stages[1].train.lr" ->
// "recipe.yaml:12"), for formats that tell (YAML).
using ConfigLocations = std::map<std::string, std::string>;

// Whether `text` is valid UTF-8 (no overlong forms, no surrogates), as nlohmann's serializer
// requires of every string: everything a recipe holds is serialized into the resolved recipe and
// into error messages, so text from outside (a YAML scalar, a command-line override) is checked
// before it becomes a JSON string.
bool is_utf8(const std::string& text);

// The mistakes found in a config, each "path: what", or "path (where): what" when locations are
// known.
class ConfigErrors {
 public:
  void add(const std::string& path, const std::string& message);
  // From now on a mistake at a path names the place of that path, or of its nearest parent listed
  // (a missing key: where its section is).
  void set_locations(ConfigLocations locations) { locations_ = std::move(locations); }
  bool empty() const { return errors_.empty(); }
  const std::vector<std::string>& list() const { return errors_; }
  // Throws tiller::Error listing every mistake (one per line after the first), if any.
  void throw_if_any(const std::string& source) const;

 private:
  std::string location_of(std::string path) const;

  std::vector<std::string> errors_;
  ConfigLocations locations_;
};

class ConfigReader {
 public:
  // `json` must outlive the reader. A non-object is itself reported as an error.
  ConfigReader(const nlohmann::json& json, std::string path, ConfigErrors& errors);
  // Reports every key that was never read as unknown.
  ~ConfigReader();
  ConfigReader(const ConfigReader&) = delete;

  // Whether the key is present (with any value, null included).
  bool has(const std::string& key) const;
  std::string path_of(const std::string& key) const;

  int64_t integer(const std::string& key, int64_t fallback);
  double number(const std::string& key, double fallback);
  bool boolean(const std::string& key, bool fallback);
  std::string string(const std::string& key, const std::string& fallback);
  // A number whose null means something (documented where the key is): fallback when the key is
  // absent, std::nullopt when it is null.
  std::optional<double> number_or_null(const std::string& key, std::optional<double> fallback);
  // A required string; reports an error and returns "" when absent.
  std::string required_string(const std::string& key);
  // The raw value (marked as read); null json when absent or null: the caller gives null its
  // meaning.
  const nlohmann::json& raw(const std::string& key);
  // A sub-object, or an empty object when absent (errors go through `sub`'s own reader).
  const nlohmann::json& object(const std::string& key);

  // Calls `observer` with the full path of every key any reader looks up ("stages[2].ppo.gamma"),
  // so that a test can hold the recipe reference to what the parsers read. Empty: nothing.
  static void set_key_observer(std::function<void(const std::string&)> observer);

  // Value checks that report through the same error list.
  void require(bool ok, const std::string& key, const std::string& message);
  void one_of(const std::string& key, const std::string& value,
              const std::set<std::string>& allowed);

 private:
  // The key's value, marked as read; nullptr when absent. A null value is reported as an error
  // (and nullptr returned) unless null_allowed.
  const nlohmann::json* find(const std::string& key, bool null_allowed = false);
  void wrong_type(const std::string& key, const char* expected);

  const nlohmann::json& json_;
  std::string path_;
  ConfigErrors& errors_;
  std::set<std::string> read_;
  bool is_object_;
};

}  // namespace tiller
