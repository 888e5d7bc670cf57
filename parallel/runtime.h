// The distributed runtime: launch environment -> store -> process groups.
//
// Runtime::Init reads the environment (launch_env.h), rendezvouses every rank
// through a c10d TCPStore hosted by rank 0, and builds the world group. Every
// failure at this boundary is a one-line absl::Status naming the thing, the
// value found and the value expected: a bad RANK/WORLD_SIZE, ranks that
// disagree about the world, a rank that never arrives (the missing ranks are
// named), a store port already in use, a store that cannot be reached. Nothing
// waits longer than RuntimeOptions::timeout.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<Runtime> rt, Runtime::Init({}));
//   at::Tensor x = at::ones({4});
//   rt->world().AllReduce(x);  // x == world_size everywhere
//
// The devices: on CPU every group runs Gloo; with `device = "cuda"` (or
// "auto" on a machine with GPUs) each process binds GPU `local_rank` and CUDA
// tensors run on NCCL, CPU tensors still on Gloo.
#pragma once

#include <c10/core/Device.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/launch_env.h"
#include "parallel/process_group.h"

namespace weft {

struct RuntimeOptions {
  /// "cpu", "cuda" or "auto" (cuda when LibTorch has CUDA and a GPU is visible).
  std::string device = "auto";
  /// Longest wait for the store and for every rank to arrive. The
  /// WEFT_RDZV_TIMEOUT environment variable (seconds) overrides it.
  std::chrono::milliseconds timeout = std::chrono::seconds(300);
  /// Longest a single collective may block before it fails.
  std::chrono::milliseconds collective_timeout = std::chrono::seconds(600);
};

class Runtime {
 public:
  /// Joins the job described by `env`. Returns an error status (never hangs
  /// past `options.timeout`) when the job is misconfigured.
  static absl::StatusOr<std::unique_ptr<Runtime>> Init(const RuntimeOptions& options = {},
                                                       const EnvLookup& env = ProcessEnv());
  /// Synchronises with the other ranks (bounded by the collective timeout),
  /// then closes every group and the store.
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  const LaunchEnv& launch_env() const { return env_; }
  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  int local_rank() const { return env_.local_rank; }
  /// Where this rank computes: cpu, or cuda:<local_rank>.
  c10::Device device() const { return device_; }

  /// All ranks.
  ProcessGroup& world() const { return *world_; }
  /// All ranks, shared: for owners that must keep the group alive (a model
  /// whose hooks run collectives on it).
  std::shared_ptr<ProcessGroup> world_group() const { return world_; }

  /// Creates a group of `ranks` (global ranks, in group order). Collective
  /// over the whole world: every rank calls NewGroup for every group, in the
  /// same order, and gets nullptr for groups it is not a member of.
  absl::StatusOr<std::shared_ptr<ProcessGroup>> NewGroup(const std::vector<int>& ranks,
                                                         const std::string& name);

 private:
  struct Impl;
  Runtime(LaunchEnv env, c10::Device device, std::unique_ptr<Impl> impl);

  LaunchEnv env_;
  c10::Device device_;
  std::unique_ptr<Impl> impl_;
  std::shared_ptr<ProcessGroup> world_;
};

}  // namespace weft
