// libweft_cuda.so: the CUDA functions of weft (see cuda_plugin.h). The only
// translation unit in weft that links LibTorch's CUDA libraries and NCCL.
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <algorithm>

#include "parallel/cuda_plugin.h"

namespace weft {
namespace {

int DeviceCount() { return static_cast<int>(c10::cuda::device_count()); }

void SetDevice(int index) { c10::cuda::set_device(static_cast<c10::DeviceIndex>(index)); }

c10::intrusive_ptr<c10d::Backend> CreateNccl(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                             int size, std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, options);
}

uint64_t Reserve(int index, uint64_t bytes) {
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(index));
  size_t free_bytes = 0, total_bytes = 0;
  C10_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  auto stats =
      c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(index));
  constexpr size_t kAggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  int64_t unused =
      stats.reserved_bytes[kAggregate].current - stats.allocated_bytes[kAggregate].current;
  uint64_t reserve = std::min<uint64_t>(bytes, free_bytes + std::max<int64_t>(unused, 0));
  if (reserve > 0) {
    // Allocated and freed at once: the block stays in the caching allocator.
    at::empty({static_cast<int64_t>(reserve)},
              at::TensorOptions().dtype(at::kByte).device(at::kCUDA, index));
  }
  return reserve;
}

const CudaPlugin kPlugin = {DeviceCount, SetDevice, CreateNccl, Reserve};

}  // namespace
}  // namespace weft

extern "C" __attribute__((visibility("default"))) const weft::CudaPlugin* weft_cuda_plugin() {
  return &weft::kPlugin;
}
