// weftrun's command line: torchrun's flags, parsed and validated in named
// steps. Every error is one line naming the flag, the value and what was
// expected.
#include <dirent.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/net.h"
#include "base/status.h"
#include "launcher/node_rendezvous.h"
#include "launcher/weftrun.h"

namespace weft {
namespace {

constexpr char kDescription[] =
    "weftrun: start a distributed weft (or any torchrun-style) program.\n"
    "Each worker gets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT\n"
    "and the rest of torchrun's environment.\n"
    "Several nodes: run one weftrun per node, e.g.\n"
    "  weftrun --nnodes 2 --node-rank 0|1 --nproc-per-node 4 --rdzv-endpoint node0:29500 PROG\n"
    "The agents rendezvous through a c10d TCPStore that node 0 hosts on the endpoint; the\n"
    "workers get MASTER_ADDR=node0 and a MASTER_PORT that node 0 picks for each attempt.";

// Flags kept as text until validated (the rest land in WeftrunOptions).
struct RawFlags {
  std::string nproc = "1";
  std::string nnodes = "1";
  bool standalone = false;
  std::string rdzv_endpoint;
  std::string rdzv_backend = "static";
  std::string rdzv_conf;
  double rdzv_timeout = 0;
  bool rdzv_timeout_given = false;
  std::string redirects;
  std::string tee;
  std::string local_ranks_filter;
  bool no_python = false;
  double stuck_timeout = 1800;
};

absl::Status Invalid(absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("weftrun: ", message));
}

int CountGpus() {
  int count = 0;
  if (DIR* dir = ::opendir("/dev")) {
    while (dirent* entry = ::readdir(dir)) {
      std::string name = entry->d_name;
      if (name.rfind("nvidia", 0) == 0 && name.size() > 6 &&
          name.find_first_not_of("0123456789", 6) == std::string::npos) {
        ++count;
      }
    }
    ::closedir(dir);
  }
  return count;
}

void AddFlags(CLI::App& app, WeftrunOptions& o, RawFlags& raw) {
  app.add_option("--nproc-per-node,--nproc_per_node", raw.nproc,
                 "Workers on this node: a number, or 'auto' (one per GPU, else one per CPU).");
  app.add_option("--nnodes", raw.nnodes,
                 "Number of nodes: N (or N:N; elastic ranges are not supported).");
  app.add_option("--node-rank,--node_rank", o.node_rank, "Rank of this node (0..nnodes-1).");
  app.add_option("--master-addr,--master_addr", o.master_addr,
                 "Address of node 0: where rank 0 hosts the store (one node), or where node 0's "
                 "weftrun hosts the rendezvous store (several nodes).");
  app.add_option("--master-port,--master_port", o.master_port, "Port of that store on node 0.");
  app.add_option("--rdzv-endpoint,--rdzv_endpoint", raw.rdzv_endpoint,
                 "host:port of node 0's store (instead of --master-addr/--master-port).");
  app.add_option("--rdzv-backend,--rdzv_backend", raw.rdzv_backend,
                 "Rendezvous backend: c10d or static (both: a c10d TCPStore on node 0).");
  app.add_option("--rdzv-id,--rdzv_id,--run-id", o.run_id,
                 "Job id, set as TORCHELASTIC_RUN_ID; nodes left at the default take node 0's.");
  app.add_option("--rdzv-conf,--rdzv_conf", raw.rdzv_conf,
                 "Rendezvous settings key=value,...: join_timeout (or timeout) seconds to wait for "
                 "every node, heartbeat_timeout seconds before a silent node is declared dead "
                 "(default 30).");
  app.add_option("--rdzv-timeout,--rdzv_timeout", raw.rdzv_timeout,
                 "Seconds to wait for every node to arrive (default: WEFTRUN_RDZV_TIMEOUT, else "
                 "300); a missing node is named in the error.");
  app.add_flag("--standalone", raw.standalone,
               "Single-node job: the store on localhost on a free port.");
  app.add_option("--max-restarts,--max_restarts", o.max_restarts,
                 "Restart the workers this many times after a failure.");
  app.add_option("--monitor-interval,--monitor_interval", o.monitor_interval,
                 "Seconds between checks of the workers.");
  app.add_option("--stuck-timeout,--stuck_timeout", raw.stuck_timeout,
                 "Seconds without progress (a silent heartbeat, or the same step and phase) "
                 "after which a worker is named as stuck and the job stopped; 0: never.")
      ->capture_default_str();
  app.add_option("--log-dir,--log_dir", o.log_dir,
                 "Also write <log-dir>/<run-id>/attempt_<n>/<rank>/{stdout,stderr}.log.");
  app.add_option("--redirects,-r", raw.redirects,
                 "Send streams only to the log files: 1 stdout, 2 stderr, 3 both; one value for "
                 "all local ranks or per rank as 0:3,1:2 (needs --log-dir).");
  app.add_option("--tee,-t", raw.tee,
                 "Streams to the log files and the console (what --log-dir does by default); "
                 "same format as --redirects.");
  app.add_flag("--no-python,--no_python", raw.no_python,
               "Accepted for torchrun's command lines: weftrun always runs PROGRAM itself.");
  app.add_option("--local-ranks-filter,--local_ranks_filter", raw.local_ranks_filter,
                 "Comma-separated local ranks whose output reaches the console (default: all).");
  app.prefix_command();
  // "Usage: weftrun [OPTIONS] PROGRAM [ARGS...]", as torchrun's usage line.
  app.get_formatter()->label("OPTIONS", "OPTIONS] PROGRAM [ARGS...");
}

absl::StatusOr<std::vector<int>> ParseLocalRanksFilter(const std::string& filter) {
  std::vector<int> ranks;
  if (filter.empty()) return ranks;
  for (absl::string_view piece : absl::StrSplit(filter, ',')) {
    int r = -1;
    if (!absl::SimpleAtoi(piece, &r) || r < 0) {
      return Invalid(absl::StrCat("--local-ranks-filter=", filter, " has '", piece,
                                  "' (expected comma-separated local ranks, e.g. 0,1)"));
    }
    ranks.push_back(r);
  }
  return ranks;
}

absl::Status CheckProgram(const std::vector<std::string>& program) {
  if (program.empty()) {
    return Invalid("no program given (expected: weftrun [OPTIONS] PROGRAM [ARGS...])");
  }
  if (!program[0].empty() && program[0][0] == '-') {
    return Invalid(absl::StrCat("unknown flag '", program[0], "' (see weftrun --help)"));
  }
  return absl::OkStatus();
}

// "3" or "0:3,1:2" -> a mask per local rank (--redirects, --tee).
absl::StatusOr<std::vector<int>> ParseStreams(const std::string& flag, const std::string& spec) {
  std::vector<int> masks;
  if (spec.empty()) return masks;
  int all = -1;
  std::vector<std::pair<int, int>> pairs;
  for (absl::string_view piece : absl::StrSplit(spec, ',')) {
    std::vector<absl::string_view> kv = absl::StrSplit(piece, ':');
    int rank = -1, mask = -1;
    if (kv.size() == 1 && absl::SimpleAtoi(kv[0], &mask) && mask >= 0 && mask <= 3) {
      all = mask;
    } else if (kv.size() == 2 && absl::SimpleAtoi(kv[0], &rank) && rank >= 0 &&
               absl::SimpleAtoi(kv[1], &mask) && mask >= 0 && mask <= 3) {
      pairs.emplace_back(rank, mask);
    } else {
      return Invalid(absl::StrCat(flag, "=", spec, " has '", piece,
                                  "' (expected 0-3, or local_rank:0-3 pairs such as 0:3,1:2)"));
    }
  }
  masks.assign(1024, all < 0 ? 0 : all);
  for (auto [rank, mask] : pairs) {
    if (rank < 1024) masks[rank] = mask;
  }
  return masks;
}

// At most this many workers per node: 8 per CPU core, and never fewer
// than 64 (a GPU node runs one worker per GPU; more is a typo).
int MaxWorkersPerNode() {
  return std::max(64, 8 * static_cast<int>(std::thread::hardware_concurrency()));
}

absl::StatusOr<int> ParseNprocPerNode(const std::string& nproc) {
  if (nproc == "auto") {
    int gpus = CountGpus();
    return gpus > 0 ? gpus : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  }
  char* end = nullptr;
  errno = 0;
  long n = std::strtol(nproc.c_str(), &end, 10);
  if (nproc.empty() || *end != '\0' || n < 1 || errno == ERANGE) {
    return Invalid(absl::StrCat("--nproc-per-node=", nproc,
                                " is not a worker count (expected N >= 1 or auto)"));
  }
  if (n > MaxWorkersPerNode()) {
    return Invalid(absl::StrCat("--nproc-per-node=", nproc,
                                " is more workers than this node runs (", "expected at most ",
                                MaxWorkersPerNode(), ": 8 per CPU core, ", "at least 64)"));
  }
  return static_cast<int>(n);
}

// Every local rank the filter names exists.
absl::Status CheckLocalRanksFilter(const std::vector<int>& ranks, int nproc_per_node) {
  for (int r : ranks) {
    if (r >= nproc_per_node) {
      return Invalid(absl::StrCat(
          "--local-ranks-filter names local rank ", r, ", but this node runs ", nproc_per_node,
          " worker", nproc_per_node == 1 ? "" : "s", " (expected 0..", nproc_per_node - 1, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckInterval(const char* flag, double seconds) {
  if (!std::isfinite(seconds) || seconds <= 0) {
    return Invalid(absl::StrCat(flag, "=", seconds, " is not an interval (expected seconds > 0)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> ParseNnodes(const std::string& nnodes) {
  std::vector<std::string> range = absl::StrSplit(nnodes, ':');
  int lo = 0, hi = 0;
  bool ok = range.size() <= 2 && absl::SimpleAtoi(range[0], &lo) &&
            (range.size() == 1 ? (hi = lo, true) : absl::SimpleAtoi(range[1], &hi));
  if (!ok || lo < 1) {
    return Invalid(absl::StrCat("--nnodes=", nnodes, " is not a node count (expected >= 1)"));
  }
  if (lo != hi) {
    return Invalid(absl::StrCat("--nnodes=", nnodes,
                                " is an elastic range (expected a fixed node count N, or N:N)"));
  }
  return lo;
}

// The rendezvous: backend, timeouts (environment, --rdzv-conf, --rdzv-timeout
// in that order of precedence), and where node 0's store is.
absl::Status ParseRendezvous(const RawFlags& raw, WeftrunOptions& o) {
  if (raw.rdzv_backend != "static" && raw.rdzv_backend != "c10d") {
    return Invalid(absl::StrCat("--rdzv-backend=", raw.rdzv_backend,
                                " is not supported (expected c10d or static)"));
  }
  if (raw.standalone && o.nnodes > 1) {
    return Invalid(absl::StrCat("--standalone is a single-node job but --nnodes=", o.nnodes,
                                " (expected --nnodes 1, or --rdzv-endpoint for several nodes)"));
  }
  if (const char* env = std::getenv("WEFTRUN_RDZV_TIMEOUT")) {
    double seconds = 0;
    if (!absl::SimpleAtod(env, &seconds) || !(seconds > 0)) {
      return Invalid(
          absl::StrCat("WEFTRUN_RDZV_TIMEOUT=", env, " is not a timeout (expected seconds > 0)"));
    }
    o.rdzv_timeout = std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  }
  NodeConfig conf;
  conf.join_timeout = o.rdzv_timeout;
  conf.heartbeat_timeout = o.heartbeat_timeout;
  RETURN_IF_ERROR(ParseRdzvConf(raw.rdzv_conf, conf));
  o.rdzv_timeout = conf.join_timeout;
  o.heartbeat_timeout = conf.heartbeat_timeout;
  if (raw.rdzv_timeout_given) {
    if (!(raw.rdzv_timeout > 0)) {
      return Invalid(absl::StrCat("--rdzv-timeout=", raw.rdzv_timeout,
                                  " is not a timeout (expected seconds > 0)"));
    }
    o.rdzv_timeout = std::chrono::milliseconds(static_cast<int64_t>(raw.rdzv_timeout * 1000));
  }
  if (!raw.rdzv_endpoint.empty()) {
    size_t colon = raw.rdzv_endpoint.rfind(':');
    if (colon == std::string::npos) {
      return Invalid(
          absl::StrCat("--rdzv-endpoint=", raw.rdzv_endpoint, " has no port (expected host:port)"));
    }
    o.master_addr = raw.rdzv_endpoint.substr(0, colon);
    o.master_port = std::atoi(raw.rdzv_endpoint.c_str() + colon + 1);
  }
  if (raw.standalone) {
    o.master_addr = "127.0.0.1";
    o.master_port = PickFreePort();
    if (o.run_id == "none") o.run_id = absl::StrCat("standalone-", ::getpid());
  }
  if (o.master_port < 1 || o.master_port > 65535) {
    return Invalid(
        absl::StrCat("--master-port=", o.master_port, " is not a port (expected 1..65535)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<WeftrunArgs> ParseWeftrunArgs(int argc, char** argv) {
  WeftrunArgs args;
  WeftrunOptions& o = args.options;
  RawFlags raw;
  CLI::App app{kDescription, "weftrun"};
  AddFlags(app, o, raw);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    args.help = app.help();
    return args;
  } catch (const CLI::ParseError& e) {
    return Invalid(e.what());
  }
  raw.rdzv_timeout_given = app.count("--rdzv-timeout") > 0;
  o.program = app.remaining();
  ASSIGN_OR_RETURN(o.local_ranks_filter, ParseLocalRanksFilter(raw.local_ranks_filter));
  RETURN_IF_ERROR(CheckProgram(o.program));
  ASSIGN_OR_RETURN(o.redirects, ParseStreams("--redirects", raw.redirects));
  RETURN_IF_ERROR(ParseStreams("--tee", raw.tee).status());
  if (!raw.redirects.empty() && o.log_dir.empty()) {
    return Invalid("--redirects needs --log-dir (expected a directory for the log files)");
  }
  ASSIGN_OR_RETURN(o.nproc_per_node, ParseNprocPerNode(raw.nproc));
  RETURN_IF_ERROR(CheckLocalRanksFilter(o.local_ranks_filter, o.nproc_per_node));
  RETURN_IF_ERROR(CheckInterval("--monitor-interval", o.monitor_interval));
  if (!std::isfinite(raw.stuck_timeout) || raw.stuck_timeout < 0) {
    return Invalid(absl::StrCat("--stuck-timeout=", raw.stuck_timeout,
                                " is not a timeout (expected seconds >= 0; 0 turns it off)"));
  }
  o.stuck_timeout = std::chrono::milliseconds(static_cast<int64_t>(raw.stuck_timeout * 1000));
  ASSIGN_OR_RETURN(o.nnodes, ParseNnodes(raw.nnodes));
  if (o.node_rank < 0 || o.node_rank >= o.nnodes) {
    return Invalid(absl::StrCat("--node-rank=", o.node_rank, " is out of range for --nnodes=",
                                o.nnodes, " (expected 0..", o.nnodes - 1, ")"));
  }
  RETURN_IF_ERROR(ParseRendezvous(raw, o));
  if (o.max_restarts < 0) {
    return Invalid(absl::StrCat("--max-restarts=", o.max_restarts, " is negative (expected >= 0)"));
  }
  return args;
}

}  // namespace weft
