#include "launcher/node_rendezvous.h"

#include <unistd.h>

#include <c10/util/Logging.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/net.h"
#include "base/status.h"

namespace weft {
namespace {

using Clock = std::chrono::steady_clock;

constexpr auto kLeaveWait = std::chrono::seconds(5);

std::string Key(absl::string_view name) { return absl::StrCat("weftrun/", name); }
std::string NodeKey(absl::string_view name, int node) {
  return absl::StrCat("weftrun/", name, "/", node);
}
std::string AttemptKey(int attempt, absl::string_view name) {
  return absl::StrCat("weftrun/attempt/", attempt, "/", name);
}
std::string AttemptNodeKey(int attempt, absl::string_view name, int node) {
  return absl::StrCat("weftrun/attempt/", attempt, "/", name, "/", node);
}

std::vector<uint8_t> Bytes(const std::string& s) {
  return std::vector<uint8_t>(s.begin(), s.end());
}
std::string Text(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }

std::string Seconds(std::chrono::milliseconds ms) {
  return absl::StrCat(static_cast<double>(ms.count()) / 1000.0, "s");
}

std::string NodeList(const std::vector<int>& nodes) {
  return absl::StrCat(nodes.size() == 1 ? "node " : "nodes ", absl::StrJoin(nodes, ", "));
}

// Binds the store's port ourselves so that "in use" is a clear line, and
// hands the listening socket to the TCPStore (no window for another process).
absl::StatusOr<int> ListenOn(int port) {
  Listener l = ListenTcp(port);
  if (l.error == EADDRINUSE) {
    return absl::UnavailableError(
        absl::StrCat("node 0 cannot host the rendezvous store: port ", port,
                     " is already in use on this host (expected a free port in --rdzv-endpoint or "
                     "--master-port)"));
  }
  if (l.error != 0) {
    return absl::UnavailableError(absl::StrCat("node 0 cannot host the rendezvous store on port ",
                                               port, ": ", std::strerror(l.error)));
  }
  return l.fd.release();
}

}  // namespace

struct NodeRendezvous::Impl {
  NodeConfig config;
  std::function<std::string()> interrupted;
  std::string where;  // host:port
  c10::intrusive_ptr<c10d::TCPStore> store;
  std::vector<int> nprocs;
  int rank_offset = 0;
  int world_size = 0;
  bool watching = false;  // node 0: heartbeats of the others are checked
  Clock::time_point last_beat{};
  Clock::time_point last_poll{};
  std::vector<int64_t> beats;
  std::vector<Clock::time_point> beat_changed;
  bool left = false;

  bool Has(const std::string& key) { return store->check({key}); }
  void Set(const std::string& key, const std::string& value) { store->set(key, Bytes(value)); }
  std::string Get(const std::string& key) { return Text(store->get(key)); }

  absl::Status StoreLost(const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(
        "node ", config.node_rank, " lost the rendezvous store at ", where,
        " (node 0's weftrun hosts it; expected it to stay up): ", FirstLine(e.what())));
  }

  // The first abort published wins; returns the message that did.
  std::string PublishAbort(const std::string& why) {
    return Text(store->compareSet(Key("abort"), {}, Bytes(why)));
  }

  absl::Status CheckAbort() {
    if (!Has(Key("abort"))) return absl::OkStatus();
    return absl::AbortedError(Get(Key("abort")));
  }

  // Sends this node's heartbeat; node 0 also checks everybody else's.
  absl::Status Heartbeat() {
    const Clock::time_point now = Clock::now();
    auto period =
        std::min<std::chrono::milliseconds>(std::chrono::seconds(1), config.heartbeat_timeout / 4);
    if (now - last_beat < period) return absl::OkStatus();
    last_beat = now;
    if (config.node_rank != 0) {
      store->add(NodeKey("alive", config.node_rank), 1);
      return absl::OkStatus();
    }
    if (!watching) return absl::OkStatus();
    for (int j = 1; j < config.nnodes; ++j) {
      if (Has(NodeKey("left", j))) continue;
      int64_t beat = store->add(NodeKey("alive", j), 0);
      if (beat != beats[j]) {
        beats[j] = beat;
        beat_changed[j] = now;
      } else if (now - beat_changed[j] > config.heartbeat_timeout) {
        std::string why = PublishAbort(absl::StrCat(
            "node ", j, " stopped responding (no heartbeat for ", Seconds(config.heartbeat_timeout),
            "; expected its weftrun to keep running); every node stops its workers"));
        return absl::AbortedError(why);
      }
    }
    return absl::OkStatus();
  }

  void StartWatching() {
    watching = true;
    beats.assign(config.nnodes, -1);
    beat_changed.assign(config.nnodes, Clock::now());
  }

  // Polls until done() holds. Errors: an abort from any node (its message),
  // a signal to this agent (Cancelled), the deadline (DeadlineExceeded with no
  // message: the caller names what was missing). Store errors throw.
  absl::Status PollUntil(const std::function<bool()>& done, Clock::time_point deadline) {
    auto sleep = std::chrono::milliseconds(1);
    while (true) {
      if (done()) return absl::OkStatus();
      RETURN_IF_ERROR(CheckAbort());
      RETURN_IF_ERROR(CheckInterrupted());
      RETURN_IF_ERROR(Heartbeat());
      if (Clock::now() >= deadline) return absl::DeadlineExceededError("");
      std::this_thread::sleep_for(sleep);
      sleep = std::min(sleep * 2, std::chrono::milliseconds(50));
    }
  }

  std::string AbortMessage(const std::string& reason) {
    return absl::StrCat("node ", config.node_rank, " ", reason, "; every node stops its workers");
  }

  // A signal to this agent: every node stops.
  absl::Status CheckInterrupted() {
    std::string why = interrupted ? interrupted() : "";
    if (why.empty()) return absl::OkStatus();
    PublishAbort(AbortMessage(why));
    return absl::CancelledError(why);
  }

  // Publishes a join error so every node stops waiting and reports it.
  absl::Status FailJoin(const std::string& why) {
    std::string published = PublishAbort(why);
    return absl::AbortedError(published);
  }

  absl::Status Connect(Clock::time_point deadline) {
    if (config.node_rank == 0) {
      ASSIGN_OR_RETURN(int fd, ListenOn(config.port));
      c10d::TCPStoreOptions options;
      options.port = static_cast<uint16_t>(config.port);
      options.isServer = true;
      options.waitWorkers = false;
      options.timeout = config.heartbeat_timeout;
      options.masterListenFd = fd;
      try {
        // Node 0 talks to its own store over loopback (it listens on every
        // interface).
        store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", options);
      } catch (const std::exception& e) {
        return absl::UnavailableError(
            absl::StrCat("node 0 cannot host the rendezvous store on port ", config.port, ": ",
                         FirstLine(e.what())));
      }
      return absl::OkStatus();
    }
    while (true) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      c10d::TCPStoreOptions options;
      options.port = static_cast<uint16_t>(config.port);
      options.isServer = false;
      options.waitWorkers = false;
      options.timeout = std::clamp<std::chrono::milliseconds>(left, std::chrono::milliseconds(100),
                                                              std::chrono::seconds(2));
      try {
        store = c10::make_intrusive<c10d::TCPStore>(config.host, options);
        store->setTimeout(config.heartbeat_timeout);
        return absl::OkStatus();
      } catch (const std::exception&) {
        // Node 0 is not up yet: try again until the deadline.
      }
      if (std::string why = interrupted ? interrupted() : ""; !why.empty()) {
        return absl::CancelledError(why);
      }
      if (Clock::now() >= deadline) {
        return absl::DeadlineExceededError(absl::StrCat(
            "node ", config.node_rank, " could not reach the rendezvous store at ", where,
            " within ", Seconds(config.join_timeout),
            ": node 0 never arrived (node 0's weftrun hosts the store; expected it to run with "
            "the same --rdzv-endpoint)"));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }

  absl::Status Join() {
    const Clock::time_point deadline = Clock::now() + config.join_timeout;
    RETURN_IF_ERROR(Connect(deadline));
    const int me = config.node_rank;
    if (me == 0) {
      Set(Key("nnodes"), std::to_string(config.nnodes));
      Set(Key("max_restarts"), std::to_string(config.max_restarts));
      Set(Key("run_id"), config.run_id);
      Set(Key("config"), "1");
    }
    if (store->add(NodeKey("claim", me), 1) > 1) {
      return FailJoin(absl::StrCat("node rank ", me,
                                   " was claimed by two weftrun agents (expected each --node-rank "
                                   "in 0..",
                                   config.nnodes - 1, " exactly once)"));
    }
    if (me != 0) {
      absl::Status ready = PollUntil([&] { return Has(Key("config")); }, deadline);
      if (absl::IsDeadlineExceeded(ready)) {
        ready = absl::DeadlineExceededError(absl::StrCat(
            "node ", me, " reached the rendezvous store at ", where,
            " but node 0 never published the job within ", Seconds(config.join_timeout)));
      }
      RETURN_IF_ERROR(ready);
      auto check = [&](const char* flag, const std::string& mine,
                       const std::string& theirs) -> absl::Status {
        if (mine == theirs) return absl::OkStatus();
        return FailJoin(absl::StrCat("node ", me, " has ", flag, "=", mine, " but node 0 has ",
                                     flag, "=", theirs, " (expected every node to agree)"));
      };
      RETURN_IF_ERROR(check("--nnodes", std::to_string(config.nnodes), Get(Key("nnodes"))));
      RETURN_IF_ERROR(
          check("--max-restarts", std::to_string(config.max_restarts), Get(Key("max_restarts"))));
      std::string run_id = Get(Key("run_id"));
      if (config.run_id != "none") RETURN_IF_ERROR(check("--rdzv-id", config.run_id, run_id));
      config.run_id = run_id;
    }
    Set(NodeKey("nproc", me), std::to_string(config.nproc));
    std::vector<std::string> keys;
    for (int j = 0; j < config.nnodes; ++j) keys.push_back(NodeKey("nproc", j));
    absl::Status all = PollUntil([&] { return store->check(keys); }, deadline);
    if (absl::IsDeadlineExceeded(all)) {
      std::vector<int> missing;
      for (int j = 0; j < config.nnodes; ++j) {
        if (!Has(keys[j])) missing.push_back(j);
      }
      return FailJoin(absl::StrCat(
          "rendezvous of ", config.nnodes, " nodes at ", where, " timed out after ",
          Seconds(config.join_timeout), ": ", missing.size(), " of ", config.nnodes,
          " nodes never arrived: ", NodeList(missing),
          " (expected a weftrun on each node with the same --nnodes and --rdzv-endpoint)"));
    }
    RETURN_IF_ERROR(all);
    nprocs.assign(config.nnodes, 0);
    for (int j = 0; j < config.nnodes; ++j) {
      std::string value = Get(keys[j]);
      if (!absl::SimpleAtoi(value, &nprocs[j])) {
        return absl::InternalError(absl::StrCat("node ", j, " published --nproc-per-node='", value,
                                                "' (expected a number)"));
      }
      if (j < me) rank_offset += nprocs[j];
      world_size += nprocs[j];
    }
    if (me == 0) StartWatching();
    return absl::OkStatus();
  }
};

NodeRendezvous::NodeRendezvous(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
NodeRendezvous::~NodeRendezvous() = default;

absl::StatusOr<std::unique_ptr<NodeRendezvous>> NodeRendezvous::Join(
    const NodeConfig& config, const std::function<std::string()>& interrupted) {
  // c10d logs every failed connection attempt (at ERROR, with a stack trace);
  // weftrun reports one line. TORCH_CPP_LOG_LEVEL still wins.
  if (!std::getenv("TORCH_CPP_LOG_LEVEL")) FLAGS_caffe2_log_level = 3;  // FATAL only
  auto impl = std::make_unique<Impl>();
  impl->config = config;
  impl->interrupted = interrupted;
  impl->where = absl::StrCat(config.host, ":", config.port);
  std::unique_ptr<NodeRendezvous> nodes(new NodeRendezvous(std::move(impl)));
  absl::Status joined;
  try {
    joined = nodes->impl_->Join();
  } catch (const std::exception& e) {
    joined = nodes->impl_->StoreLost(e);
  }
  if (!joined.ok()) {
    if (nodes->impl_->store) nodes->Leave();
    return joined;
  }
  return nodes;
}

const std::string& NodeRendezvous::run_id() const { return impl_->config.run_id; }
const std::vector<int>& NodeRendezvous::nprocs() const { return impl_->nprocs; }
int NodeRendezvous::rank_offset() const { return impl_->rank_offset; }
int NodeRendezvous::world_size() const { return impl_->world_size; }

absl::StatusOr<int> NodeRendezvous::BeginAttempt(int attempt) {
  Impl& m = *impl_;
  try {
    if (m.config.node_rank == 0) {
      if (attempt > 0) {
        std::vector<std::string> keys;
        for (int j = 0; j < m.config.nnodes; ++j) {
          keys.push_back(AttemptNodeKey(attempt - 1, "stopped", j));
        }
        absl::Status stopped =
            m.PollUntil([&] { return m.store->check(keys); }, Clock::now() + m.config.join_timeout);
        if (absl::IsDeadlineExceeded(stopped)) {
          std::vector<int> late;
          for (int j = 0; j < m.config.nnodes; ++j) {
            if (!m.Has(keys[j])) late.push_back(j);
          }
          stopped = absl::AbortedError(m.PublishAbort(absl::StrCat(
              "restart ", attempt, " timed out after ", Seconds(m.config.join_timeout), ": ",
              NodeList(late), " did not stop the workers of attempt ", attempt - 1,
              " (expected every node to stop them within the grace period)")));
        }
        RETURN_IF_ERROR(stopped);
      }
      int port = PickFreePort();
      if (port == 0) {
        return absl::AbortedError(m.PublishAbort(
            "node 0 found no free port for the workers' store (expected a free TCP port)"));
      }
      m.Set(AttemptKey(attempt, "port"), std::to_string(port));
      return port;
    }
    const std::string key = AttemptKey(attempt, "port");
    // Node 0 reports its own timeout first (naming the late nodes).
    absl::Status started =
        m.PollUntil([&] { return m.Has(key); },
                    Clock::now() + m.config.join_timeout + std::chrono::seconds(10));
    if (absl::IsDeadlineExceeded(started)) {
      started = absl::DeadlineExceededError(absl::StrCat(
          "node ", m.config.node_rank, " waited ", Seconds(m.config.join_timeout),
          " for node 0 to start attempt ", attempt, " (expected node 0 to publish it)"));
    }
    RETURN_IF_ERROR(started);
    int port = 0;
    std::string value = m.Get(key);
    if (!absl::SimpleAtoi(value, &port)) {
      return absl::InternalError(
          absl::StrCat("node 0 published MASTER_PORT='", value, "' (expected a port)"));
    }
    return port;
  } catch (const std::exception& e) {
    return m.StoreLost(e);
  }
}

absl::StatusOr<bool> NodeRendezvous::ShouldStop(int attempt) {
  Impl& m = *impl_;
  const Clock::time_point now = Clock::now();
  if (now - m.last_poll < m.config.poll_interval) return false;
  m.last_poll = now;
  try {
    RETURN_IF_ERROR(m.Heartbeat());
    RETURN_IF_ERROR(m.CheckAbort());
    return m.Has(AttemptKey(attempt, "failure"));
  } catch (const std::exception& e) {
    return m.StoreLost(e);
  }
}

absl::Status NodeRendezvous::ReportFailure(int attempt, const std::string& summary,
                                           const std::string& tail) {
  Impl& m = *impl_;
  try {
    m.Set(AttemptNodeKey(attempt, "tail", m.config.node_rank), tail);
    m.store->compareSet(AttemptKey(attempt, "failure"), {},
                        Bytes(absl::StrCat(m.config.node_rank, "\n", summary)));
  } catch (const std::exception& e) {
    return m.StoreLost(e);
  }
  return absl::OkStatus();
}

absl::StatusOr<AttemptResult> NodeRendezvous::FinishAttempt(int attempt, bool local_ok) {
  Impl& m = *impl_;
  const int me = m.config.node_rank;
  const std::string failure_key = AttemptKey(attempt, "failure");
  AttemptResult result;
  try {
    if (local_ok) {
      m.Set(AttemptNodeKey(attempt, "ok", me), "1");
      std::vector<std::string> keys;
      for (int j = 0; j < m.config.nnodes; ++j) keys.push_back(AttemptNodeKey(attempt, "ok", j));
      // Unbounded on purpose: the other nodes' workers may run for days.
      // Heartbeats (node 0) and the store connection (the others) end it if
      // an agent goes away.
      RETURN_IF_ERROR(m.PollUntil([&] { return m.store->check(keys) || m.Has(failure_key); },
                                  Clock::time_point::max()));
      if (!m.Has(failure_key)) {
        result.succeeded = true;
        return result;
      }
    }
    m.Set(AttemptNodeKey(attempt, "stopped", me), "1");
    // This node failed (and reported it) or was stopped because of another
    // node's failure: the key exists, or an abort says why not.
    RETURN_IF_ERROR(
        m.PollUntil([&] { return m.Has(failure_key); }, Clock::now() + m.config.join_timeout));
    std::string value = m.Get(failure_key);
    size_t newline = value.find('\n');
    absl::SimpleAtoi(value.substr(0, newline), &result.failure.node);
    result.failure.summary = newline == std::string::npos ? value : value.substr(newline + 1);
    std::string tail_key = AttemptNodeKey(attempt, "tail", result.failure.node);
    if (m.Has(tail_key)) result.failure.tail = m.Get(tail_key);
  } catch (const std::exception& e) {
    return m.StoreLost(e);
  }
  return result;
}

void NodeRendezvous::Abort(const std::string& reason) {
  try {
    impl_->PublishAbort(impl_->AbortMessage(reason));
  } catch (const std::exception&) {
    // The store is gone: every node finds out on its own.
  }
}

void NodeRendezvous::Leave() {
  Impl& m = *impl_;
  if (m.left || !m.store) return;
  m.left = true;
  try {
    m.Set(NodeKey("left", m.config.node_rank), "1");
    if (m.config.node_rank != 0) return;
    // Keep the store up until the nodes that joined have read the outcome.
    const Clock::time_point until = Clock::now() + kLeaveWait;
    while (Clock::now() < until) {
      bool all = true;
      for (int j = 1; j < m.config.nnodes && all; ++j) {
        all = !m.Has(NodeKey("claim", j)) || m.Has(NodeKey("left", j));
      }
      if (all) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  } catch (const std::exception&) {
    // Leaving anyway.
  }
}

absl::Status ParseRdzvConf(const std::string& conf, NodeConfig& config) {
  if (conf.empty()) return absl::OkStatus();
  for (absl::string_view piece : absl::StrSplit(conf, ',')) {
    std::vector<std::string> kv = absl::StrSplit(piece, absl::MaxSplits('=', 1));
    auto bad = [&](absl::string_view expected) {
      return absl::InvalidArgumentError(absl::StrCat("weftrun: --rdzv-conf=", conf, " has '", piece,
                                                     "' (expected ", expected, ")"));
    };
    if (kv.size() != 2 || kv[0].empty()) return bad("key=value pairs such as join_timeout=600");
    const std::string& key = kv[0];
    if (key == "join_timeout" || key == "timeout" || key == "heartbeat_timeout") {
      double seconds = 0;
      if (!absl::SimpleAtod(kv[1], &seconds) || !(seconds > 0)) {
        return bad(absl::StrCat(key, "=SECONDS with SECONDS > 0"));
      }
      auto ms = std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
      (key == "heartbeat_timeout" ? config.heartbeat_timeout : config.join_timeout) = ms;
    } else if (key == "read_timeout" || key == "last_call_timeout" || key == "close_timeout" ||
               key == "keep_alive_interval" || key == "keep_alive_max_attempt" ||
               key == "is_host" || key == "use_libuv" || key == "store_type") {
      // torchrun's, with no meaning here.
    } else {
      return bad("join_timeout, timeout or heartbeat_timeout, or one of torchrun's other keys");
    }
  }
  return absl::OkStatus();
}

}  // namespace weft
