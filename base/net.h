// -----------------------------------------------------------------------------
// File: base/net.h
// -----------------------------------------------------------------------------
//
// TCP ports: the one place weft binds a socket itself (the runtime checks
// that the store's port is free, the launcher hosts the rendezvous store on
// a socket it bound, tests pick free ports). No LibTorch.
//
//   Listener l = ListenTcp(29500);
//   if (l.error == EADDRINUSE) return absl::UnavailableError("port 29500 is in use ...");
//   int fd = l.fd.release();  // e.g. handed to c10d::TCPStore
#pragma once

#include "base/syscall.h"

namespace weft {

/// A listening socket, or the errno of the call that failed.
struct Listener {
  UniqueFd fd;
  /// 0 on success; else errno of socket(), bind() or listen().
  int error = 0;
};

/// A TCP socket bound to INADDR_ANY:`port` (SO_REUSEADDR) and listening.
/// Port 0 lets the kernel choose.
Listener ListenTcp(int port, int backlog = 128);

/// The port a bound socket listens on (0 on failure).
int BoundPort(int fd);

/// A TCP port on this host that was free a moment ago (0 on failure).
int PickFreePort();

}  // namespace weft
