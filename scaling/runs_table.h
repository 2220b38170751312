// RunsTable: the training runs a scaling-law fit reads, one row per run (parameters N, tokens D,
// compute C, final loss), from a runs.jsonl or a CSV with a header row. Torch-free.
#pragma once
#include <cstdint>
#include <istream>
#include <string>
#include <vector>

namespace tiller::scaling {

// Which columns (CSV header names or JSON keys) hold N, D, C and the loss. The loss column must
// exist; each of N, D and C is read when present and may be marked as required. `extra` names
// further columns that every run must have, each a positive number (a learning rate, a batch
// size).
struct RunsColumns {
  std::string n = "N", d = "D", c = "C", loss = "loss";
  bool require_n = false, require_d = false, require_c = false;
  std::vector<std::string> extra;
};

struct Run {
  double n = 0, d = 0, c = 0, loss = 0;  // 0 where the table has no such column
  std::vector<double> extra;             // the RunsColumns::extra columns, in that order
  int64_t line = 0;                      // line in the source file, for messages
};

struct RunsTable {
  std::string source;  // the file name used in messages
  std::vector<Run> runs;
  // Whether every run has the quantity, read or derived: D = C / 6N when only C is given and
  // C = 6ND when only D is given.
  bool has_n = false, has_d = false, has_c = false;
};

// Reads path as JSONL when it ends in .jsonl/.json or its first non-blank character is '{',
// else as CSV. Every error is a tiller::Error naming file:line and the column.
RunsTable read_runs(const std::string& path, const RunsColumns& columns = {});

// The same from a stream; `source` names it in messages.
RunsTable parse_runs_jsonl(std::istream& in, const std::string& source,
                           const RunsColumns& columns = {});
RunsTable parse_runs_csv(std::istream& in, const std::string& source,
                         const RunsColumns& columns = {});

// Splits one CSV record: fields separated by commas, optionally double-quoted (a quoted field may
// hold commas, and "" stands for one quote). Throws tiller::Error prefixed by `where` on an
// unterminated quote or text after a closing quote.
std::vector<std::string> split_csv_line(const std::string& line, const std::string& where);

}  // namespace tiller::scaling
