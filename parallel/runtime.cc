#include "parallel/runtime.h"

#include <ATen/Context.h>
#include <c10/util/Logging.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"
#include "parallel/backends.h"
#include "parallel/cuda_plugin.h"
#include "parallel/mpi_bootstrap.h"
#include "parallel/rendezvous.h"

namespace weft {

struct Runtime::Impl {
  RuntimeOptions options;
  c10::intrusive_ptr<c10d::Store> store;
  std::shared_ptr<::gloo::transport::Device> gloo_device;
  int groups_created = 0;
};

namespace {

bool IsLoopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

absl::StatusOr<c10::Device> ResolveDevice(const std::string& device, const LaunchEnv& env) {
  if (device != "cpu" && device != "cuda" && device != "auto") {
    return absl::InvalidArgumentError(
        absl::StrCat("device '", device, "' is not a runtime device (expected cpu, cuda or auto)"));
  }
  // "auto" looks for NVIDIA devices before loading any CUDA library.
  if (device == "cpu" || (device == "auto" && !MachineHasNvidiaDevices())) {
    return c10::Device(c10::kCPU);
  }
  std::string why;
  const CudaPlugin* cuda = GetCudaPlugin(&why);
  if (cuda == nullptr) {
    if (device == "auto") return c10::Device(c10::kCPU);
    return absl::FailedPreconditionError(absl::StrCat("device cuda is unavailable: ", why));
  }
  int gpus = cuda->device_count();
  if (device == "auto" && gpus == 0) return c10::Device(c10::kCPU);
  if (env.local_rank >= gpus) {
    return absl::FailedPreconditionError(absl::StrCat(
        "LOCAL_RANK=", env.local_rank, " has no GPU: ", gpus, " visible (expected one GPU per ",
        "local rank, LOCAL_WORLD_SIZE=", env.local_world_size, ")"));
  }
  cuda->set_device(env.local_rank);
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Runtime>> Runtime::Init(const RuntimeOptions& options_in,
                                                       const EnvLookup& lookup) {
  RuntimeOptions options = options_in;
  // c10d logs every failed socket poll with a C++ stack trace; weft reports
  // its own one-line errors instead. TORCH_CPP_LOG_LEVEL still wins.
  if (!lookup("TORCH_CPP_LOG_LEVEL")) FLAGS_caffe2_log_level = 2;  // ERROR
  if (auto timeout = lookup("WEFT_RDZV_TIMEOUT")) {
    ASSIGN_OR_RETURN(int seconds, ParseIntStrict("WEFT_RDZV_TIMEOUT", *timeout));
    if (seconds <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("WEFT_RDZV_TIMEOUT=", seconds, " is not a timeout (expected seconds > 0)"));
    }
    options.timeout = std::chrono::seconds(seconds);
  }
  ASSIGN_OR_RETURN(LaunchEnv env, DetectLaunchEnv(lookup));
  if (!env.master_known) RETURN_IF_ERROR(AgreeOnStoreThroughMpi(env));
  ASSIGN_OR_RETURN(c10::Device device, ResolveDevice(options.device, env));

  auto impl = std::make_unique<Impl>();
  impl->options = options;
  if (env.world_size > 1) {
    ASSIGN_OR_RETURN(impl->store, Rendezvous(env, options.timeout));
  }
  try {
    if (auto ifname = lookup("GLOO_SOCKET_IFNAME")) {
      impl->gloo_device = c10d::ProcessGroupGloo::createDeviceForInterface(*ifname);
    } else if (IsLoopback(env.master_addr) || env.world_size == env.local_world_size) {
      // Every rank is on this host: loopback needs no name resolution.
      impl->gloo_device = c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
    } else {
      impl->gloo_device = c10d::ProcessGroupGloo::createDefaultDevice();
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot open a Gloo transport: ", FirstLine(e.what())));
  }
  std::unique_ptr<Runtime> runtime(new Runtime(env, device, std::move(impl)));
  std::vector<int> all(env.world_size);
  for (int r = 0; r < env.world_size; ++r) all[r] = r;
  ASSIGN_OR_RETURN(runtime->world_, runtime->NewGroup(all, "world"));
  return runtime;
}

Runtime::Runtime(LaunchEnv env, c10::Device device, std::unique_ptr<Impl> impl)
    : env_(std::move(env)), device_(device), impl_(std::move(impl)) {}

Runtime::~Runtime() {
  // Rank 0 hosts the store: keep it up until every rank is done with it.
  if (world_ && world_->size() > 1) {
    try {
      world_->Barrier();
    } catch (const std::exception&) {
      // A peer already failed; its own error is the one that matters.
    }
  }
  world_.reset();
}

absl::StatusOr<std::shared_ptr<ProcessGroup>> Runtime::NewGroup(const std::vector<int>& ranks,
                                                                const std::string& name) {
  if (ranks.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("group ", name, " has no ranks (expected >= 1)"));
  }
  std::set<int> seen;
  for (int r : ranks) {
    if (r < 0 || r >= world_size()) {
      return absl::InvalidArgumentError(absl::StrCat("group ", name, " names rank ", r,
                                                     " (expected 0 <= rank < WORLD_SIZE ",
                                                     world_size(), ")"));
    }
    if (!seen.insert(r).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("group ", name, " names rank ", r, " twice (expected distinct ranks)"));
    }
  }
  int id = impl_->groups_created++;
  auto it = std::find(ranks.begin(), ranks.end(), rank());
  if (it == ranks.end()) return std::shared_ptr<ProcessGroup>();
  int group_rank = static_cast<int>(it - ranks.begin());
  int size = static_cast<int>(ranks.size());

  auto backends = std::make_unique<ProcessGroup::Backends>();
  c10::intrusive_ptr<c10d::Store> store = impl_->store;
  if (!store) store = c10::make_intrusive<c10d::HashStore>();
  std::string prefix = absl::StrCat("weft/pg/", id, "/");
  try {
    auto gloo_options = c10d::ProcessGroupGloo::Options::create();
    gloo_options->timeout = impl_->options.collective_timeout;
    gloo_options->devices.push_back(impl_->gloo_device);
    backends->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>(prefix + "gloo", store), group_rank, size,
        gloo_options);
    if (device_.is_cuda()) {
      backends->nccl = GetCudaPlugin()->create_nccl(
          c10::make_intrusive<c10d::PrefixStore>(prefix + "nccl", store), group_rank, size,
          impl_->options.collective_timeout);
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("rank ", rank(), " could not create group ", name,
                                               " of ranks [", absl::StrJoin(ranks, ","),
                                               "]: ", FirstLine(e.what())));
  }
  return std::make_shared<ProcessGroup>(name, ranks, group_rank, std::move(backends));
}

}  // namespace weft
