// weftrun: start and supervise the workers of one node, torchrun-style.
//
//   weftrun --nproc-per-node 4 ./train --config c.yaml
//
// Each worker gets torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE,
// LOCAL_WORLD_SIZE, GROUP_RANK, GROUP_WORLD_SIZE, ROLE_RANK, ROLE_WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT, TORCHELASTIC_RESTART_COUNT,
// TORCHELASTIC_MAX_RESTARTS, TORCHELASTIC_RUN_ID, and OMP_NUM_THREADS=1 when
// several workers share the node and it is unset), so a program written for
// torchrun runs unchanged. Output lines are prefixed `[rank3]:`. When a worker
// fails, the others are stopped (SIGTERM, a grace period, SIGKILL) and the
// whole group restarts up to --max-restarts times; weftrun then exits non-zero
// with a summary naming the first failing rank, its exit code or signal and
// the tail of its stderr. A worker that stops making progress (its heartbeat,
// see launcher/heartbeat.h, is silent or its step and phase stay the same for
// --stuck-timeout) is named with where every rank is, and the job stopped
// like any failure. Signals sent to weftrun reach the workers; no worker, and
// nothing a worker started in its process group, outlives weftrun, even when
// weftrun is killed with SIGKILL. --log-dir keeps per-rank log files; --local-ranks-filter
// limits the console to some local ranks.
//
// Several nodes: one weftrun per node, e.g. on node i of 2
//
//   weftrun --nnodes 2 --node-rank i --nproc-per-node 4 --rdzv-endpoint n0:29500 ./train
//
// The agents rendezvous through a c10d TCPStore that node 0's weftrun hosts on
// the endpoint (see launcher/node_rendezvous.h): they agree on the run id and
// the world (global ranks follow node rank, each node may have its own
// --nproc-per-node), and a failure on any node restarts the workers of every
// node. The workers' own store is another port on node 0, picked per attempt
// and passed as MASTER_PORT (MASTER_ADDR is the endpoint's host). A node that
// has not arrived after the rendezvous timeout (--rdzv-timeout, --rdzv-conf
// join_timeout=…, or WEFTRUN_RDZV_TIMEOUT; default 300 s) is named in the error.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace weft {

struct WeftrunOptions {
  int nproc_per_node = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string run_id = "none";
  int max_restarts = 0;
  double monitor_interval = 0.1;  // seconds
  double grace_period = 5.0;      // seconds between SIGTERM and SIGKILL
  /// Also write each worker's output to
  /// <log_dir>/<run_id>/attempt_<n>/<rank>/{stdout,stderr}.log.
  std::string log_dir;
  /// Local ranks whose output reaches the console (empty: all).
  std::vector<int> local_ranks_filter;
  /// torchrun's --redirects: per local rank, streams sent only to the log
  /// files (1 stdout, 2 stderr, 3 both); needs --log-dir. --tee (log files
  /// and console) is what --log-dir does by default.
  std::vector<int> redirects;  // indexed by local rank; empty: none
  /// Multi-node: how long the agents wait for each other, and after how long
  /// without a heartbeat node 0 declares an agent dead.
  std::chrono::milliseconds rdzv_timeout = std::chrono::seconds(300);
  std::chrono::milliseconds heartbeat_timeout = std::chrono::seconds(30);
  /// A worker whose heartbeat (launcher/heartbeat.h) stops, or whose step
  /// and phase do not change, for this long is named as stuck and the job
  /// stopped like any failure; zero: not watched.
  std::chrono::milliseconds stuck_timeout = std::chrono::seconds(1800);
  std::vector<std::string> program;  // PROGRAM ARGS...
};

/// What weftrun's command line asks for: print `help` (when non-empty) and
/// exit 0, or run `options`.
struct WeftrunArgs {
  std::string help;
  WeftrunOptions options;
};

/// Parses weftrun's command line (launcher/weftrun_args.cc; argv[0] excluded
/// from semantics). Errors are one line, e.g.
/// `weftrun: --node-rank=2 is out of range for --nnodes=2 (expected 0..1)`.
absl::StatusOr<WeftrunArgs> ParseWeftrunArgs(int argc, char** argv);

/// Runs the job; returns weftrun's exit code.
int RunWeftrun(const WeftrunOptions& options);

}  // namespace weft
