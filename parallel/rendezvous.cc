#include "parallel/rendezvous.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/net.h"
#include "base/status.h"

namespace weft {
namespace {

constexpr char kWorldKey[] = "weft/rdzv/world";
constexpr char kErrorKey[] = "weft/rdzv/error";

constexpr char kErrorSeenKey[] = "weft/rdzv/error_seen";

std::string ClaimKey(int rank) { return absl::StrCat("weft/rdzv/claim/", rank); }
std::string ArrivedKey(int rank) { return absl::StrCat("weft/rdzv/arrived/", rank); }

std::string Seconds(std::chrono::milliseconds ms) {
  return absl::StrCat(static_cast<double>(ms.count()) / 1000.0, "s");
}

// Binding the port ourselves first turns "address already in use" into a
// clear message instead of c10d's multi-line one.
absl::Status CheckPortFree(const LaunchEnv& env) {
  Listener probe = ListenTcp(env.master_port, 1);  // closed again at once
  if (probe.error == EADDRINUSE) {
    return absl::UnavailableError(absl::StrCat(
        "store port ", env.master_port, " is already in use on this host (rank 0 hosts the ",
        "store at MASTER_ADDR:MASTER_PORT = ", env.master_addr, ":", env.master_port,
        "; expected a free port: pick another MASTER_PORT)"));
  }
  return absl::OkStatus();  // Other failures: let TCPStore report its own.
}

// Polls until every rank has arrived, another rank published an error, or the
// deadline passes. Returns the ranks still missing (empty: all there).
absl::StatusOr<std::vector<int>> WaitForClaims(c10d::Store& store, int world,
                                               std::chrono::steady_clock::time_point deadline) {
  std::vector<int> missing;
  for (int r = 0; r < world; ++r) missing.push_back(r);
  auto sleep = std::chrono::milliseconds(1);
  while (true) {
    std::vector<int> still;
    for (int r : missing) {
      if (!store.check({ArrivedKey(r)})) still.push_back(r);
    }
    missing.swap(still);
    if (missing.empty()) return missing;
    if (store.check({kErrorKey})) {
      std::vector<uint8_t> value = store.get(kErrorKey);
      store.add(kErrorSeenKey, 1);
      return absl::AbortedError(absl::StrCat("rendezvous failed on another rank: ",
                                             std::string(value.begin(), value.end())));
    }
    if (std::chrono::steady_clock::now() >= deadline) return missing;
    std::this_thread::sleep_for(sleep);
    sleep = std::min(sleep * 2, std::chrono::milliseconds(50));
  }
}

// Publishes this rank's error so the others stop waiting and report it too.
// Rank 0 hosts the store, so it lingers (up to 2 s) until the ranks that did
// arrive have read the error.
absl::Status Fail(c10d::Store& store, const LaunchEnv& env, absl::Status status) {
  std::string message(status.message());
  try {
    if (!store.check({kErrorKey})) {
      store.set(kErrorKey, std::vector<uint8_t>(message.begin(), message.end()));
    }
    if (env.rank == 0) {
      int present = 0;
      for (int r = 1; r < env.world_size; ++r) present += store.check({ClaimKey(r)}) ? 1 : 0;
      auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
      while (store.add(kErrorSeenKey, 0) < present && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    }
  } catch (const std::exception&) {
    // The store is going away; the local error is what matters.
  }
  return status;
}

}  // namespace

absl::StatusOr<c10::intrusive_ptr<c10d::Store>> Rendezvous(const LaunchEnv& env,
                                                           std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const std::string where = absl::StrCat(env.master_addr, ":", env.master_port);
  // Rank 0 hosts the store, except under PyTorch's torchrun, whose agent does.
  const bool host = env.rank == 0 && !env.agent_store;
  if (host) {
    absl::Status free = CheckPortFree(env);
    if (!free.ok()) return free;
  }
  c10d::TCPStoreOptions options;
  options.port = static_cast<uint16_t>(env.master_port);
  options.isServer = host;
  options.waitWorkers = false;
  options.timeout = timeout;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, options);
  } catch (const std::exception& e) {
    if (host) {
      return absl::UnavailableError(absl::StrCat("rank 0 could not host the store on port ",
                                                 env.master_port, ": ", FirstLine(e.what())));
    }
    return absl::DeadlineExceededError(absl::StrCat(
        "rank ", env.rank, " could not reach the store at ", where, " within ", Seconds(timeout),
        env.agent_store ? " (torchrun's agent hosts it; expected it to be running)"
                        : " (rank 0 hosts it; expected rank 0 to be running with the same "
                          "MASTER_ADDR/MASTER_PORT)"));
  }
  if (env.agent_store) {
    // The agent's store outlives attempts: each attempt keeps its own keys.
    store = c10::make_intrusive<c10d::PrefixStore>(
        absl::StrCat("/worker/attempt_", env.restart_count), store);
  }
  try {
    if (env.rank == 0) {
      std::string world = std::to_string(env.world_size);
      store->set(kWorldKey, std::vector<uint8_t>(world.begin(), world.end()));
    }
    if (store->add(ClaimKey(env.rank), 1) > 1) {
      return Fail(*store, env,
                  absl::AlreadyExistsError(absl::StrCat(
                      "rank ", env.rank, " was claimed by two processes (expected each ",
                      "RANK in 0..", env.world_size - 1, " exactly once)")));
    }
    if (env.rank != 0) {
      store->wait({kWorldKey}, std::max(std::chrono::milliseconds(1),
                                        std::chrono::duration_cast<std::chrono::milliseconds>(
                                            deadline - std::chrono::steady_clock::now())));
      std::vector<uint8_t> value = store->get(kWorldKey);
      std::string theirs(value.begin(), value.end());
      if (theirs != std::to_string(env.world_size)) {
        return Fail(*store, env,
                    absl::InvalidArgumentError(absl::StrCat(
                        "rank ", env.rank, " has WORLD_SIZE=", env.world_size,
                        " but rank 0 has WORLD_SIZE=", theirs, " (expected every rank to agree)")));
      }
    }
    store->set(ArrivedKey(env.rank), std::vector<uint8_t>{'1'});
    ASSIGN_OR_RETURN(std::vector<int> missing, WaitForClaims(*store, env.world_size, deadline));
    if (!missing.empty()) {
      return Fail(
          *store, env,
          absl::DeadlineExceededError(absl::StrCat(
              "rendezvous at ", where, " timed out after ", Seconds(timeout), ": ", missing.size(),
              " of ", env.world_size, " ranks never arrived: ", absl::StrJoin(missing, ", "))));
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("rank ", env.rank, " lost the store at ", where,
                                               " during rendezvous (rank 0 hosts it; expected it ",
                                               "to stay up): ", FirstLine(e.what())));
  }
  return store;
}

}  // namespace weft
