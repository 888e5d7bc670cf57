#include "launcher/weftrun.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dirent.h>
#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/net.h"
#include "base/syscall.h"
#include "launcher/heartbeat.h"
#include "launcher/node_rendezvous.h"

extern char** environ;

namespace weft {
namespace {

constexpr size_t kTailLines = 20;
using Clock = std::chrono::steady_clock;

volatile sig_atomic_t g_signal = 0;
volatile pid_t g_worker_group = 0;

void ForwardSignal(int sig) {
  g_signal = sig;
  if (g_worker_group > 0) ::killpg(g_worker_group, sig);
}

// The keeper: a small process forked when weftrun starts, before any thread
// or worker. weftrun tells it each worker process group it starts (and each
// one that is gone) through a pipe; when the pipe closes because weftrun
// exited or was killed, even by SIGKILL, it kills what is left of those
// groups: the workers (which also get SIGKILL as their parent-death signal)
// and every process they started that stayed in their group.
class Keeper {
 public:
  void Start() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return;  // no keeper: workers still die with weftrun
    UniqueFd read_end(fds[0]), write_end(fds[1]);
    pid_t pid = ::fork();
    if (pid < 0) return;
    if (pid == 0) Run(read_end.get());
    write_ = std::move(write_end);
  }
  void Guard(pid_t group) { Send(group); }
  void Release(pid_t group) { Send(-group); }

 private:
  void Send(pid_t value) {
    if (write_.ok()) {
      ssize_t ignored = ::write(write_.get(), &value, sizeof(value));  // atomic: < PIPE_BUF
      (void)ignored;
    }
  }
  [[noreturn]] static void Run(int read_fd) {
    ::prctl(PR_SET_NAME, "weftrun-keeper");
    ::setpgid(0, 0);  // out of the terminal's group: Ctrl-C is weftrun's to handle
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2, SIGPIPE}) {
      ::sigaction(sig, &ignore, nullptr);
    }
    // Hold none of weftrun's files: a shell reading weftrun's output must
    // not wait for the keeper.
    int null_fd = ::open("/dev/null", O_RDWR);
    for (int fd = 0; fd < 3; ++fd) ::dup2(null_fd, fd);
    for (int fd = 3; fd < 1024; ++fd) {
      if (fd != read_fd) ::close(fd);
    }
    std::vector<pid_t> groups;
    pid_t value = 0;
    while (true) {
      ssize_t n = ::read(read_fd, &value, sizeof(value));
      if (n < 0 && errno == EINTR) continue;
      if (n != sizeof(value)) break;  // EOF: weftrun is gone
      if (value > 0) {
        groups.push_back(value);
      } else {
        groups.erase(std::remove(groups.begin(), groups.end(), -value), groups.end());
      }
    }
    for (pid_t group : groups) ::killpg(group, SIGKILL);
    ::_exit(0);
  }
  UniqueFd write_;
};

Keeper g_keeper;

// Finds PROGRAM the way execvp would; empty when it cannot be executed.
std::string Resolve(const std::string& program, std::string* why) {
  auto executable = [](const std::string& path) { return ::access(path.c_str(), X_OK) == 0; };
  if (program.find('/') != std::string::npos) {
    if (executable(program)) return program;
    *why = std::strerror(errno);
    return "";
  }
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path ? path : "/usr/bin:/bin", ':')) {
    std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", program);
    if (executable(candidate)) return candidate;
  }
  *why = "not found on PATH";
  return "";
}

struct Worker {
  int local_rank = 0;
  int global_rank = 0;
  pid_t pid = -1;
  UniqueFd out_fd, err_fd;  // the read ends of the worker's stdout and stderr
  std::string out_partial, err_partial;
  std::deque<std::string> err_tail;
  bool exited = false;
  int status = 0;
  bool show = true;                                 // console output (--local-ranks-filter)
  int redirect = 0;                                 // 1 stdout, 2 stderr: files only
  std::shared_ptr<std::ofstream> out_log, err_log;  // --log-dir
  // Heartbeats (launcher/heartbeat.h), as weftrun's clock saw them change.
  std::string heartbeat_path;
  std::optional<HeartbeatRecord> heartbeat;
  Clock::time_point beat_at, progress_at;
  std::string stuck;  // why weftrun stopped the job for this worker
};

// mkdir -p; false on failure.
bool MakeDirs(const std::string& path) {
  std::string built;
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    built += std::string(part) + "/";
    if (part.empty()) continue;
    if (::mkdir(built.c_str(), 0755) != 0 && errno != EEXIST) return false;
  }
  return true;
}

void EmitLines(Worker& w, std::string& partial, const char* data, size_t n, bool is_err,
               bool flush) {
  partial.append(data, n);
  size_t start = 0;
  while (true) {
    size_t nl = partial.find('\n', start);
    if (nl == std::string::npos) break;
    std::string line = partial.substr(start, nl - start);
    if (auto& log = is_err ? w.err_log : w.out_log) *log << line << "\n" << std::flush;
    if (w.show && !(w.redirect & (is_err ? 2 : 1)))
      (is_err ? std::cerr : std::cout) << "[rank" << w.global_rank << "]:" << line << "\n";
    if (is_err) {
      w.err_tail.push_back(line);
      if (w.err_tail.size() > kTailLines) w.err_tail.pop_front();
    }
    start = nl + 1;
  }
  partial.erase(0, start);
  if (flush && !partial.empty()) {
    if (auto& log = is_err ? w.err_log : w.out_log) *log << partial << "\n" << std::flush;
    if (w.show && !(w.redirect & (is_err ? 2 : 1)))
      (is_err ? std::cerr : std::cout) << "[rank" << w.global_rank << "]:" << partial << "\n";
    if (is_err) w.err_tail.push_back(partial);
    partial.clear();
  }
  (is_err ? std::cerr : std::cout).flush();
}

std::string DescribeStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return absl::StrCat("signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)), ")");
  }
  return "unknown status";
}

bool Failed(const Worker& w) { return !(WIFEXITED(w.status) && WEXITSTATUS(w.status) == 0); }

// Where this node's workers sit in the job, for one attempt.
struct WorkerWorld {
  int rank_offset = 0;  // global rank of local rank 0
  int world_size = 1;
  std::string master_addr;
  int master_port = 0;
  std::string run_id;
  std::string heartbeat_dir;  // empty: no heartbeats
};

// torchrun's environment for worker `w` on top of this process's own.
std::vector<std::string> WorkerEnvironment(const WeftrunOptions& o, const WorkerWorld& world,
                                           const Worker& w, int attempt) {
  std::vector<std::pair<std::string, std::string>> vars = {
      {"RANK", std::to_string(w.global_rank)},
      {"LOCAL_RANK", std::to_string(w.local_rank)},
      {"WORLD_SIZE", std::to_string(world.world_size)},
      {"LOCAL_WORLD_SIZE", std::to_string(o.nproc_per_node)},
      {"GROUP_RANK", std::to_string(o.node_rank)},
      {"GROUP_WORLD_SIZE", std::to_string(o.nnodes)},
      {"ROLE_NAME", "default"},
      {"ROLE_RANK", std::to_string(w.global_rank)},
      {"ROLE_WORLD_SIZE", std::to_string(world.world_size)},
      {"MASTER_ADDR", world.master_addr},
      {"MASTER_PORT", std::to_string(world.master_port)},
      {"TORCHELASTIC_RESTART_COUNT", std::to_string(attempt)},
      {"TORCHELASTIC_MAX_RESTARTS", std::to_string(o.max_restarts)},
      {"TORCHELASTIC_RUN_ID", world.run_id},
      // Rank 0 hosts the workers' store (not an agent, as under torchrun).
      {"TORCHELASTIC_USE_AGENT_STORE", "False"},
  };
  if (!w.heartbeat_path.empty()) vars.emplace_back(kHeartbeatFileEnv, w.heartbeat_path);
  if (o.nproc_per_node > 1 && !std::getenv("OMP_NUM_THREADS")) {
    vars.emplace_back("OMP_NUM_THREADS", "1");
  }
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    absl::string_view entry(*e);
    absl::string_view name = entry.substr(0, entry.find('='));
    bool replaced =
        std::any_of(vars.begin(), vars.end(), [&](const auto& kv) { return kv.first == name; });
    if (!replaced) env_strings.emplace_back(entry);
  }
  for (const auto& [k, v] : vars) env_strings.push_back(absl::StrCat(k, "=", v));
  return env_strings;
}

// Starts every worker in one new process group; returns false on fork failure.
bool Spawn(const WeftrunOptions& o, const std::string& exe, int attempt, const WorkerWorld& world,
           std::vector<Worker>& workers) {
  pid_t group = 0;
  workers.clear();
  workers.resize(o.nproc_per_node);
  for (int lr = 0; lr < o.nproc_per_node; ++lr) {
    if (g_signal != 0) {  // stay responsive: stop spawning, stop those started
      workers.resize(lr);
      break;
    }
    Worker& w = workers[lr];
    w.local_rank = lr;
    w.global_rank = world.rank_offset + lr;
    w.show = o.local_ranks_filter.empty() ||
             std::find(o.local_ranks_filter.begin(), o.local_ranks_filter.end(), lr) !=
                 o.local_ranks_filter.end();
    if (lr < static_cast<int>(o.redirects.size())) w.redirect = o.redirects[lr];
    if (!world.heartbeat_dir.empty()) {
      w.heartbeat_path = absl::StrCat(world.heartbeat_dir, "/rank_", w.global_rank);
      ::unlink(w.heartbeat_path.c_str());  // an earlier attempt's
    }
    if (!o.log_dir.empty()) {
      std::string dir =
          absl::StrCat(o.log_dir, "/", world.run_id, "/attempt_", attempt, "/", w.global_rank);
      if (!MakeDirs(dir)) {
        std::cerr << "weftrun: cannot create log directory " << dir << ": " << std::strerror(errno)
                  << std::endl;
        return false;
      }
      w.out_log = std::make_shared<std::ofstream>(dir + "/stdout.log");
      w.err_log = std::make_shared<std::ofstream>(dir + "/stderr.log");
    }
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0) return false;
    UniqueFd out_read(out[0]), out_write(out[1]);
    if (::pipe2(err, O_CLOEXEC) != 0) return false;
    UniqueFd err_read(err[0]), err_write(err[1]);
    // Built before fork: after it the child only calls async-signal-safe
    // functions (the agent may have store threads).
    std::vector<std::string> env_strings = WorkerEnvironment(o, world, w, attempt);
    std::vector<char*> envp, argv;
    for (std::string& e : env_strings) envp.push_back(e.data());
    envp.push_back(nullptr);
    for (const std::string& a : o.program) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    pid_t pid = ::fork();
    if (pid < 0) return false;
    if (pid == 0) {
      ::setpgid(0, group);  // group 0: become the leader of a new group
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::dup2(out_write.get(), 1);
      ::dup2(err_write.get(), 2);
      struct sigaction dfl {};
      dfl.sa_handler = SIG_DFL;
      for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2}) ::sigaction(sig, &dfl, nullptr);
      ::execve(exe.c_str(), argv.data(), envp.data());
      const char* why = std::strerror(errno);
      for (const char* piece : {"weftrun: cannot execute '", exe.c_str(), "': ", why, "\n"}) {
        ssize_t ignored = ::write(2, piece, std::strlen(piece));
        (void)ignored;
      }
      ::_exit(127);
    }
    if (group == 0) {
      group = pid;
      g_keeper.Guard(group);
    }
    ::setpgid(pid, group);  // also from the parent, to win the race with exec
    out_write.reset();      // the child holds the write ends
    err_write.reset();
    w.pid = pid;
    w.beat_at = w.progress_at = Clock::now();
    w.out_fd = std::move(out_read);
    w.err_fd = std::move(err_read);
  }
  g_worker_group = group;
  return true;
}

// "step 12, all-reduce of gradients" (the step a worker works on; 0 before
// the first).
std::string Where(const HeartbeatRecord& r) {
  return r.step > 0 ? absl::StrCat("step ", r.step, ", ", r.phase) : r.phase;
}

int64_t SecondsSince(Clock::time_point t, Clock::time_point now) {
  return std::chrono::duration_cast<std::chrono::seconds>(now - t).count();
}

// Reads the live workers' heartbeats. A worker whose beat stopped for the
// timeout (stopped, or hung with its threads) or whose progress did not
// change for it (waiting in a collective) is stuck: returns the one to name
// (a silent one first, else the one stuck longest) with `stuck` set to what
// it and every other rank are doing; -1 while none is.
int DetectStuck(const WeftrunOptions& o, std::vector<Worker>& workers) {
  const Clock::time_point now = Clock::now();
  for (Worker& w : workers) {
    if (w.heartbeat_path.empty()) continue;
    std::optional<HeartbeatRecord> r = ReadHeartbeat(w.heartbeat_path);
    if (!r) continue;
    if (!w.heartbeat || r->beat != w.heartbeat->beat) w.beat_at = now;
    if (!w.heartbeat || r->step != w.heartbeat->step || r->phase != w.heartbeat->phase) {
      w.progress_at = now;
    }
    w.heartbeat = r;
  }
  int silent = -1, stalled = -1;
  for (size_t i = 0; i < workers.size(); ++i) {
    const Worker& w = workers[i];
    if (w.exited || !w.heartbeat) continue;
    if (now - w.beat_at > o.stuck_timeout && (silent < 0 || w.beat_at < workers[silent].beat_at)) {
      silent = static_cast<int>(i);
    } else if (now - w.progress_at > o.stuck_timeout &&
               (stalled < 0 || w.progress_at < workers[stalled].progress_at)) {
      stalled = static_cast<int>(i);
    }
  }
  const int culprit = silent >= 0 ? silent : stalled;
  if (culprit < 0) return -1;
  Worker& w = workers[culprit];
  w.stuck = silent >= 0
                ? absl::StrCat("is not responding: no heartbeat for ", SecondsSince(w.beat_at, now),
                               " s (stopped or hung), last in ", Where(*w.heartbeat))
                : absl::StrCat("is stuck in ", Where(*w.heartbeat), " for ",
                               SecondsSince(w.progress_at, now), " s");
  for (size_t i = 0; i < workers.size(); ++i) {
    const Worker& other = workers[i];
    if (static_cast<int>(i) == culprit) continue;
    absl::StrAppend(&w.stuck, "; rank ", other.global_rank);
    if (other.exited) {
      absl::StrAppend(&w.stuck, " exited with ", DescribeStatus(other.status));
      if (other.heartbeat) absl::StrAppend(&w.stuck, " in ", Where(*other.heartbeat));
    } else if (!other.heartbeat) {
      absl::StrAppend(&w.stuck, " sent no heartbeat");
    } else if (now - other.beat_at > o.stuck_timeout) {
      absl::StrAppend(&w.stuck, " is not responding either (last in ", Where(*other.heartbeat),
                      ")");
    } else {
      absl::StrAppend(&w.stuck, " waits in ", Where(*other.heartbeat), " for ",
                      SecondsSince(other.progress_at, now), " s");
    }
  }
  return culprit;
}

// What the other nodes have to do with this node's workers (multi-node).
struct SuperviseHooks {
  std::function<void(const Worker&)> on_failure;  // this node's first failure
  std::function<bool()> should_stop;              // another node asks to stop
};

struct SuperviseResult {
  int first_failure = -1;         // index of the first worker that failed
  bool stopped_remotely = false;  // stopped because should_stop() said so
};

// Pumps output until every worker has exited.
SuperviseResult Supervise(const WeftrunOptions& o, std::vector<Worker>& workers,
                          const SuperviseHooks& hooks = {}) {
  SuperviseResult result;
  int& first_failure = result.first_failure;
  bool stopping = false;
  auto stop_deadline = std::chrono::steady_clock::time_point::max();
  // Multi-node agents also poll the store (and send heartbeats) between
  // checks, so they wake at least once a second.
  double interval = hooks.should_stop ? std::min(o.monitor_interval, 1.0) : o.monitor_interval;
  // Heartbeats are read a few times per timeout, at most once a second.
  const auto check_every = std::clamp<Clock::duration>(
      o.stuck_timeout / 4, std::chrono::milliseconds(100), std::chrono::seconds(1));
  const bool watch = o.stuck_timeout.count() > 0;
  Clock::time_point next_check = Clock::now() + check_every;
  Clock::time_point all_exited_at = Clock::time_point::max();
  char buffer[65536];
  while (true) {
    std::vector<pollfd> fds;
    std::vector<std::pair<int, bool>> owners;  // worker index, is_err
    for (size_t i = 0; i < workers.size(); ++i) {
      if (workers[i].out_fd.ok())
        fds.push_back({workers[i].out_fd.get(), POLLIN, 0}), owners.push_back({i, false});
      if (workers[i].err_fd.ok())
        fds.push_back({workers[i].err_fd.get(), POLLIN, 0}), owners.push_back({i, true});
    }
    if (!fds.empty()) {
      ::poll(fds.data(), fds.size(), static_cast<int>(interval * 1000));
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int>(interval * 1000)));
    }
    for (size_t k = 0; k < fds.size(); ++k) {
      if (!(fds[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      Worker& w = workers[owners[k].first];
      bool is_err = owners[k].second;
      ssize_t n = ::read(fds[k].fd, buffer, sizeof(buffer));
      if (n > 0) {
        EmitLines(w, is_err ? w.err_partial : w.out_partial, buffer, n, is_err, false);
      } else if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
        EmitLines(w, is_err ? w.err_partial : w.out_partial, "", 0, is_err, true);
        (is_err ? w.err_fd : w.out_fd).reset();
      }
    }
    bool all_done = true, all_exited = true;
    int stuck = -1;
    if (watch && !stopping && first_failure < 0 && Clock::now() >= next_check) {
      next_check = Clock::now() + check_every;
      stuck = DetectStuck(o, workers);
    }
    for (size_t i = 0; i < workers.size(); ++i) {
      Worker& w = workers[i];
      if (!w.exited) {
        bool reaped = ::waitpid(w.pid, &w.status, WNOHANG) == w.pid;
        if (reaped) w.exited = true;
        if ((reaped && Failed(w) && first_failure < 0 && !stopping) ||
            (stuck == static_cast<int>(i) && first_failure < 0)) {
          first_failure = static_cast<int>(i);
          // Tell the other nodes at once, with the stderr that is already
          // in the pipe (without blocking: a grandchild may hold it open).
          if (hooks.on_failure) {
            for (int fd : {w.out_fd.get(), w.err_fd.get()}) {
              bool is_err = fd == w.err_fd.get();
              pollfd p{fd, POLLIN, 0};
              while (fd >= 0 && ::poll(&p, 1, 0) > 0 && (p.revents & POLLIN)) {
                ssize_t n = ::read(fd, buffer, sizeof(buffer));
                if (n <= 0) break;
                EmitLines(w, is_err ? w.err_partial : w.out_partial, buffer, n, is_err, false);
              }
            }
            hooks.on_failure(w);
          }
        }
      }
      if (!w.exited || w.out_fd.ok() || w.err_fd.ok()) all_done = false;
      if (!w.exited) all_exited = false;
    }
    if (all_done) break;
    // Every worker is gone but something they started still holds their
    // output open: after a moment, stop what is left of their group (as
    // torchrun closes its workers' process groups).
    if (all_exited && all_exited_at == Clock::time_point::max()) all_exited_at = Clock::now();
    if (all_exited && g_worker_group > 0 &&
        Clock::now() - all_exited_at > std::chrono::seconds(2)) {
      ::killpg(g_worker_group, SIGKILL);
      all_exited_at = Clock::now();
    }
    // Asked also while stopping: it sends this node's heartbeats.
    if (hooks.should_stop && hooks.should_stop() && !stopping && first_failure < 0 &&
        g_signal == 0) {
      result.stopped_remotely = true;
    }
    if ((first_failure >= 0 || g_signal != 0 || result.stopped_remotely) && !stopping) {
      stopping = true;
      ::killpg(g_worker_group, SIGTERM);
      stop_deadline = std::chrono::steady_clock::now() +
                      std::chrono::milliseconds(static_cast<int>(o.grace_period * 1000));
    }
    if (stopping && std::chrono::steady_clock::now() > stop_deadline) {
      ::killpg(g_worker_group, SIGKILL);
      stop_deadline = std::chrono::steady_clock::time_point::max();
    }
  }
  if (g_worker_group > 0 && ::killpg(g_worker_group, 0) != 0 && errno == ESRCH) {
    g_keeper.Release(g_worker_group);
  }
  g_worker_group = 0;
  return result;
}

std::string Summary(const Worker& w, int node_rank, bool multi_node) {
  const std::string what =
      w.stuck.empty() ? absl::StrCat("failed first with ", DescribeStatus(w.status)) : w.stuck;
  if (!multi_node) {
    return absl::StrCat("rank ", w.global_rank, " (local rank ", w.local_rank, ", pid ", w.pid,
                        ") ", what);
  }
  return absl::StrCat("rank ", w.global_rank, " on node ", node_rank, " (local rank ", w.local_rank,
                      ", pid ", w.pid, ") ", what);
}

// A rank whose last error line is a lost connection to a peer (or the
// store) most likely died of another rank's death.
bool LostPeer(const Worker& w) {
  if (w.err_tail.empty()) return false;
  const std::string& line = w.err_tail.back();
  for (const char* symptom : {"Connection closed by peer", "Connection reset by peer",
                              "Broken pipe", "lost the store", "lost the rendezvous store"}) {
    if (line.find(symptom) != std::string::npos) return true;
  }
  return false;
}

// The failure to name: the first in time, unless that rank died of a lost
// connection while another rank exited with an error of its own: then the
// latter is the root cause (a rank's own error can be reaped after the
// death it caused).
int RootCause(const std::vector<Worker>& workers, int first) {
  if (first < 0 || !workers[first].stuck.empty() || !LostPeer(workers[first])) return first;
  for (size_t i = 0; i < workers.size(); ++i) {
    const Worker& w = workers[i];
    if (static_cast<int>(i) == first || !w.exited || !WIFEXITED(w.status)) continue;
    if (WEXITSTATUS(w.status) != 0 && !w.err_tail.empty() && !LostPeer(w)) {
      return static_cast<int>(i);
    }
  }
  return first;
}

std::string Tail(const Worker& w) {
  std::string tail;
  for (const std::string& line : w.err_tail) absl::StrAppend(&tail, line, "\n");
  return tail;
}

}  // namespace

namespace {

std::string SignalName(int sig) { return absl::StrCat(sig, " (", strsignal(sig), ")"); }

int RunOneNode(const WeftrunOptions& o, const std::string& exe, const std::string& heartbeats) {
  WorkerWorld world{0, o.nproc_per_node, o.master_addr, o.master_port, o.run_id, heartbeats};
  for (int attempt = 0;; ++attempt) {
    std::vector<Worker> workers;
    if (!Spawn(o, exe, attempt, world, workers)) {
      std::cerr << "weftrun: cannot start workers: " << std::strerror(errno) << std::endl;
      if (g_worker_group > 0) ::killpg(g_worker_group, SIGKILL);
      return 1;
    }
    int failed = Supervise(o, workers).first_failure;
    if (g_signal != 0) {
      std::cerr << "weftrun: received signal " << SignalName(g_signal) << "; workers stopped"
                << std::endl;
      return 128 + g_signal;
    }
    if (failed < 0) return 0;
    const int cause = RootCause(workers, failed);
    const Worker& w = workers[cause];
    if (cause == failed) {
      std::cerr << "weftrun: attempt " << attempt << ": " << Summary(w, 0, false) << "\n";
      if (!w.stuck.empty())
        std::cerr << "weftrun: stopped the job: rank " << w.global_rank << " made no progress for "
                  << o.stuck_timeout.count() / 1000.0 << " s (--stuck-timeout)\n";
    } else {
      const Worker& first = workers[failed];
      std::cerr << "weftrun: attempt " << attempt << ": rank " << w.global_rank << " (local rank "
                << w.local_rank << ", pid " << w.pid << ") failed with " << DescribeStatus(w.status)
                << "; rank " << first.global_rank
                << " failed first, of a lost connection: " << first.err_tail.back() << "\n";
    }
    if (attempt < o.max_restarts) {
      std::cerr << "weftrun: restarting all workers (" << attempt + 1 << " of " << o.max_restarts
                << " restarts)" << std::endl;
      continue;
    }
    std::cerr << "weftrun: job failed; last stderr lines of rank " << w.global_rank << ":\n";
    for (const std::string& line : w.err_tail) std::cerr << "  " << line << "\n";
    std::cerr.flush();
    return 1;
  }
}

// One agent of a multi-node job: see launcher/node_rendezvous.h.
int RunMultiNode(const WeftrunOptions& o, const std::string& exe, const std::string& heartbeats) {
  NodeConfig config;
  config.nnodes = o.nnodes;
  config.node_rank = o.node_rank;
  config.nproc = o.nproc_per_node;
  config.max_restarts = o.max_restarts;
  config.run_id = o.run_id;
  config.host = o.master_addr;
  config.port = o.master_port;
  config.join_timeout = o.rdzv_timeout;
  config.heartbeat_timeout = o.heartbeat_timeout;
  config.poll_interval = std::chrono::milliseconds(static_cast<int>(o.monitor_interval * 1000));
  auto on_signal = [&](NodeRendezvous* nodes) {
    if (nodes != nullptr) {
      nodes->Abort(absl::StrCat("received signal ", SignalName(g_signal)));
      nodes->Leave();
    }
    std::cerr << "weftrun: received signal " << SignalName(g_signal) << "; workers stopped"
              << std::endl;
    return 128 + g_signal;
  };
  // The job is over for a reason every node shares (an abort, a lost store).
  auto fail = [&](NodeRendezvous* nodes, const absl::Status& status, int code) {
    if (absl::IsCancelled(status) && g_signal != 0) return on_signal(nodes);
    if (nodes != nullptr) nodes->Leave();
    std::cerr << "weftrun: " << status.message() << std::endl;
    return code;
  };
  auto joined = NodeRendezvous::Join(config, []() -> std::string {
    return g_signal == 0 ? "" : absl::StrCat("received signal ", SignalName(g_signal));
  });
  if (!joined.ok()) return fail(nullptr, joined.status(), 2);
  std::unique_ptr<NodeRendezvous> nodes = std::move(joined).value();
  WorkerWorld world{nodes->rank_offset(), nodes->world_size(), o.master_addr, 0,
                    nodes->run_id(),      heartbeats};
  std::cerr << "weftrun: node " << o.node_rank << " of " << o.nnodes << " joined run "
            << world.run_id << " at " << o.master_addr << ":" << o.master_port << " (ranks "
            << world.rank_offset << ".." << world.rank_offset + o.nproc_per_node - 1 << " of "
            << world.world_size << ")" << std::endl;
  for (int attempt = 0;; ++attempt) {
    auto port = nodes->BeginAttempt(attempt);
    if (!port.ok()) return fail(nodes.get(), port.status(), 1);
    world.master_port = *port;
    std::vector<Worker> workers;
    if (!Spawn(o, exe, attempt, world, workers)) {
      std::cerr << "weftrun: cannot start workers: " << std::strerror(errno) << std::endl;
      if (g_worker_group > 0) ::killpg(g_worker_group, SIGKILL);
      nodes->Abort("could not start its workers");
      nodes->Leave();
      return 1;
    }
    absl::Status remote = absl::OkStatus();
    SuperviseHooks hooks;
    hooks.on_failure = [&](const Worker& w) {
      absl::Status s = nodes->ReportFailure(attempt, Summary(w, o.node_rank, true), Tail(w));
      if (!s.ok() && remote.ok()) remote = s;
    };
    hooks.should_stop = [&] {
      auto stop = nodes->ShouldStop(attempt);
      if (stop.ok()) return *stop;
      if (remote.ok()) remote = stop.status();
      return true;
    };
    SuperviseResult supervised = Supervise(o, workers, hooks);
    if (g_signal != 0) return on_signal(nodes.get());
    if (!remote.ok()) return fail(nodes.get(), remote, 1);
    auto result =
        nodes->FinishAttempt(attempt, supervised.first_failure < 0 && !supervised.stopped_remotely);
    if (!result.ok()) return fail(nodes.get(), result.status(), 1);
    if (result->succeeded) {
      nodes->Leave();
      return 0;
    }
    const NodeFailure& failure = result->failure;
    std::cerr << "weftrun: attempt " << attempt << ": " << failure.summary << "\n";
    if (attempt < o.max_restarts) {
      std::cerr << "weftrun: restarting the workers of every node (" << attempt + 1 << " of "
                << o.max_restarts << " restarts)" << std::endl;
      continue;
    }
    std::string rank = failure.summary.substr(0, failure.summary.find(" ("));
    std::cerr << "weftrun: job failed; last stderr lines of " << rank << ":\n";
    for (absl::string_view line : absl::StrSplit(failure.tail, '\n', absl::SkipEmpty())) {
      std::cerr << "  " << line << "\n";
    }
    std::cerr.flush();
    nodes->Leave();
    return 1;
  }
}

}  // namespace

int RunWeftrun(const WeftrunOptions& o) {
  std::string why;
  std::string exe = Resolve(o.program[0], &why);
  if (exe.empty()) {
    std::cerr << "weftrun: cannot execute '" << o.program[0] << "': " << why << std::endl;
    return 127;
  }
  struct sigaction action {};
  action.sa_handler = ForwardSignal;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2}) ::sigaction(sig, &action, nullptr);
  g_keeper.Start();
  // The workers' heartbeat files, in a directory of this run's own.
  std::string heartbeats;
  if (o.stuck_timeout.count() > 0) {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern =
        absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/weftrun-XXXXXX");
    if (::mkdtemp(pattern.data()) != nullptr) {
      heartbeats = pattern;
    } else {
      std::cerr << "weftrun: cannot create a heartbeat directory " << pattern << ": "
                << std::strerror(errno) << "; stuck ranks will not be detected" << std::endl;
    }
  }
  int code = o.nnodes > 1 ? RunMultiNode(o, exe, heartbeats) : RunOneNode(o, exe, heartbeats);
  if (!heartbeats.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(heartbeats, ec);
  }
  return code;
}

}  // namespace weft
