// AdamW with fp32 state (and fp32 master weights for low-precision
// parameters), transformers' learning-rate schedules, and gradient clipping
// by the global norm over tensor-parallel shards.
//
// AdamW is torch.optim.AdamW (decoupled weight decay, bias correction, eps
// outside the square root); parameters can opt out of weight decay (the
// trainer exempts norms and biases, as transformers' Trainer does). It works
// on whatever tensors it is given, so with tensor parallelism each rank
// updates its own shards.
//
//   AdamWOptions options;
//   options.weight_decay = 0.1;
//   AdamW opt({{"w", w, /*decay=*/true}}, options);
//   loss.backward();
//   opt.Step(LearningRate(schedule, step));
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "base/slice.h"
#include "parallel/process_group.h"

namespace weft {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;
};

class AdamW {
 public:
  struct Param {
    std::string name;
    at::Tensor tensor;  // the model's parameter (any float dtype)
    bool decay = true;  // apply weight decay
  };

  AdamW(std::vector<Param> params, AdamWOptions options);

  /// One update with learning rate `lr` from each parameter's .grad()
  /// (parameters without a gradient are skipped). The update runs in fp32
  /// on the master copy, which is then written back to the parameter.
  void Step(double lr);
  /// Clears every parameter's gradient.
  void ZeroGrad();

  int64_t steps() const { return steps_; }
  const std::vector<Param>& params() const { return params_; }

  /// The state as named tensors: `exp_avg.<name>`, `exp_avg_sq.<name>`, and
  /// `master.<name>` for parameters whose dtype is not float32.
  std::vector<std::pair<std::string, at::Tensor>> StateTensors() const;
  /// Restores StateTensors() and the step count; errors name the tensor.
  absl::Status LoadState(const std::map<std::string, at::Tensor>& state, int64_t steps);

 private:
  struct Slot {
    at::Tensor master;  // fp32 (the parameter itself when it is fp32)
    at::Tensor exp_avg, exp_avg_sq;
  };
  std::vector<Param> params_;
  std::vector<Slot> slots_;
  AdamWOptions options_;
  int64_t steps_ = 0;
};

struct ScheduleOptions {
  double lr = 3e-4;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  std::string decay = "cosine";  // cosine, linear or constant
  double min_lr_ratio = 0.0;
};

/// The learning rate of optimizer step `step` (0-based), as transformers'
/// schedulers give it: linear warmup from 0 over warmup_steps, then cosine
/// (get_cosine_with_min_lr_schedule_with_warmup), linear
/// (get_linear_schedule_with_warmup, down to min_lr_ratio) or constant.
double LearningRate(const ScheduleOptions& options, int64_t step);

/// How many ranks of a group hold identical copies of a gradient: `copies`
/// for every element, or, where `rows` is set, for those rows of dim 0 only,
/// the other rows being this rank's alone (a packed q | k | v whose KV heads
/// are replicated: base/placement.h's replicated_rows).
///
///   GradCopies all(2);                  // every element held twice
///   GradCopies kv(2, {{16, 24}});       // rows 16..23 twice, the rest once
struct GradCopies {
  GradCopies(int copies = 1, std::vector<Range> rows = {})  // NOLINT: an int converts
      : copies(copies), rows(std::move(rows)) {}
  int copies;
  std::vector<Range> rows;
};

/// The global L2 norm of the gradients of `params` over the tensor-parallel
/// `group`, counting every parameter once: `replication[i]` is how many
/// ranks of `group` hold identical copies of params[i]'s gradient (the group
/// size for replicated parameters, 1 for shards). Then scales every gradient
/// by min(1, max_norm / (norm + 1e-6)) when max_norm > 0, as
/// torch.nn.utils.clip_grad_norm_ does. Returns the norm before clipping.
/// `more_groups` add their members' squares: the other pipeline stages' (a
/// tied embedding held by two stages counts 2 in `replication`), the other
/// dp_shard ranks' pieces.
double ClipGradNorm(const std::vector<at::Tensor>& params,
                    const std::vector<GradCopies>& replication, const ProcessGroup* group,
                    double max_norm, const std::vector<const ProcessGroup*>& more_groups = {});

}  // namespace weft
