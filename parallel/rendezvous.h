// Rendezvous through a c10d TCPStore hosted by rank 0.
//
// Each rank connects (rank 0 first binds the port), claims its rank (a rank
// claimed twice is an error), checks that it agrees with rank 0 about the
// world size, and waits until every rank has arrived. Errors are one line;
// a rank that never arrives is named after `timeout`, e.g.
// `rendezvous at 127.0.0.1:29500 timed out after 5s: 1 of 3 ranks never arrived: 2`.
#pragma once

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>

#include "absl/status/statusor.h"
#include "base/net.h"
#include "parallel/launch_env.h"

namespace weft {

absl::StatusOr<c10::intrusive_ptr<c10d::Store>> Rendezvous(const LaunchEnv& env,
                                                           std::chrono::milliseconds timeout);

}  // namespace weft
