// The CUDA side of weft, loaded at run time.
//
// Linking LibTorch's CUDA libraries costs every process about 240 MB of
// resident memory (their relocations and static initialisers), GPU or not.
// So nothing in weft links them: the few things that need CUDA (binding a
// GPU, the NCCL backend, the caching-allocator warmup) live in
// libweft_cuda.so, which GetCudaPlugin() dlopens on first use, and which
// brings libtorch_cuda (and with it CUDA tensors) into the process.
//
//   std::string why;
//   if (const CudaPlugin* cuda = GetCudaPlugin(&why)) cuda->set_device(local_rank);
//
// The plugin is found, in order, at $WEFT_CUDA_PLUGIN, next to the
// executable, in the executable's parallel/ directory (bazel-bin/weft), and
// in its Bazel runfiles.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include <c10/util/intrusive_ptr.h>

#include "base/device_memory.h"

namespace c10d {
class Backend;
class Store;
}  // namespace c10d

namespace weft {

struct CudaPlugin {
  /// Visible CUDA devices (0 without a driver or GPU).
  int (*device_count)();
  /// Makes `index` the current device of this process.
  void (*set_device)(int index);
  /// A c10d NCCL backend over `store` (communicators are created lazily).
  c10::intrusive_ptr<c10d::Backend> (*create_nccl)(const c10::intrusive_ptr<c10d::Store>& store,
                                                   int rank, int size,
                                                   std::chrono::milliseconds timeout);
  /// The caching-allocator warmup: reserves up to `bytes` on device `index`
  /// (only what fits in free memory plus memory the allocator holds unused)
  /// and frees it at once, so later allocations are carved from the cached
  /// block. Returns the bytes reserved.
  uint64_t (*reserve)(int index, uint64_t bytes);
};

/// The plugin, or nullptr with the reason in `*why` (not built with CUDA,
/// library not found, dlopen error).
const CudaPlugin* GetCudaPlugin(std::string* why = nullptr);

/// The plugin as the checkpoint loader's device memory (base/device_memory.h):
/// `check` fails with the reason the plugin is unavailable, `reserve` is the
/// caching-allocator warmup.
DeviceMemory CudaDeviceMemory();

/// True when this machine shows NVIDIA devices (/dev/nvidiactl), checked
/// without loading any CUDA library.
bool MachineHasNvidiaDevices();

}  // namespace weft
