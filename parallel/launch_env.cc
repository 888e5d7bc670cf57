#include "parallel/launch_env.h"

#include <cerrno>
#include <climits>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"

namespace weft {

EnvLookup ProcessEnv() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* value = std::getenv(name.c_str());
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  };
}

const char* LauncherName(Launcher launcher) {
  switch (launcher) {
    case Launcher::kSingle:
      return "single";
    case Launcher::kTorchrun:
      return "torchrun";
    case Launcher::kMpirun:
      return "mpirun";
    case Launcher::kSlurm:
      return "slurm";
  }
  return "unknown";
}

absl::StatusOr<int> ParseIntStrict(absl::string_view what, absl::string_view text) {
  std::string s(text);
  if (s.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is empty (expected an integer)"));
  }
  char* end = nullptr;
  errno = 0;
  long value = std::strtol(s.c_str(), &end, 10);
  if (errno != 0 || end == s.c_str() || *end != '\0' || value < INT_MIN || value > INT_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, "=", s, " is not an integer (expected a decimal number)"));
  }
  return static_cast<int>(value);
}

namespace {

// Reads an integer variable; `fallback` when unset (nullopt: required).
absl::StatusOr<int> IntVar(const EnvLookup& env, const std::string& name,
                           std::optional<int> fallback) {
  std::optional<std::string> value = env(name);
  if (!value) {
    if (fallback) return *fallback;
    return absl::InvalidArgumentError(absl::StrCat(name, " is not set (expected an integer)"));
  }
  return ParseIntStrict(name, *value);
}

absl::Status CheckRange(const std::string& name, int value, const std::string& bound_name,
                        int bound) {
  if (value < 0 || value >= bound) {
    return absl::InvalidArgumentError(absl::StrCat(name, "=", value, " is out of range for ",
                                                   bound_name, "=", bound, " (expected 0 <= ", name,
                                                   " < ", bound, ")"));
  }
  return absl::OkStatus();
}

absl::Status ReadMaster(const EnvLookup& env, LaunchEnv& out, bool required) {
  std::optional<std::string> addr = env("MASTER_ADDR");
  std::optional<std::string> port = env("MASTER_PORT");
  if (addr) {
    if (addr->empty()) return absl::InvalidArgumentError("MASTER_ADDR is empty (expected a host)");
    out.master_addr = *addr;
  }
  if (port) {
    ASSIGN_OR_RETURN(out.master_port, ParseIntStrict("MASTER_PORT", *port));
    if (out.master_port < 1 || out.master_port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("MASTER_PORT=", out.master_port, " is not a port (expected 1..65535)"));
    }
  }
  if (required && out.world_size > 1 && (!addr || !port)) {
    return absl::InvalidArgumentError(absl::StrCat(
        !addr ? "MASTER_ADDR" : "MASTER_PORT", " is not set (expected with RANK=", out.rank,
        " WORLD_SIZE=", out.world_size, ": the address of the store that rank 0 hosts)"));
  }
  return absl::OkStatus();
}

absl::Status Validate(LaunchEnv& e, const std::string& rank_name, const std::string& world_name,
                      const std::string& local_rank_name, const std::string& local_world_name) {
  if (e.world_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(world_name, "=", e.world_size, " is not a world size (expected >= 1)"));
  }
  RETURN_IF_ERROR(CheckRange(rank_name, e.rank, world_name, e.world_size));
  if (e.local_world_size < 1 || e.local_world_size > e.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(local_world_name, "=", e.local_world_size, " is inconsistent with ",
                     world_name, "=", e.world_size, " (expected 1..", e.world_size, ")"));
  }
  RETURN_IF_ERROR(CheckRange(local_rank_name, e.local_rank, local_world_name, e.local_world_size));
  if (e.node_rank < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("node rank ", e.node_rank, " is negative (expected >= 0)"));
  }
  return absl::OkStatus();
}

// "2(x3),1" -> tasks on the first node = 2 (the SLURM_TASKS_PER_NODE format).
absl::StatusOr<int> FirstTasksPerNode(absl::string_view spec) {
  size_t end = spec.find_first_of("(,");
  return ParseIntStrict("SLURM_TASKS_PER_NODE", spec.substr(0, end));
}

// Splits on commas that are not inside brackets.
std::vector<std::string> SplitTopLevel(absl::string_view s) {
  std::vector<std::string> parts;
  int depth = 0;
  std::string current;
  for (char c : s) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (c == ',' && depth == 0) {
      parts.push_back(current);
      current.clear();
    } else {
      current += c;
    }
  }
  parts.push_back(current);
  return parts;
}

absl::Status ExpandOne(absl::string_view nodelist, const std::string& item,
                       std::vector<std::string>& out) {
  size_t open = item.find('[');
  if (open == std::string::npos) {
    if (item.find(']') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("SLURM nodelist '", nodelist, "' has an unmatched ']' in '", item, "'"));
    }
    out.push_back(item);
    return absl::OkStatus();
  }
  size_t close = item.find(']', open);
  if (close == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("SLURM nodelist '", nodelist, "' has an unmatched '[' in '", item, "'"));
  }
  std::string prefix = item.substr(0, open);
  std::string body = item.substr(open + 1, close - open - 1);
  std::string rest = item.substr(close + 1);
  for (const std::string& range : SplitTopLevel(body)) {
    size_t dash = range.find('-');
    std::string lo_text = range.substr(0, dash);
    std::string hi_text = dash == std::string::npos ? lo_text : range.substr(dash + 1);
    auto lo = ParseIntStrict("SLURM nodelist range start", lo_text);
    auto hi = ParseIntStrict("SLURM nodelist range end", hi_text);
    if (!lo.ok() || !hi.ok() || *lo < 0 || *hi < *lo) {
      return absl::InvalidArgumentError(absl::StrCat("SLURM nodelist '", nodelist,
                                                     "' has a bad range '", range,
                                                     "' (expected N or N-M with N <= M)"));
    }
    size_t width = lo_text.size();
    for (int i = *lo; i <= *hi; ++i) {
      std::string digits = std::to_string(i);
      if (digits.size() < width) digits.insert(0, width - digits.size(), '0');
      RETURN_IF_ERROR(ExpandOne(nodelist, prefix + digits + rest, out));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ExpandSlurmNodelist(absl::string_view nodelist) {
  std::vector<std::string> hosts;
  for (const std::string& item : SplitTopLevel(nodelist)) {
    if (item.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("SLURM nodelist '", nodelist, "' has an empty entry"));
    }
    RETURN_IF_ERROR(ExpandOne(nodelist, item, hosts));
  }
  return hosts;
}

absl::StatusOr<LaunchEnv> DetectLaunchEnv(const EnvLookup& env) {
  LaunchEnv e;
  if (env("RANK") || env("WORLD_SIZE")) {
    e.launcher = Launcher::kTorchrun;
    ASSIGN_OR_RETURN(e.rank, IntVar(env, "RANK", std::nullopt));
    ASSIGN_OR_RETURN(e.world_size, IntVar(env, "WORLD_SIZE", std::nullopt));
    ASSIGN_OR_RETURN(e.local_rank, IntVar(env, "LOCAL_RANK", e.rank));
    ASSIGN_OR_RETURN(e.local_world_size, IntVar(env, "LOCAL_WORLD_SIZE", e.world_size));
    ASSIGN_OR_RETURN(e.node_rank,
                     IntVar(env, "GROUP_RANK", e.rank / std::max(1, e.local_world_size)));
    RETURN_IF_ERROR(Validate(e, "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"));
    RETURN_IF_ERROR(ReadMaster(env, e, /*required=*/true));
    const std::optional<std::string> agent = env("TORCHELASTIC_USE_AGENT_STORE");
    e.agent_store = agent.has_value() && (*agent == "True" || *agent == "true" || *agent == "1");
    ASSIGN_OR_RETURN(e.restart_count, IntVar(env, "TORCHELASTIC_RESTART_COUNT", 0));
    return e;
  }
  if (env("OMPI_COMM_WORLD_RANK") || env("OMPI_COMM_WORLD_SIZE")) {
    e.launcher = Launcher::kMpirun;
    ASSIGN_OR_RETURN(e.rank, IntVar(env, "OMPI_COMM_WORLD_RANK", std::nullopt));
    ASSIGN_OR_RETURN(e.world_size, IntVar(env, "OMPI_COMM_WORLD_SIZE", std::nullopt));
    ASSIGN_OR_RETURN(e.local_rank, IntVar(env, "OMPI_COMM_WORLD_LOCAL_RANK", e.rank));
    ASSIGN_OR_RETURN(e.local_world_size, IntVar(env, "OMPI_COMM_WORLD_LOCAL_SIZE", e.world_size));
    ASSIGN_OR_RETURN(e.node_rank,
                     IntVar(env, "OMPI_COMM_WORLD_NODE_RANK", e.rank / e.local_world_size));
    RETURN_IF_ERROR(Validate(e, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                             "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"));
    RETURN_IF_ERROR(ReadMaster(env, e, /*required=*/false));
    e.master_known = env("MASTER_ADDR").has_value() || e.world_size == 1;
    return e;
  }
  if (env("SLURM_PROCID") && env("SLURM_NTASKS")) {
    e.launcher = Launcher::kSlurm;
    ASSIGN_OR_RETURN(e.rank, IntVar(env, "SLURM_PROCID", std::nullopt));
    ASSIGN_OR_RETURN(e.world_size, IntVar(env, "SLURM_NTASKS", std::nullopt));
    ASSIGN_OR_RETURN(e.local_rank, IntVar(env, "SLURM_LOCALID", 0));
    if (auto per_node = env("SLURM_NTASKS_PER_NODE")) {
      ASSIGN_OR_RETURN(e.local_world_size, ParseIntStrict("SLURM_NTASKS_PER_NODE", *per_node));
    } else if (auto tasks = env("SLURM_STEP_TASKS_PER_NODE") ? env("SLURM_STEP_TASKS_PER_NODE")
                                                             : env("SLURM_TASKS_PER_NODE")) {
      ASSIGN_OR_RETURN(e.local_world_size, FirstTasksPerNode(*tasks));
    } else {
      e.local_world_size = e.world_size;
    }
    ASSIGN_OR_RETURN(e.node_rank, IntVar(env, "SLURM_NODEID", 0));
    RETURN_IF_ERROR(
        Validate(e, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"));
    std::optional<std::string> nodelist = env("SLURM_STEP_NODELIST");
    if (!nodelist) nodelist = env("SLURM_JOB_NODELIST");
    if (nodelist) {
      ASSIGN_OR_RETURN(std::vector<std::string> hosts, ExpandSlurmNodelist(*nodelist));
      e.master_addr = hosts.front();
    }
    if (auto job = env("SLURM_JOB_ID")) {
      // A port per job, so two jobs sharing a first node do not collide.
      ASSIGN_OR_RETURN(int job_id, ParseIntStrict("SLURM_JOB_ID", *job));
      e.master_port = 20000 + job_id % 20000;
    }
    RETURN_IF_ERROR(ReadMaster(env, e, /*required=*/false));
    if (!nodelist && !env("MASTER_ADDR") && e.world_size > 1) {
      return absl::InvalidArgumentError(
          "SLURM_JOB_NODELIST is not set (expected under srun, or set MASTER_ADDR)");
    }
    return e;
  }
  return e;
}

}  // namespace weft
