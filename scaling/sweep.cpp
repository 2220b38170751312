#include "scaling/sweep.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "common/model/model_config.h"
#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller::scaling {

namespace {

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    const auto end = text.find(separator, start);
    parts.push_back(text.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) return parts;
    start = end + 1;
  }
}

}  // namespace

GridAxis parse_grid_axis(const std::string& text) {
  const auto eq = text.find('=');
  check(eq != std::string::npos && eq > 0 && eq + 1 < text.size(),
        "--grid '" + text + "': expected key=value1,value2,... or key1:key2=v1:v2,...");
  GridAxis axis;
  axis.key = text.substr(0, eq);
  axis.keys = split(axis.key, ':');
  for (const auto& key : axis.keys) check(!key.empty(), "--grid '" + text + "': an empty key");
  for (const auto& value : split(text.substr(eq + 1), ',')) {
    check(!value.empty(), "--grid '" + text + "': an empty value");
    // A linked axis (several keys) takes one value per key in each of its values.
    auto parts = axis.keys.size() == 1 ? std::vector<std::string>{value} : split(value, ':');
    check(parts.size() == axis.keys.size(), "--grid '" + text + "': value '" + value + "' has " +
                                                std::to_string(parts.size()) + " parts for " +
                                                std::to_string(axis.keys.size()) + " keys");
    for (const auto& part : parts)
      check(!part.empty(), "--grid '" + text + "': an empty part in value '" + value + "'");
    axis.values.push_back(value);
    axis.parts.push_back(std::move(parts));
  }
  return axis;
}

std::vector<GridPoint> expand_grid(const std::vector<GridAxis>& axes, int64_t max_points) {
  check(!axes.empty(), "sweep: give at least one --grid key=v1,v2,...");
  double count = 1;
  std::vector<std::string> seen;
  for (const auto& axis : axes) {
    for (const auto& key : axis.keys) {
      check(std::find(seen.begin(), seen.end(), key) == seen.end(),
            "--grid: key " + key + " given twice");
      seen.push_back(key);
    }
    count *= static_cast<double>(axis.values.size());
  }
  check(count <= static_cast<double>(max_points),
        "sweep: the grid has " + std::to_string(static_cast<int64_t>(count)) +
            " points, more than " + std::to_string(max_points));
  std::vector<GridPoint> points(static_cast<size_t>(count));
  for (size_t i = 0; i < points.size(); ++i) {
    GridPoint& p = points[i];
    p.index = static_cast<int64_t>(i);
    char prefix[32];
    std::snprintf(prefix, sizeof prefix, "p%02zu", i);
    p.name = prefix;
    size_t rest = i;
    std::vector<size_t> picked(axes.size());
    for (size_t a = axes.size(); a-- > 0;) {  // the last axis varies fastest
      picked[a] = rest % axes[a].values.size();
      rest /= axes[a].values.size();
    }
    for (size_t a = 0; a < axes.size(); ++a) {
      for (size_t k = 0; k < axes[a].keys.size(); ++k)
        p.overrides.push_back(axes[a].keys[k] + "=" + axes[a].parts[picked[a]][k]);
      // The name keeps the (first) key's last segment and the value, in characters safe for a
      // path.
      const std::string& key = axes[a].keys.front();
      std::string part = key.substr(key.rfind('.') == std::string::npos ? 0 : key.rfind('.') + 1) +
                         "=" + axes[a].values[picked[a]];
      for (char& ch : part)
        if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '.' && ch != '=' && ch != '-' &&
            ch != '_')
          ch = '-';
      p.name += "_" + part;
    }
  }
  return points;
}

namespace {

// The stage's `train.key`: from its summary, or, for a stage that finished before summaries
// recorded it, from the resolved recipe (RUN_DIR/recipe.json) when that sets it. Null if neither.
nlohmann::json stage_train_value(const nlohmann::json& summary, const std::string& stage_dir,
                                 const std::string& key) {
  if (summary.contains(key) && summary[key].is_number()) return summary[key];
  const std::filesystem::path dir = std::filesystem::path(stage_dir).lexically_normal();
  const std::string stage = (dir.has_filename() ? dir : dir.parent_path()).filename().string();
  const std::string recipe_path = (dir.parent_path() / "recipe.json").string();
  if (!path_exists(recipe_path)) return nullptr;
  const nlohmann::json recipe = read_json_file(recipe_path);
  if (!recipe.contains("stages") || !recipe["stages"].is_array()) return nullptr;
  for (const auto& s : recipe["stages"]) {
    if (!s.is_object() || s.value("name", "") != stage || !s.contains("train")) continue;
    const auto& train = s["train"];
    if (train.is_object() && train.contains(key) && train[key].is_number()) return train[key];
  }
  return nullptr;
}

}  // namespace

nlohmann::json sweep_record(const GridPoint& point, const std::string& stage_dir) {
  const auto done = read_json_file(stage_dir + "/complete.json");
  const auto config = model_config_from_hf_json(read_json_file(stage_dir + "/final/config.json"),
                                                stage_dir + "/final/config.json");
  check(done.contains("final_val_loss") && done["final_val_loss"].is_number(),
        stage_dir +
            "/complete.json: no final_val_loss (a sweep needs a validation set: set the "
            "stage's data.val_fraction or data.val)");
  check(done.contains("tokens_trained") && done["tokens_trained"].is_number(),
        stage_dir + "/complete.json: no tokens_trained (a pretrain or sft stage's summary)");
  check(done.contains("max_seq_len") && done["max_seq_len"].is_number_integer() &&
            done["max_seq_len"].get<int64_t>() > 0,
        stage_dir + "/complete.json: no max_seq_len");
  const int64_t context_length = done["max_seq_len"].get<int64_t>();
  const double n = static_cast<double>(config.non_embedding_parameter_count());
  const double d = done["tokens_trained"].get<double>();
  // Kaplan's d_attn: the width of the queries, which differs from hidden_size with an explicit
  // head_dim.
  const int64_t attention_width = config.num_attention_heads * config.resolved_head_dim();
  const double attention = 6.0 * static_cast<double>(config.num_hidden_layers) *
                           static_cast<double>(context_length) *
                           static_cast<double>(attention_width) * d;
  const nlohmann::json lr = stage_train_value(done, stage_dir, "lr");
  const nlohmann::json batch_size = stage_train_value(done, stage_dir, "batch_size");
  nlohmann::json overrides = nlohmann::json::object();
  for (const auto& o : point.overrides) {
    const auto eq = o.find('=');
    overrides[o.substr(0, eq)] = o.substr(eq + 1);
  }
  nlohmann::json record = {{"point", point.name},
                           {"overrides", overrides},
                           {"N", n},
                           {"N_total", static_cast<double>(config.parameter_count())},
                           {"D", d},
                           {"C", 6.0 * n * d + attention},
                           {"loss", done["final_val_loss"]},
                           {"train_loss", done.value("final_loss", nlohmann::json())},
                           {"steps", done.value("steps", nlohmann::json())},
                           {"hidden_size", config.hidden_size},
                           {"num_hidden_layers", config.num_hidden_layers},
                           {"context_length", context_length}};
  if (!lr.is_null()) record["lr"] = lr;
  if (!batch_size.is_null()) {
    record["batch_size"] = batch_size;
    record["batch_tokens"] =
        batch_size.is_number_integer()
            ? nlohmann::json(batch_size.get<int64_t>() * context_length)
            : nlohmann::json(batch_size.get<double>() * static_cast<double>(context_length));
  }
  return record;
}

}  // namespace tiller::scaling
