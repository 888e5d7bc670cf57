// Heartbeats: how a worker tells weftrun that it is alive and where it is.
//
// weftrun gives each worker a file, $WEFTRUN_HEARTBEAT_FILE. While the worker
// runs, a thread rewrites it every half second with a beat counter and the
// worker's progress (the step and the phase it is in, e.g. "step 12:
// all-reduce of gradients"). weftrun reads the files with its own clock:
// when a worker's beat stops (the process is stopped or hung hard), or its
// progress does not change for --stuck-timeout seconds (it waits in a
// collective for a peer that never comes), weftrun names the stuck rank,
// its step and phase and what the other ranks wait for, and stops the job
// like any failure. Without the variable (torchrun, mpirun, one process)
// nothing is written.
//
//   Heartbeat::Get().Progress(step, "forward/backward");
//
// The file is one line, `<beat> <step> <phase>`, replaced atomically.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace weft {

/// The environment variable naming a worker's heartbeat file.
inline constexpr char kHeartbeatFileEnv[] = "WEFTRUN_HEARTBEAT_FILE";

class Heartbeat {
 public:
  /// The process's heartbeat; starts its thread on first use when
  /// $WEFTRUN_HEARTBEAT_FILE is set, else every call does nothing.
  static Heartbeat& Get();

  /// Where the worker is now: `step` (optimizer steps done; -1 before the
  /// first) and what it does. Cheap: the thread writes it.
  void Progress(int64_t step, const std::string& phase);

  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

 private:
  Heartbeat() = default;
  struct State;
  State* state_ = nullptr;  // null when disabled; never freed (a detached thread uses it)
};

/// One heartbeat file's content.
struct HeartbeatRecord {
  int64_t beat = 0;
  int64_t step = -1;
  std::string phase;
};

/// Parses `<beat> <step> <phase>`; nullopt when the file is missing or not
/// a record (yet).
std::optional<HeartbeatRecord> ReadHeartbeat(const std::string& path);

}  // namespace weft
