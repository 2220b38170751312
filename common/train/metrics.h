// Metrics: one JSON object per logged step in metrics.jsonl, the same scalars as TensorBoard
// event files, and the one-line progress report on stdout.
#pragma once
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>

namespace tiller {

// A TensorBoard event file (TFRecord framing, hand-encoded Event protos with scalar summaries).
class TensorBoardWriter {
 public:
  // Creates DIR/events.out.tfevents.<time>.tiller.
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  void scalar(const std::string& tag, double value, int64_t step);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& data);
  std::string path_;
  std::FILE* file_ = nullptr;
};

class MetricsLog {
 public:
  // Appends to DIR/metrics.jsonl and writes TensorBoard events under DIR/tensorboard/ (on rank 0
  // of a multi-process job; a no-op on the others). On resume,
  // lines for steps >= first_step are dropped first, so no step is ever logged twice.
  MetricsLog(const std::string& dir, int64_t first_step);
  // Logs every numeric field of `record` (which must hold "step").
  void log(const nlohmann::json& record);

 private:
  std::string path_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
};

// The progress line: "step 12/300  loss 2.3412  lr 3.00e-04  1234 tok/s  ETA 1m02s".
class Progress {
 public:
  Progress(int64_t start_step, int64_t total_steps);
  std::string line(int64_t step, const std::map<std::string, double>& values, double tokens_per_s);

 private:
  int64_t start_step_, total_steps_;
  std::chrono::steady_clock::time_point start_;
};

// JSONL files that grow with a run: drops the lines whose integer `key` is >= first (or that a
// kill cut short), so a resumed run never logs a step twice; then appends one object a line.
void truncate_jsonl_from(const std::string& path, const std::string& key, int64_t first);
void append_jsonl(const std::string& path, const nlohmann::json& record);

// CRC-32C (Castagnoli), as TFRecord uses.
uint32_t crc32c(const void* data, size_t size);

}  // namespace tiller
