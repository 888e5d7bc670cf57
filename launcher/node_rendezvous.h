// NodeRendezvous: the weftrun agents of a multi-node job agreeing, through a
// c10d TCPStore, on the run id, the world and every restart.
//
// torchrun's c10d rendezvous, for fixed node ranks: the agent of node 0 hosts
// a TCPStore on the rendezvous endpoint (--rdzv-endpoint, else
// --master-addr:--master-port); every other agent connects to it. The agents
// check that they agree (--nnodes, --max-restarts, --rdzv-id; a node rank
// claimed twice is an error), publish their --nproc-per-node, and wait until
// every node has arrived (a node missing after the join timeout is named).
// The workers never use this store: per attempt, node 0 picks a free port on
// its host and publishes it; the workers get MASTER_ADDR = the endpoint's host
// (node 0) and that MASTER_PORT, so rank 0 hosts the workers' own store there.
//
//   NodeConfig config;
//   config.nnodes = 2;
//   config.node_rank = 1;
//   config.nproc = 4;
//   config.host = "n0";
//   config.port = 29500;
//   ASSIGN_OR_RETURN(auto nodes, NodeRendezvous::Join(config, interrupted));
//   for (int attempt = 0;; ++attempt) {
//     ASSIGN_OR_RETURN(int master_port, nodes->BeginAttempt(attempt));
//     ... start nodes->rank_offset() + local rank ..., poll nodes->ShouldStop(attempt),
//     ... nodes->ReportFailure(attempt, ...) on the first local failure,
//     ASSIGN_OR_RETURN(AttemptResult result, nodes->FinishAttempt(attempt, local_ok));
//   }
//
// A worker failure on any node stops the workers of every node; they restart
// together (attempt n+1 everywhere, after every node has stopped attempt n).
// Node 0 watches the others' heartbeats; an agent that goes silent, or one
// that is sent a signal, makes every node stop (Abort). Every wait is bounded
// by the join timeout or by the heartbeats. Errors are one line.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace weft {

struct NodeConfig {
  int nnodes = 1;
  int node_rank = 0;
  int nproc = 1;  // this node's workers
  int max_restarts = 0;
  std::string run_id = "none";  // "none" (the default) adopts node 0's
  std::string host = "127.0.0.1";
  int port = 29500;
  /// How long the nodes wait for each other to arrive (and to finish a
  /// restart). A node still missing then is named in the error.
  std::chrono::milliseconds join_timeout = std::chrono::seconds(300);
  /// Node 0 declares an agent dead after this long without a heartbeat.
  std::chrono::milliseconds heartbeat_timeout = std::chrono::seconds(30);
  /// How often ShouldStop() looks at the store.
  std::chrono::milliseconds poll_interval = std::chrono::milliseconds(100);
};

/// The first worker failure of an attempt, as every node sees it.
struct NodeFailure {
  int node = -1;
  std::string summary;  // "rank 3 on node 1 (local rank 1, pid 42) failed first with exit code 3"
  std::string tail;     // the failing rank's last stderr lines, one per line
};

struct AttemptResult {
  bool succeeded = false;  // every node's workers exited 0
  NodeFailure failure;     // when not succeeded
};

class NodeRendezvous {
 public:
  /// Connects (node 0: hosts the store), checks agreement and waits for every
  /// node. `interrupted` is polled while waiting: a non-empty reason (e.g.
  /// "received signal 15 (Terminated)") ends every wait with CancelledError
  /// and tells every node to stop (Abort).
  static absl::StatusOr<std::unique_ptr<NodeRendezvous>> Join(
      const NodeConfig& config, const std::function<std::string()>& interrupted);
  ~NodeRendezvous();

  const std::string& run_id() const;
  const std::vector<int>& nprocs() const;  // per node
  int rank_offset() const;                 // global rank of this node's local rank 0
  int world_size() const;                  // sum of nprocs()

  /// Waits until every node has stopped attempt-1, then returns the workers'
  /// MASTER_PORT for `attempt` (node 0 picks a free one and publishes it).
  absl::StatusOr<int> BeginAttempt(int attempt);
  /// True when another node's failure asks this node to stop its workers
  /// (rate-limited to poll_interval; also sends heartbeats). An error means
  /// the job is over: an abort from another node, or the store is gone.
  absl::StatusOr<bool> ShouldStop(int attempt);
  /// Publishes this node's first worker failure (the first one published by
  /// any node wins).
  absl::Status ReportFailure(int attempt, const std::string& summary, const std::string& tail);
  /// After this node's workers have ended: `local_ok` when all exited 0 and
  /// none was stopped. Waits for the verdict of every node.
  absl::StatusOr<AttemptResult> FinishAttempt(int attempt, bool local_ok);
  /// Tells every node to stop and exit: "node <rank> <reason>; every node
  /// stops its workers" (e.g. this agent got a signal).
  void Abort(const std::string& reason);
  /// Leaves the job; node 0 keeps the store up (a few seconds at most) until
  /// the other nodes have left, so they can read the outcome.
  void Leave();

 private:
  struct Impl;
  explicit NodeRendezvous(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Parses torchrun's --rdzv-conf (`key=value,...`): join_timeout or timeout
/// (seconds), heartbeat_timeout (seconds); torchrun's other keys are accepted
/// and ignored. Errors are one line.
absl::Status ParseRdzvConf(const std::string& conf, NodeConfig& config);

}  // namespace weft
