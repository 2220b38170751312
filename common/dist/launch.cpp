#include "common/dist/launch.h"

#include <cstdlib>
#include <string>

#include "common/util/error.h"

namespace tiller::dist {

namespace {

int integer_variable(const EnvironmentLookup& lookup, const char* name, int fallback, int min_value,
                     int max_value) {
  const char* raw = lookup(name);
  if (raw == nullptr || *raw == '\0') return fallback;
  char* end = nullptr;
  const long value = std::strtol(raw, &end, 10);
  check(end != raw && *end == '\0' && value >= min_value && value <= max_value,
        std::string("environment variable ") + name + "='" + raw + "': expected an integer in [" +
            std::to_string(min_value) + ", " + std::to_string(max_value) + "]");
  return static_cast<int>(value);
}

// SLURM_NODELIST's first host, e.g. "node[03-05,07]" -> "node03", "a,b" -> "a".
std::string first_slurm_host(const std::string& list) {
  const auto bracket = list.find('[');
  const auto comma = list.find(',');
  if (bracket != std::string::npos && (comma == std::string::npos || bracket < comma)) {
    const std::string prefix = list.substr(0, bracket);
    const auto stop = list.find_first_of("-,]", bracket + 1);
    return prefix + list.substr(bracket + 1, stop - bracket - 1);
  }
  return list.substr(0, comma);
}

}  // namespace

Launch launch_from_environment() {
  return launch_from_environment([](const char* name) { return std::getenv(name); });
}

Launch launch_from_environment(const EnvironmentLookup& lookup) {
  Launch l;
  auto has = [&](const char* name) { return lookup(name) != nullptr; };
  const char *rank_var = nullptr, *size_var = nullptr, *local_var = nullptr,
             *local_size_var = nullptr;
  if (has("RANK") || has("WORLD_SIZE")) {
    l.launcher = "torchrun";
    rank_var = "RANK", size_var = "WORLD_SIZE", local_var = "LOCAL_RANK";
    local_size_var = "LOCAL_WORLD_SIZE";
  } else if (has("OMPI_COMM_WORLD_RANK")) {
    l.launcher = "openmpi";
    rank_var = "OMPI_COMM_WORLD_RANK", size_var = "OMPI_COMM_WORLD_SIZE";
    local_var = "OMPI_COMM_WORLD_LOCAL_RANK", local_size_var = "OMPI_COMM_WORLD_LOCAL_SIZE";
  } else if (has("SLURM_PROCID") && has("SLURM_NTASKS")) {
    l.launcher = "slurm";
    rank_var = "SLURM_PROCID", size_var = "SLURM_NTASKS", local_var = "SLURM_LOCALID";
    local_size_var = "SLURM_NTASKS_PER_NODE";
  } else {
    return l;
  }
  constexpr int kMaxRanks = 1 << 20;
  l.world_size = integer_variable(lookup, size_var, -1, 1, kMaxRanks);
  check(l.world_size >= 1, std::string("environment variable ") + size_var +
                               " is missing (it comes with " + rank_var + ")");
  l.rank = integer_variable(lookup, rank_var, -1, 0, kMaxRanks);
  check(l.rank >= 0, std::string("environment variable ") + rank_var +
                         " is missing (it comes with " + size_var + ")");
  check(l.rank < l.world_size, std::string("environment variable ") + rank_var + "=" +
                                   std::to_string(l.rank) + " is not below " + size_var + "=" +
                                   std::to_string(l.world_size));
  l.local_rank = integer_variable(lookup, local_var, l.rank, 0, kMaxRanks);
  l.local_world_size = integer_variable(lookup, local_size_var, 0, 1, kMaxRanks);
  check(l.local_world_size == 0 || !has(local_var) || l.local_rank < l.local_world_size,
        std::string("environment variable ") + local_var + "=" + std::to_string(l.local_rank) +
            " is not below " + local_size_var + "=" + std::to_string(l.local_world_size));

  if (const char* addr = lookup("MASTER_ADDR"); addr != nullptr && *addr != '\0') {
    l.master_addr = addr;
  } else if (l.launcher == "slurm" && has("SLURM_NODELIST")) {
    l.master_addr = first_slurm_host(lookup("SLURM_NODELIST"));
  } else {
    check(l.world_size == 1 || l.launcher != "torchrun",
          "environment variable MASTER_ADDR is missing (torchrun sets it; set it with RANK)");
  }
  l.master_port = integer_variable(lookup, "MASTER_PORT", 29500, 1, 65535);
  const char* agent = lookup("TORCHELASTIC_USE_AGENT_STORE");
  l.agent_store = agent != nullptr && (std::string(agent) == "True" || std::string(agent) == "1");
  return l;
}

}  // namespace tiller::dist
