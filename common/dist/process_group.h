// The process's place in a multi-process job, on PyTorch's c10d: a TCPStore rendezvous at
// MASTER_ADDR:MASTER_PORT, then Gloo (CPU) or NCCL (CUDA) collectives. Without launcher variables
// the world is a single process and every collective is a no-op, so the training loops call them
// unconditionally.
//
// A lost peer: every rank writes a heartbeat into the store; when a collective fails (a peer's
// socket closed, or the timeout passed) the survivors read the heartbeats and name the ranks that
// stopped, then exit with that message instead of hanging.
#pragma once
#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "common/dist/launch.h"

namespace tiller::dist {

enum class Reduce { Sum, Max, Min };

class Group {
 public:
  Group();  // a single process: rank 0 of 1

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool single() const { return size_ == 1; }
  // The world ranks of the members, in group-rank order.
  const std::vector<int>& members() const { return members_; }

  // Where collectives' tensors must live: the run's device (cuda:LOCAL_RANK under NCCL).
  torch::Device device() const;

  // In place, over every member. The tensor must be contiguous and on the group's device.
  void all_reduce(torch::Tensor& tensor, Reduce op = Reduce::Sum) const;
  void broadcast(torch::Tensor& tensor, int root) const;
  // Each member's tensor (the same shape and dtype everywhere), in group-rank order.
  std::vector<torch::Tensor> all_gather(const torch::Tensor& tensor) const;
  void barrier() const;

  // Conveniences for figures kept on the host (sent as one float64 tensor on the device).
  std::vector<double> sum(std::vector<double> values) const;
  double sum(double value) const { return sum(std::vector<double>{value})[0]; }
  double max(double value) const;

  struct Backend;  // the c10d process group (process_group.cpp)

 private:
  friend Group make_group(std::shared_ptr<Backend>, int, int, std::vector<int>, std::string);
  std::shared_ptr<Backend> backend_;
  int rank_ = 0, size_ = 1;
  std::vector<int> members_{0};
  std::string name_ = "world";
};

// A member's contiguous part of n items: sizes differ by at most one, lower ranks first.
struct Shard {
  int64_t begin = 0, count = 0;
};
Shard shard_of(int64_t n, int rank, int size);

// Row-wise all-gather of tensors whose first dimension differs between members (`count` rows
// here, shard_of's split): padded to the largest count, gathered, concatenated without padding.
torch::Tensor gather_rows(const Group& group, const torch::Tensor& local, int64_t total_rows);

// Every member's bytes (any lengths), in group-rank order.
std::vector<std::string> all_gather_bytes(const Group& group, const std::string& bytes);

struct WorldOptions {
  std::chrono::seconds timeout{300};  // rendezvous and every collective
  std::string device = "cpu";  // "cpu": Gloo; "cuda...": NCCL (Gloo with TILLER_DIST_BACKEND=gloo)
};

// Joins the job the launch describes (once per process; later calls must agree). A single-process
// launch only records itself. Non-zero ranks stop writing to stdout (rank 0 logs for the job);
// their errors still reach stderr, prefixed with their rank.
void initialize(const Launch& launch, const WorldOptions& options);
bool initialized();
const Launch& launch();
Group& world();
inline bool is_main() {
  return world().rank() == 0;
}

// A group of some of the world's ranks (the tensor- or data-parallel slices of a 2-D layout).
// Every member calls it with the same ranks and name; ranks that are not members must not.
Group new_group(const std::vector<int>& ranks, const std::string& name);

// The end of a clean run: waits for every rank, stops the heartbeat and leaves the job.
void shutdown();

// "[rank N] " in a multi-process job, "" otherwise: the prefix of this process's error lines.
std::string error_prefix();

}  // namespace tiller::dist
