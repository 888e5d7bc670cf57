// -----------------------------------------------------------------------------
// File: base/device_memory.h
// -----------------------------------------------------------------------------
//
// DeviceMemory: how a layer below the runtime gets memory on an accelerator
// without depending on it. The checkpoint loader reserves each device's
// total at once through it; the runtime provides the CUDA one
// (parallel/cuda_plugin.h, `CudaDeviceMemory()`), and whoever builds a model
// on a GPU passes it down (cli/, trainer/).
//
//   LoadOptions options;
//   options.device_memory = CudaDeviceMemory();
//   ASSIGN_OR_RETURN(LoadResult r, LoadCheckpoint(*ckpt, requests, options));
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <functional>

#include "absl/status/status.h"

namespace weft {

struct DeviceMemory {
  /// OK when tensors can be placed on `device`; else one line saying why
  /// (no GPU, library missing). Unset: only the CPU is available.
  std::function<absl::Status(c10::Device device)> check;
  /// Reserves `bytes` on `device` at once and hands them to the allocator's
  /// cache (the caching-allocator warmup); returns the bytes reserved.
  std::function<uint64_t(c10::Device device, uint64_t bytes)> reserve;
};

}  // namespace weft
