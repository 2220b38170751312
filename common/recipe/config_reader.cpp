#include "common/recipe/config_reader.h"

#include <cmath>

#include "common/util/error.h"

namespace tiller {

namespace {
const nlohmann::json kNull = nullptr;
const nlohmann::json kEmptyObject = nlohmann::json::object();
std::function<void(const std::string&)>& key_observer() {
  static std::function<void(const std::string&)> observer;
  return observer;
}
}  // namespace

bool is_utf8(const std::string& text) {
  try {
    (void)nlohmann::json(text).dump();
    return true;
  } catch (const nlohmann::json::type_error&) {
    return false;
  }
}

void ConfigReader::set_key_observer(std::function<void(const std::string&)> observer) {
  key_observer() = std::move(observer);
}

void ConfigErrors::add(const std::string& path, const std::string& message) {
  const std::string where = location_of(path);
  errors_.push_back((path.empty() ? "<root>" : path) + (where.empty() ? "" : " (" + where + ")") +
                    ": " + message);
}

std::string ConfigErrors::location_of(std::string path) const {
  if (locations_.empty()) return "";
  while (!path.empty()) {
    const auto found = locations_.find(path);
    if (found != locations_.end()) return found->second;
    const size_t parent_end = path.find_last_of(".[");
    path.resize(parent_end == std::string::npos ? 0 : parent_end);
  }
  return "";
}

void ConfigErrors::throw_if_any(const std::string& source) const {
  if (errors_.empty()) return;
  std::string message = source + ": " + std::to_string(errors_.size()) +
                        (errors_.size() == 1 ? " error: " : " errors: ") + errors_[0];
  for (size_t i = 1; i < errors_.size(); ++i) message += "\n  " + errors_[i];
  throw Error(message);
}

ConfigReader::ConfigReader(const nlohmann::json& json, std::string path, ConfigErrors& errors)
    : json_(json), path_(std::move(path)), errors_(errors), is_object_(json.is_object()) {
  if (!is_object_ && !json.is_null())
    errors_.add(path_, std::string("expected an object, got ") + json.type_name());
}

ConfigReader::~ConfigReader() {
  if (!is_object_) return;
  for (auto it = json_.begin(); it != json_.end(); ++it)
    if (!read_.count(it.key())) errors_.add(path_of(it.key()), "unknown key");
}

bool ConfigReader::has(const std::string& key) const {
  return is_object_ && json_.contains(key);
}

std::string ConfigReader::path_of(const std::string& key) const {
  return path_.empty() ? key : path_ + "." + key;
}

const nlohmann::json* ConfigReader::find(const std::string& key, bool null_allowed) {
  read_.insert(key);
  if (key_observer()) key_observer()(path_of(key));
  if (!is_object_) return nullptr;
  auto it = json_.find(key);
  if (it == json_.end()) return nullptr;
  if (it->is_null()) {
    if (!null_allowed)
      errors_.add(path_of(key), "null is not a value here; remove the key to use its default");
    return nullptr;
  }
  return &*it;
}

void ConfigReader::wrong_type(const std::string& key, const char* expected) {
  errors_.add(path_of(key), std::string("expected ") + expected + ", got " +
                                json_.at(key).type_name() + " " + json_.at(key).dump());
}

int64_t ConfigReader::integer(const std::string& key, int64_t fallback) {
  const auto* v = find(key);
  if (v == nullptr) return fallback;
  if (v->is_number_integer()) return v->get<int64_t>();
  if (v->is_number_float()) {
    // A whole number within int64's range first: casting one beyond it is undefined (found by
    // recipe_fuzz: 1e30 for an integer key).
    const double d = v->get<double>();
    if (std::isfinite(d) && d >= -9223372036854775808.0 && d < 9223372036854775808.0 &&
        std::trunc(d) == d)
      return static_cast<int64_t>(d);
  }
  wrong_type(key, "an integer");
  return fallback;
}

double ConfigReader::number(const std::string& key, double fallback) {
  const auto* v = find(key);
  if (v == nullptr) return fallback;
  if (v->is_number()) return v->get<double>();
  wrong_type(key, "a number");
  return fallback;
}

bool ConfigReader::boolean(const std::string& key, bool fallback) {
  const auto* v = find(key);
  if (v == nullptr) return fallback;
  if (v->is_boolean()) return v->get<bool>();
  wrong_type(key, "true or false");
  return fallback;
}

std::string ConfigReader::string(const std::string& key, const std::string& fallback) {
  const auto* v = find(key);
  if (v == nullptr) return fallback;
  if (v->is_string()) return v->get<std::string>();
  wrong_type(key, "a string");
  return fallback;
}

std::optional<double> ConfigReader::number_or_null(const std::string& key,
                                                   std::optional<double> fallback) {
  if (!has(key)) {
    find(key);  // marks it read (and tells the key observer)
    return fallback;
  }
  const auto* v = find(key, /*null_allowed=*/true);
  if (v == nullptr) return std::nullopt;
  if (v->is_number()) return v->get<double>();
  wrong_type(key, "a number or null");
  return fallback;
}

std::string ConfigReader::required_string(const std::string& key) {
  if (!has(key)) {
    read_.insert(key);
    if (is_object_) errors_.add(path_of(key), "required key is missing");
    return "";
  }
  if (json_.at(key).is_null()) {
    read_.insert(key);
    errors_.add(path_of(key), "required key is null");
    return "";
  }
  return string(key, "");
}

const nlohmann::json& ConfigReader::raw(const std::string& key) {
  const auto* v = find(key, /*null_allowed=*/true);
  return v == nullptr ? kNull : *v;
}

const nlohmann::json& ConfigReader::object(const std::string& key) {
  const auto* v = find(key);
  if (v == nullptr) return kEmptyObject;
  return *v;  // a non-object is reported by the ConfigReader built on it
}

void ConfigReader::require(bool ok, const std::string& key, const std::string& message) {
  if (!ok) errors_.add(path_of(key), message);
}

void ConfigReader::one_of(const std::string& key, const std::string& value,
                          const std::set<std::string>& allowed) {
  if (allowed.count(value)) return;
  std::string list;
  for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
  errors_.add(path_of(key), "'" + value + "' is not one of: " + list);
}

}  // namespace tiller
