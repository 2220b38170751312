#include "scaling/runs_table.h"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "common/util/error.h"

namespace tiller::scaling {
namespace {

// The columns read: N, D, C, the loss, then RunsColumns::extra.
enum Quantity { kN, kD, kC, kLoss, kFirstExtra };

struct Column {
  std::string name;
  bool required = false;
};

std::vector<Column> columns_read(const RunsColumns& columns) {
  std::vector<Column> read = {{columns.n, columns.require_n},
                              {columns.d, columns.require_d},
                              {columns.c, columns.require_c},
                              {columns.loss, true}};
  for (const std::string& name : columns.extra) read.push_back({name, true});
  return read;
}

// One run as read, before D or C is derived: a value per column read, when present.
struct RawRun {
  std::vector<std::optional<double>> values;
  int64_t line = 0;
};

std::string where(const std::string& source, int64_t line) {
  return source + ":" + std::to_string(line);
}

std::string format_number(double x) {
  std::ostringstream s;
  s.precision(17);
  s << x;
  return s.str();
}

void check_positive_finite(double x, const std::string& at, const std::string& what) {
  check(std::isfinite(x) && x > 0,
        at + ": " + what + " must be a positive finite number, got " + format_number(x));
}

bool blank(const std::string& line) {
  return line.find_first_not_of(" \t\r") == std::string::npos;
}

std::string trim(const std::string& s) {
  const size_t begin = s.find_first_not_of(" \t\r");
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(" \t\r") - begin + 1);
}

// Derives the missing one of N, D, C from the other two (C = 6ND), checks every value and the
// set of columns present, and turns the raw rows into the table.
RunsTable finish_table(const std::string& source, const std::vector<Column>& columns,
                       const std::vector<bool>& present, const std::vector<RawRun>& raw) {
  for (size_t q = 0; q < columns.size(); ++q)
    check(present[q] || !columns[q].required, source + ": no column '" + columns[q].name + "'");
  check(!raw.empty(), source + ": no runs");
  RunsTable table;
  table.source = source;
  table.has_n = present[kN] || (present[kD] && present[kC]);
  table.has_d = present[kD] || (present[kN] && present[kC]);
  table.has_c = present[kC] || (present[kN] && present[kD]);
  for (const RawRun& r : raw) {
    const std::string at = where(source, r.line);
    for (size_t q = 0; q < columns.size(); ++q)
      if (present[q]) check_positive_finite(*r.values[q], at, "'" + columns[q].name + "'");
    Run run;
    for (size_t q = kFirstExtra; q < columns.size(); ++q) run.extra.push_back(*r.values[q]);
    run.line = r.line;
    run.loss = *r.values[kLoss];
    if (present[kN]) run.n = *r.values[kN];
    if (present[kD]) run.d = *r.values[kD];
    if (present[kC]) run.c = *r.values[kC];
    if (table.has_n && !present[kN]) {
      run.n = run.c / (6 * run.d);
      check_positive_finite(run.n, at, "N = C / 6D");
    }
    if (table.has_d && !present[kD]) {
      run.d = run.c / (6 * run.n);
      check_positive_finite(run.d, at, "D = C / 6N");
    }
    if (table.has_c && !present[kC]) {
      run.c = 6 * run.n * run.d;
      check_positive_finite(run.c, at, "C = 6ND");
    }
    table.runs.push_back(run);
  }
  return table;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::vector<std::string> split_csv_line(const std::string& line, const std::string& where) {
  std::vector<std::string> fields;
  std::string field;
  size_t i = 0;
  while (true) {
    // At the start of a field: skip blanks, then read it quoted or plain.
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    if (i < line.size() && line[i] == '"') {
      ++i;
      field.clear();
      while (true) {
        check(i < line.size(),
              where + ": unterminated quoted field " + std::to_string(fields.size() + 1));
        if (line[i] == '"') {
          if (i + 1 < line.size() && line[i + 1] == '"') {
            field += '"';
            i += 2;
            continue;
          }
          ++i;
          break;
        }
        field += line[i++];
      }
      while (i < line.size() && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) ++i;
      check(i == line.size() || line[i] == ',',
            where + ": text after the closing quote of field " + std::to_string(fields.size() + 1));
    } else {
      const size_t comma = line.find(',', i);
      field = trim(line.substr(i, comma == std::string::npos ? std::string::npos : comma - i));
      i = comma == std::string::npos ? line.size() : comma;
    }
    fields.push_back(field);
    if (i == line.size()) return fields;
    ++i;  // the comma
  }
}

RunsTable parse_runs_csv(std::istream& in, const std::string& source, const RunsColumns& columns) {
  std::string line;
  int64_t number = 0;
  std::vector<std::string> header;
  while (header.empty() && std::getline(in, line)) {
    ++number;
    if (number == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);  // UTF-8 BOM
    if (!blank(line)) header = split_csv_line(line, where(source, number));
  }
  check(!header.empty(), source + ": empty file (a CSV needs a header row)");

  const std::vector<Column> read = columns_read(columns);
  std::vector<int> index(read.size(), -1);
  std::vector<bool> present(read.size());
  for (size_t q = 0; q < read.size(); ++q) {
    for (size_t k = 0; k < header.size(); ++k) {
      if (header[k] != read[q].name) continue;
      check(index[q] < 0, source + ": column '" + header[k] + "' appears twice in the header");
      index[q] = static_cast<int>(k);
    }
    present[q] = index[q] >= 0;
  }
  check(present[kLoss], source + ": no column '" + columns.loss + "' (the header has " +
                            std::to_string(header.size()) + " columns)");

  std::vector<RawRun> raw;
  while (std::getline(in, line)) {
    ++number;
    if (blank(line)) continue;
    const std::string at = where(source, number);
    const std::vector<std::string> fields = split_csv_line(line, at);
    check(fields.size() == header.size(), at + ": " + std::to_string(fields.size()) +
                                              " fields, but the header has " +
                                              std::to_string(header.size()));
    RawRun run;
    run.line = number;
    run.values.resize(read.size());
    for (size_t q = 0; q < read.size(); ++q) {
      if (!present[q]) continue;
      const std::string& text = fields[index[q]];
      const std::string column = "'" + read[q].name + "'";
      check(!text.empty(), at + ": " + column + " is empty");
      char* end = nullptr;
      const double value = std::strtod(text.c_str(), &end);
      check(end == text.c_str() + text.size(),
            at + ": " + column + ": '" + text + "' is not a number");
      run.values[q] = value;
    }
    raw.push_back(run);
  }
  return finish_table(source, read, present, raw);
}

RunsTable parse_runs_jsonl(std::istream& in, const std::string& source,
                           const RunsColumns& columns) {
  std::string line;
  int64_t number = 0;
  std::vector<RawRun> raw;
  const std::vector<Column> read = columns_read(columns);
  std::vector<bool> present(read.size());
  int64_t first_line = 0;
  while (std::getline(in, line)) {
    ++number;
    if (blank(line)) continue;
    const std::string at = where(source, number);
    nlohmann::json object;
    try {
      object = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      throw Error(at + ": invalid JSON");
    }
    check(object.is_object(), at + ": expected a JSON object");
    RawRun run;
    run.line = number;
    run.values.resize(read.size());
    for (size_t q = 0; q < read.size(); ++q) {
      const std::string& name = read[q].name;
      const bool here = object.contains(name);
      // The first run decides which columns the table has; every other run must agree.
      if (raw.empty()) present[q] = here;
      if (here && !present[q])
        throw Error(at + ": '" + name + "' is here but not in the first run (line " +
                    std::to_string(first_line) + ")");
      if (!here) {
        check(!present[q], at + ": no '" + name + "'");
        continue;
      }
      const nlohmann::json& value = object[name];
      check(value.is_number(), at + ": '" + name + "' must be a number, got " + value.dump());
      run.values[q] = value.get<double>();
    }
    if (raw.empty()) {
      first_line = number;
      for (size_t q = kLoss; q < read.size(); ++q)  // the loss and the extra columns
        check(present[q], at + ": no '" + read[q].name + "'");
    }
    raw.push_back(run);
  }
  return finish_table(source, read, present, raw);
}

RunsTable read_runs(const std::string& path, const RunsColumns& columns) {
  std::ifstream file(path, std::ios::binary);
  check(file.good(), path + ": cannot open");
  std::stringstream contents;
  contents << file.rdbuf();
  const std::string text = contents.str();
  const size_t first = text.find_first_not_of(" \t\r\n");
  const bool jsonl = ends_with(path, ".jsonl") || ends_with(path, ".json") ||
                     (first != std::string::npos && text[first] == '{');
  std::istringstream in(text);
  return jsonl ? parse_runs_jsonl(in, path, columns) : parse_runs_csv(in, path, columns);
}

}  // namespace tiller::scaling
