#include "common/dist/process_group.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if defined(TILLER_WITH_CUDA)
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL
#endif
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>

#include "common/torch_compat.h"
#include "common/util/error.h"

namespace tiller::dist {

struct Group::Backend {
  c10::intrusive_ptr<compat::CollectiveBackend> collectives;
  torch::Device device{torch::kCPU};  // where its collectives' tensors live (the run's device)
};

Group make_group(std::shared_ptr<Group::Backend> backend, int rank, int size,
                 std::vector<int> members, std::string name) {
  Group g;
  g.backend_ = std::move(backend);
  g.rank_ = rank;
  g.size_ = size;
  g.members_ = std::move(members);
  g.name_ = std::move(name);
  return g;
}

namespace {

using namespace std::chrono_literals;

constexpr auto kHeartbeatPeriod = 500ms;
constexpr auto kLossObservation = 2500ms;  // a heartbeat unchanged this long: the rank is gone
const char* const kAlivePrefix = "tiller/alive/";

struct World {
  Launch launch;
  WorldOptions options;
  c10::intrusive_ptr<c10d::Store> store;  // the rendezvous store (rank 0 hosts it by default)
  Group group;
  std::atomic<bool> stop_heartbeat{false};
  std::thread heartbeat;
  bool initialized = false;
};

World& the_world() {
  static World* world = new World();  // never destroyed: other ranks may still be reading it
  return *world;
}

c10::intrusive_ptr<c10d::TCPStore> connect_store(const Launch& l, bool server,
                                                 std::chrono::milliseconds timeout,
                                                 bool wait_workers) {
  c10d::TCPStoreOptions o;
  o.port = static_cast<std::uint16_t>(l.master_port);
  o.isServer = server;
  o.numWorkers = static_cast<std::size_t>(l.world_size);
  o.waitWorkers = wait_workers;
  o.timeout = timeout;
  return c10::make_intrusive<c10d::TCPStore>(l.master_addr, o);
}

std::vector<uint8_t> bytes_of(const std::string& s) {
  return {s.begin(), s.end()};
}

void heartbeat_loop(Launch l) {
  World& w = the_world();
  try {
    auto store = connect_store(l, /*server=*/false, 10s, /*wait_workers=*/false);
    const std::string key = kAlivePrefix + std::to_string(l.rank);
    for (uint64_t beat = 1; !w.stop_heartbeat.load(); ++beat) {
      store->set(key, bytes_of(std::to_string(beat)));
      std::this_thread::sleep_for(kHeartbeatPeriod);
    }
  } catch (const std::exception&) {
    // The store is gone (its host ended); the collectives will say so. No reconnecting: a new
    // client of a store whose host died can end the process from c10d's own threads
    // ("terminate called ... Connection reset by peer", seen when this loop retried).
  }
}

std::string store_host_words(const Launch& l) {
  return l.agent_store ? "the launcher's rendezvous store"
                       : "rank 0, which hosts the rendezvous store";
}

// Called on a failed collective: the ranks whose heartbeat stopped, said in words.
// It asks through the world's own store connection: a new TCPStore client opened while the store's
// host is being torn down can be accepted and then reset, and LibTorch 1.13's callback thread of
// that client ends the process on the reset (seen as "terminate called ... Connection reset by
// peer" instead of this message).
std::string lost_ranks_message() {
  World& w = the_world();
  const Launch& l = w.launch;
  try {
    // Every read below is bounded: wait() sets the connection's receive timeout it then keeps.
    w.store->wait({kAlivePrefix + std::to_string(l.rank)}, 5s);
    auto read_beats = [&] {
      std::vector<std::string> beats(static_cast<size_t>(l.world_size));
      for (int r = 0; r < l.world_size; ++r) {
        const std::string key = kAlivePrefix + std::to_string(r);
        if (w.store->check({key})) {
          const auto v = w.store->get(key);
          beats[static_cast<size_t>(r)] = std::string(v.begin(), v.end());
        }
      }
      return beats;
    };
    const auto before = read_beats();
    std::this_thread::sleep_for(kLossObservation);
    const auto after = read_beats();
    std::string lost;
    for (int r = 0; r < l.world_size; ++r)
      if (r != l.rank && before[static_cast<size_t>(r)] == after[static_cast<size_t>(r)])
        lost += (lost.empty() ? "" : ", ") + std::to_string(r);
    if (lost.empty()) return "every rank is still alive";
    return "lost rank " + lost + " (its heartbeat stopped)";
  } catch (const std::exception&) {
    return "lost " + store_host_words(l) + " (the store no longer answers)";
  }
}

// LibTorch 1.13 gives every TCPStore client a background thread that reads the store's
// notifications and lets any socket error escape it, which ends the process through
// std::terminate when the store's host dies and the connection is reset. That thread can only be
// answered here: the error becomes the same one line a failed collective gives.
std::terminate_handler previous_terminate = nullptr;

[[noreturn]] void on_terminate() {
  const World& w = the_world();
  if (std::exception_ptr in_flight = std::current_exception()) {
    try {
      std::rethrow_exception(in_flight);
    } catch (const std::system_error& e) {
      std::fprintf(
          stderr, "tiller: error: [rank %d] distributed: lost %s (a store connection failed: %s)\n",
          w.launch.rank, store_host_words(w.launch).c_str(), e.what());
      std::fflush(nullptr);
      std::_Exit(1);
    } catch (...) {
    }
  }
  if (previous_terminate != nullptr) previous_terminate();
  std::abort();
}

[[noreturn]] void fail(const std::string& what, const std::exception& e) {
  std::string cause = e.what();
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) cause = c10->what_without_backtrace();
  cause = cause.substr(0, cause.find('\n'));
  throw Error(what + " failed: " + lost_ranks_message() + " [" + cause + "]");
}

// Starts a collective and waits for it; a failure either way becomes fail()'s message.
template <typename Start>
void run_collective(const char* what, const std::string& group, Start start) {
  const std::string where = std::string(what) + " in group " + group;
  c10::intrusive_ptr<c10d::Work> work;
  try {
    work = start();
  } catch (const std::exception& e) {
    fail(where, e);
  }
  try {
    work->wait();
  } catch (const std::exception& e) {
    fail(where, e);
  }
}

c10d::ReduceOp reduce_op(Reduce op) {
  switch (op) {
    case Reduce::Max:
      return c10d::ReduceOp::MAX;
    case Reduce::Min:
      return c10d::ReduceOp::MIN;
    case Reduce::Sum:
      break;
  }
  return c10d::ReduceOp::SUM;
}

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

// TILLER_DIST_BACKEND=gloo keeps Gloo on CUDA tensors: with one GPU, several ranks can share it
// and prove the device-side collective code (NCCL refuses two ranks on one device).
bool gloo_on_cuda() {
  const char* backend = std::getenv("TILLER_DIST_BACKEND");
  return backend != nullptr && std::string(backend) == "gloo";
}

c10::intrusive_ptr<compat::CollectiveBackend> make_backend(
    const c10::intrusive_ptr<c10d::Store>& store, int rank, int size) {
  World& w = the_world();
  const auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(w.options.timeout);
  if (w.options.device.rfind("cuda", 0) == 0 && !gloo_on_cuda()) {
#if defined(TILLER_WITH_CUDA)
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = timeout;
    return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, options);
#else
    throw Error("run.device " + w.options.device +
                ": this tiller was built against a LibTorch without CUDA (no NCCL)");
#endif
  }
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME")) {
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
  } else if (is_loopback(w.launch.master_addr)) {
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  } else {
    options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  }
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
}

}  // namespace

Group::Group() = default;

void Group::all_reduce(torch::Tensor& tensor, Reduce op) const {
  if (single()) return;
  std::vector<at::Tensor> tensors{tensor};
  c10d::AllreduceOptions o;
  o.reduceOp = reduce_op(op);
  run_collective("all_reduce", name_, [&] { return backend_->collectives->allreduce(tensors, o); });
}

void Group::broadcast(torch::Tensor& tensor, int root) const {
  if (single()) return;
  std::vector<at::Tensor> tensors{tensor};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  run_collective("broadcast", name_, [&] { return backend_->collectives->broadcast(tensors, o); });
}

std::vector<torch::Tensor> Group::all_gather(const torch::Tensor& tensor) const {
  if (single()) return {tensor};
  std::vector<at::Tensor> input{tensor.contiguous()};
  std::vector<std::vector<at::Tensor>> output(1);
  for (int r = 0; r < size_; ++r) output[0].push_back(torch::empty_like(input[0]));
  run_collective("all_gather", name_,
                 [&] { return backend_->collectives->allgather(output, input); });
  return output[0];
}

void Group::barrier() const {
  if (single()) return;
  run_collective("barrier", name_, [&] { return backend_->collectives->barrier(); });
}

torch::Device Group::device() const {
  return backend_ ? backend_->device : torch::Device(torch::kCPU);
}

std::vector<double> Group::sum(std::vector<double> values) const {
  if (single() || values.empty()) return values;
  auto t = torch::tensor(values, torch::kDouble).to(device());
  all_reduce(t, Reduce::Sum);
  t = t.cpu();
  return {t.data_ptr<double>(), t.data_ptr<double>() + t.numel()};
}

double Group::max(double value) const {
  if (single()) return value;
  auto t = torch::tensor({value}, torch::kDouble).to(device());
  all_reduce(t, Reduce::Max);
  return t.item<double>();
}

Shard shard_of(int64_t n, int rank, int size) {
  const int64_t base = n / size, extra = n % size;
  Shard s;
  s.count = base + (rank < extra ? 1 : 0);
  s.begin = rank * base + std::min<int64_t>(rank, extra);
  return s;
}

torch::Tensor gather_rows(const Group& group, const torch::Tensor& local, int64_t total_rows) {
  if (group.single()) return local;
  if (local.scalar_type() == torch::kBool)  // Gloo has no bool
    return gather_rows(group, local.to(torch::kUInt8), total_rows).to(torch::kBool);
  // Gathered on the group's device, returned on the tensor's own (host scores under NCCL).
  if (local.device() != group.device())
    return gather_rows(group, local.to(group.device()), total_rows).to(local.device());
  const int64_t widest = shard_of(total_rows, 0, group.size()).count;
  auto padded = local;
  if (local.size(0) < widest) {
    auto shape = local.sizes().vec();
    shape[0] = widest - local.size(0);
    padded = torch::cat({local, torch::zeros(shape, local.options())});
  }
  auto parts = group.all_gather(padded.contiguous());
  for (int r = 0; r < group.size(); ++r)
    parts[static_cast<size_t>(r)] =
        parts[static_cast<size_t>(r)].narrow(0, 0, shard_of(total_rows, r, group.size()).count);
  return torch::cat(parts);
}

std::vector<std::string> all_gather_bytes(const Group& group, const std::string& bytes) {
  if (group.single()) return {bytes};
  // Lengths and bytes travel as tensors on the group's device (NCCL takes no host tensors).
  const auto on_device = [&](const torch::Tensor& t) { return t.to(group.device()); };
  std::vector<int64_t> lengths;
  for (const auto& n :
       group.all_gather(on_device(torch::tensor({static_cast<int64_t>(bytes.size())}))))
    lengths.push_back(n.item<int64_t>());
  // Gloo divides by the element count: never gather empty tensors.
  const int64_t widest = std::max<int64_t>(1, *std::max_element(lengths.begin(), lengths.end()));
  auto padded = torch::zeros({widest}, torch::kUInt8);
  std::copy(bytes.begin(), bytes.end(), padded.data_ptr<uint8_t>());
  std::vector<std::string> out;
  const auto parts = group.all_gather(on_device(padded));
  for (size_t r = 0; r < parts.size(); ++r) {
    const auto part = parts[r].cpu();
    const auto* data = part.data_ptr<uint8_t>();
    out.emplace_back(data, data + lengths[r]);
  }
  return out;
}

namespace {

// A CUDA rank takes its own GPU (the pipeline names it cuda:LOCAL_RANK) before NCCL starts: more
// ranks on a machine than GPUs is one line here, not a failure inside NCCL.
void use_local_gpu(const torch::Device& device, const Launch& l) {
  const auto gpus = static_cast<int64_t>(torch::cuda::device_count());
  const int64_t index = device.has_index() ? device.index() : 0;
  check(index < gpus, "distributed: rank " + std::to_string(l.rank) + " (local rank " +
                          std::to_string(l.local_rank) +
                          ") would use cuda:" + std::to_string(index) + ", but this machine has " +
                          std::to_string(gpus) + " GPU(s): start at most " + std::to_string(gpus) +
                          " processes per machine");
#if defined(TILLER_WITH_CUDA)
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(index));
#endif
}

}  // namespace

void initialize(const Launch& l, const WorldOptions& options) {
  World& w = the_world();
  if (w.initialized) {
    check(w.launch.world_size == l.world_size && w.launch.rank == l.rank,
          "distributed: initialized twice with different ranks");
    return;
  }
  w.launch = l;
  w.options = options;
  w.initialized = true;
  if (l.single()) return;
  check(options.device == "cpu" || options.device.rfind("cuda", 0) == 0,
        "distributed: device " + options.device + " is neither cpu nor cuda");
  const torch::Device device(options.device);
  if (device.is_cuda()) use_local_gpu(device, l);

  const auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(options.timeout);
  try {
    // All ranks wait until all have joined, within the timeout.
    const bool server = l.rank == 0 && !l.agent_store;
    w.store = connect_store(l, server, timeout, /*wait_workers=*/!l.agent_store);
  } catch (const std::exception& e) {
    std::string cause = e.what();
    if (const auto* c10 = dynamic_cast<const c10::Error*>(&e))
      cause = c10->what_without_backtrace();
    throw Error("distributed rendezvous at " + l.master_addr + ":" + std::to_string(l.master_port) +
                " (rank " + std::to_string(l.rank) + " of " + std::to_string(l.world_size) +
                ", via " + l.launcher + "): not every rank joined within " +
                std::to_string(options.timeout.count()) + " s [" +
                cause.substr(0, cause.find('\n')) + "]");
  }
  previous_terminate = std::set_terminate(on_terminate);
  w.heartbeat = std::thread(heartbeat_loop, l);

  auto backend = std::make_shared<Group::Backend>();
  backend->device = device;
  try {
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("tiller/world", w.store);
    backend->collectives = make_backend(prefixed, l.rank, l.world_size);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("joining the process group", e);
  }
  std::vector<int> members;
  for (int r = 0; r < l.world_size; ++r) members.push_back(r);
  w.group = make_group(std::move(backend), l.rank, l.world_size, std::move(members), "world");
  if (l.rank != 0) {
    std::fflush(stdout);
    if (std::freopen("/dev/null", "w", stdout) == nullptr)
      std::fprintf(stderr, "%swarning: could not silence stdout\n", error_prefix().c_str());
  }
}

bool initialized() {
  return the_world().initialized;
}

const Launch& launch() {
  return the_world().launch;
}

Group& world() {
  return the_world().group;
}

Group new_group(const std::vector<int>& ranks, const std::string& name) {
  World& w = the_world();
  const int me = w.launch.rank;
  const auto it = std::find(ranks.begin(), ranks.end(), me);
  check(it != ranks.end(), "distributed: rank " + std::to_string(me) + " is not in group " + name);
  const int rank = static_cast<int>(it - ranks.begin());
  const int size = static_cast<int>(ranks.size());
  if (size == 1) return make_group(nullptr, 0, 1, ranks, name);
  auto backend = std::make_shared<Group::Backend>();
  backend->device = torch::Device(w.options.device);
  try {
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("tiller/group/" + name, w.store);
    backend->collectives = make_backend(prefixed, rank, size);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail("joining group " + name, e);
  }
  return make_group(std::move(backend), rank, size, ranks, name);
}

void shutdown() {
  World& w = the_world();
  if (!w.initialized || w.launch.single()) return;
  w.group.barrier();
  w.stop_heartbeat = true;
  if (w.heartbeat.joinable()) w.heartbeat.join();
  // Rank 0's store must outlive the other ranks' last use of it: one more barrier.
  w.group.barrier();
  w.group = Group();
}

std::string error_prefix() {
  const World& w = the_world();
  if (!w.initialized || w.launch.single()) return "";
  return "[rank " + std::to_string(w.launch.rank) + "] ";
}

}  // namespace tiller::dist
