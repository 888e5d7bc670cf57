// The per-rank streaming loader: each rank reads only its slices of a
// checkpoint, converts dtypes on the way, and lands every parameter in one
// pre-reserved block of memory per device.
//
//   std::vector<LoadRequest> requests = {
//       {"model.layers.0.self_attn.q_proj.weight", at::kBFloat16, at::kCPU,
//        /*slice=*/{{{0, 2048}}, {}}},                 // rows [0, 2048), all columns
//       {"model.layers.0.mlp.gate_up_proj.weight", at::kBFloat16, at::kCPU,
//        {{{0, 1024}, {8192, 9216}}, {}}},             // two ranges: a packed shard
//   };
//   ASSIGN_OR_RETURN(LoadResult r, LoadCheckpoint(*ckpt, requests));
//   std::cout << r.stats.gb_per_s << " GB/s\n";
//
// How it reads: files in order, tensors in file order. A slice whose bytes
// are one contiguous run in the file (dim-0 rows, or whole tensors) of the
// requested dtype is read with pread straight into its destination (4 MiB
// jobs spread over the threads, each first backing its destination with memory
// in one madvise(MADV_POPULATE_WRITE)), so no file page is mapped into the
// process. Other slices (dtype conversion, ranges on inner dims) copy from
// the file's mapping, touching only the strides they need, and release those
// pages when done. Peak RSS therefore stays near this rank's share, not the
// checkpoint.
//
// Zero-copy (LoadRequest::zero_copy): a tensor nothing will write is a view
// of the file's mapping when its bytes are one aligned run in the requested
// dtype: no memory of its own, no copy, and the page cache's pages shared by
// every process of the node that maps the file. Trained parameters are
// copied: they are written every step, and a private mapping would copy each
// page on its first write anyway (in the first step, page by page).
//
// Memory: the total bytes per device are reserved at once before copying.
// On CPU that is one arena the parameters are views of; on CUDA one block
// through LibTorch's caching allocator (LoadOptions::device_memory), released at once so every
// parameter is carved from it (only what fits in free memory plus memory already reserved but
// unused).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "base/device_memory.h"
#include "base/slice.h"
#include "checkpoint/checkpoint_dir.h"

namespace weft {

struct LoadRequest {
  std::string name;
  /// Target dtype; c10::nullopt keeps the file's.
  c10::optional<at::ScalarType> dtype;
  c10::Device device = c10::Device(c10::kCPU);
  Slice slice;
  /// Nothing will write the tensor (inference, a frozen LoRA base): it may
  /// be a view of the file's mapping instead of a copy. Taken on the CPU
  /// when the slice is one contiguous run of the file's bytes (whole
  /// tensors, dim-0 rows of a TP shard) already in the requested dtype and
  /// aligned to its element size; anything else is copied as usual. The
  /// view keeps the file mapped; ranks on one node share its page-cache
  /// pages. The mapping is private: a write would copy the page it touches
  /// (never the file), so a mistake costs memory, not data.
  bool zero_copy = false;
};

struct LoadStats {
  uint64_t bytes_read = 0;      // source bytes copied out of the files
  uint64_t bytes_pread = 0;     // of those, read with pread straight into place
  uint64_t bytes_mapped = 0;    // views of the files' mappings (zero_copy): not copied
  uint64_t bytes_loaded = 0;    // bytes of the resulting tensors
  uint64_t bytes_reserved = 0;  // reserved up front, all devices
  double seconds = 0;           // the whole call: validation, reservation, copying
  double gb_per_s = 0;          // bytes_read / seconds / 1e9
  int64_t peak_rss_bytes = 0;   // the process's peak resident set (VmHWM)
};

struct LoadResult {
  std::map<std::string, at::Tensor> tensors;
  LoadStats stats;
};

struct LoadOptions {
  /// Threads for the parallel preads (0: LibTorch's intra-op thread count).
  int threads = 0;
  /// Memory on devices other than the CPU (unset: CPU requests only).
  DeviceMemory device_memory;
};

/// Validates every request against the checkpoint (name present, one range
/// list per dim, ranges inside the dim) before allocating anything; errors
/// name the tensor and the value found vs expected.
absl::StatusOr<LoadResult> LoadCheckpoint(const Checkpoint& checkpoint,
                                          const std::vector<LoadRequest>& requests,
                                          const LoadOptions& options = {});

/// The process's peak resident set size in bytes (VmHWM), or -1.
int64_t PeakRssBytes();

/// The process's resident set size now (VmRSS), or -1.
int64_t CurrentRssBytes();

/// Measures the peak resident memory of what runs between construction and
/// Peak(): glibc's free heap memory is returned to the system first (or it
/// would be reused unseen) and VmHWM is reset (/proc/self/clear_refs).
///
///   PeakRssMeter meter;
///   Reshard();
///   int64_t extra = meter.Peak();   // bytes above the resident set at the start
class PeakRssMeter {
 public:
  PeakRssMeter();
  /// The peak resident set since construction minus the resident set then,
  /// or -1 where /proc does not allow it.
  int64_t Peak() const;

 private:
  int64_t start_ = -1;
};

}  // namespace weft
