#include "common/train/metrics.h"

#include <unistd.h>

#include <array>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/dist/process_group.h"
#include "common/util/error.h"
#include "common/util/files.h"

namespace tiller {

uint32_t crc32c(const void* data, size_t size) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t crc = 0xffffffffu;
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return crc ^ 0xffffffffu;
}

namespace {

uint32_t masked_crc(const void* data, size_t size) {
  const uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

// Minimal protobuf encoding for tensorflow.Event / Summary / Summary.Value.
void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
template <typename T>
void put_fixed(std::string& out, T v) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &v, sizeof(T));
  out.append(bytes, sizeof(T));
}
void put_bytes(std::string& out, uint32_t field, const std::string& bytes) {
  put_varint(out, (field << 3) | 2);
  put_varint(out, bytes.size());
  out += bytes;
}

std::string event(double wall_time, int64_t step, const std::string& body_field_and_bytes) {
  std::string e;
  put_varint(e, (1 << 3) | 1);  // wall_time: double
  put_fixed(e, wall_time);
  put_varint(e, (2 << 3) | 0);  // step: int64
  put_varint(e, static_cast<uint64_t>(step));
  e += body_field_and_bytes;
  return e;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  make_directories(dir);
  char host[256] = "localhost";
  ::gethostname(host, sizeof(host) - 1);
  path_ = dir + "/events.out.tfevents." + std::to_string(static_cast<int64_t>(now_seconds())) +
          "." + host + "." + std::to_string(::getpid());
  file_ = std::fopen(path_.c_str(), "wb");
  check(file_ != nullptr, "cannot create " + path_);
  std::string version;
  put_bytes(version, 3, "brain.Event:2");  // file_version
  write_record(event(now_seconds(), 0, version));
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_) std::fclose(file_);
}

void TensorBoardWriter::write_record(const std::string& data) {
  std::string header;
  put_fixed<uint64_t>(header, data.size());
  std::string frame = header;
  put_fixed<uint32_t>(frame, masked_crc(header.data(), header.size()));
  frame += data;
  put_fixed<uint32_t>(frame, masked_crc(data.data(), data.size()));
  std::fwrite(frame.data(), 1, frame.size(), file_);
}

void TensorBoardWriter::scalar(const std::string& tag, double value, int64_t step) {
  std::string v;
  put_bytes(v, 1, tag);         // Summary.Value.tag
  put_varint(v, (2 << 3) | 5);  // Summary.Value.simple_value: float
  put_fixed(v, static_cast<float>(value));
  std::string summary;
  put_bytes(summary, 1, v);  // Summary.value
  std::string body;
  put_bytes(body, 5, summary);  // Event.summary
  write_record(event(now_seconds(), step, body));
}

void TensorBoardWriter::flush() {
  std::fflush(file_);
}

MetricsLog::MetricsLog(const std::string& dir, int64_t first_step) : path_(dir + "/metrics.jsonl") {
  if (!dist::is_main()) return;  // rank 0 writes the job's metrics
  make_directories(dir);
  truncate_jsonl_from(path_, "step", first_step);
  tensorboard_ = std::make_unique<TensorBoardWriter>(dir + "/tensorboard");
}

void truncate_jsonl_from(const std::string& path, const std::string& key, int64_t first) {
  if (!path_exists(path)) return;
  std::istringstream in(read_file(path));
  std::string line, kept;
  while (std::getline(in, line)) {
    try {
      auto j = nlohmann::json::parse(line);
      if (j.contains(key) && j[key].is_number_integer() && j[key].get<int64_t>() < first)
        kept += line + "\n";
    } catch (const nlohmann::json::exception&) {
      // a line cut by a kill: dropped
    }
  }
  write_file_atomic(path, kept);
}

void append_jsonl(const std::string& path, const nlohmann::json& record) {
  std::ofstream out(path, std::ios::app);
  out << record.dump() << "\n";
  out.flush();
  check(out.good(), "cannot append to " + path);
}

void MetricsLog::log(const nlohmann::json& record) {
  if (!tensorboard_) return;  // not rank 0
  append_jsonl(path_, record);
  const int64_t step = record.at("step").get<int64_t>();
  for (auto it = record.begin(); it != record.end(); ++it)
    if (it.key() != "step" && it->is_number())
      tensorboard_->scalar(it.key(), it->get<double>(), step);
  tensorboard_->flush();
}

Progress::Progress(int64_t start_step, int64_t total_steps)
    : start_step_(start_step),
      total_steps_(total_steps),
      start_(std::chrono::steady_clock::now()) {}

std::string Progress::line(int64_t step, const std::map<std::string, double>& values,
                           double tokens_per_s) {
  char buffer[512];
  std::string out;
  std::snprintf(buffer, sizeof(buffer), "step %lld/%lld", (long long)step, (long long)total_steps_);
  out += buffer;
  for (const auto& [key, value] : values) {
    if (key == "lr")
      std::snprintf(buffer, sizeof(buffer), "  lr %.2e", value);
    else
      std::snprintf(buffer, sizeof(buffer), "  %s %.4f", key.c_str(), value);
    out += buffer;
  }
  if (tokens_per_s > 0) {
    std::snprintf(buffer, sizeof(buffer), "  %.0f tok/s", tokens_per_s);
    out += buffer;
  }
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const int64_t done = step - start_step_;
  if (done > 0) {
    const int64_t eta = static_cast<int64_t>(elapsed / done * (total_steps_ - step));
    std::snprintf(buffer, sizeof(buffer), "  ETA %lldm%02llds", (long long)(eta / 60),
                  (long long)(eta % 60));
    out += buffer;
  }
  return out;
}

}  // namespace tiller
