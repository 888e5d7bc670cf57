// Internal: the c10d backends behind one ProcessGroup. Only runtime.cc and
// process_group.cc include this (it pulls in c10d's headers).
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>

#include "parallel/process_group.h"

namespace weft {

struct ProcessGroup::Backends {
  /// Gloo: CPU tensors. Always present.
  c10::intrusive_ptr<c10d::Backend> gloo;
  /// NCCL: CUDA tensors. Null when LibTorch has no CUDA or the runtime is on CPU.
  c10::intrusive_ptr<c10d::Backend> nccl;
};

}  // namespace weft
