// Test helpers for tensor-parallel models: compare a sharded model with the
// single-process one (logits, loss, and every rank's gradient slice).
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>

#include "models/causal_lm.h"
#include "parallel/runtime.h"
#include "tests/multiprocess.h"  // InitCpuRuntime

namespace weft::testing {

/// This rank of a CPU (Gloo) job from the environment RunRanks sets, with
/// 60 s timeouts; nullptr (and a test failure) when it cannot join.

/// max |a - b| (0 for two empty tensors).
double MaxDiff(const at::Tensor& a, const at::Tensor& b);

/// The rows or columns of `full_grad` matching the rows or columns of
/// `full_value` that this rank's `local_value` holds, found by value (the
/// weights are random, so rows are unique). An empty shard matches an empty
/// slice; a whole tensor matches itself.
at::Tensor MatchingSlice(const at::Tensor& full_value, const at::Tensor& local_value,
                         const at::Tensor& full_grad);

/// Forward + backward of both models on `ids` (labels = ids): logits and loss
/// within 1e-5, every rank's gradient equal to its slice of the full
/// gradient (1e-4 rel, 1e-5 abs; frozen parameters must be frozen in both),
/// at least one parameter sharded.
void CompareWithSingleProcess(CausalLM& sharded, CausalLM& full, const at::Tensor& ids,
                              const std::string& what);

}  // namespace weft::testing
