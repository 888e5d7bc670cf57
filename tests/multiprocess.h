// Multi-process tests on one machine over loopback.
//
// RunRanks(n, body) re-executes the current test binary n times, filtered to
// the current test, with the torchrun environment of rank 0..n-1 (a fresh
// MASTER_PORT each call). In each child, the same TEST body reaches RunRanks
// again, which now runs `body` and exits the process with 0 when it recorded
// no failure. In the parent, RunRanks waits (killing every child after
// `timeout`) and returns each rank's exit code and output.
//
//   TEST(Collectives, AllReduce) {
//     RankResults r = RunRanks(4, [] {
//       auto rt = weft::Runtime::Init().value();
//       ...EXPECT_...;
//     });
//     EXPECT_TRUE(r.AllSucceeded()) << r.Describe();
//   }
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace weft {
class Runtime;
}  // namespace weft

namespace weft::testing {

struct RankResults {
  std::vector<int> exit_codes;      // -signal when killed by a signal
  std::vector<std::string> output;  // stdout + stderr of each rank
  bool timed_out = false;
  bool AllSucceeded() const;
  std::string Describe() const;
};

struct RunOptions {
  std::chrono::milliseconds timeout = std::chrono::seconds(90);
  /// Extra or overriding variables for every rank ("" value: unset it).
  std::map<std::string, std::string> env;
  /// Per-rank overrides, applied after `env`.
  std::map<int, std::map<std::string, std::string>> rank_env;
  /// Start this many processes (defaults to the world size).
  int processes = -1;
  /// The test ("Suite.Name") the children run instead of the current one:
  /// for tests that start several jobs one after another (each child test
  /// calls RunRanks once and reads what to do from `env`).
  std::string test;
};

/// See the file comment. `world` sets WORLD_SIZE.
RankResults RunRanks(int world, const std::function<void()>& body, const RunOptions& options = {});

/// True in a child started by RunRanks.
bool IsRankChild();

/// This rank's runtime on CPU/Gloo with 60 s timeouts; a failure is a test
/// failure and ends the rank (exit 3).
std::unique_ptr<Runtime> InitCpuRuntime();

}  // namespace weft::testing
