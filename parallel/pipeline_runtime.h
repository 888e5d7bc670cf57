// -----------------------------------------------------------------------------
// File: parallel/pipeline_runtime.h
// -----------------------------------------------------------------------------
//
// The pipeline runtime: executes this rank's list of a PipelineSchedule
// (pipeline_schedule.h) over c10d send/recv, one optimizer step's worth of
// micro-batches. The stages' computation comes from the caller (the trainer
// runs the model's stage through its module gates); the runtime owns the
// autograd between stages: each stage's input is a leaf that requires grad,
// its output is sent on, and the gradient that comes back drives backward.
//
//   F (forward):   receive the activation from the previous stage (none on
//                  the first), run the stage, send the output on (the last
//                  stage returns the loss to backpropagate instead);
//   B (backward):  receive the output's gradient (the last stage starts from
//                  its loss), backpropagate, send the input's gradient back;
//   I / W (zero-bubble): B split into the input gradient (autograd::grad,
//                  the graph kept) and, later, the weight gradient.
//
// Sends are asynchronous (posted, waited at the end of the step); receives
// are posted when the action needs them and waited with a timeout, so a
// schedule the simulator accepts cannot deadlock, and a peer that never
// sends gives one line naming the stage, the micro-batch, what was awaited
// and the peer, never a hang. Messages carry a tag per (kind, stage,
// micro-batch), so two stages on one pair of ranks never mix. Stages on the
// same rank (V-shaped mapping) hand tensors over in memory.
//
//   PipelineStageFns fns;
//   fns.forward = [&](int stage, int mb, const at::Tensor& input) { ... };
//   fns.parameters = [&](int stage) { return params_of[stage]; };
//   fns.activation_shape = {micro_batch, seq_len, hidden};
//   RunPipelineStep(schedule, pp_group, fns, options);
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "parallel/pipeline_schedule.h"
#include "parallel/process_group.h"

namespace weft {

struct PipelineStageFns {
  /// Runs `stage` on micro-batch `mb`. `input` is the previous stage's
  /// activation (a leaf requiring grad), undefined on the first stage.
  /// Returns the activation to send on, or on the last stage the 0-d loss to
  /// backpropagate (already scaled as the step's loss needs).
  std::function<at::Tensor(int stage, int mb, const at::Tensor& input)> forward;
  /// The parameters of `stage` (the weight-gradient step W computes them).
  std::function<std::vector<at::Tensor>(int stage)> parameters;
  /// Zero-bubble schedules (I and W actions): runs `backward` (the stage's
  /// whole backward) with the weight gradients deferred, and returns what
  /// computes them later, at W (models/deferred_weight_grads.h). Unset: I
  /// computes only the input gradient (autograd::grad, graph kept) and W
  /// backpropagates again to the weights.
  std::function<std::function<void()>(const std::function<void()>& backward)> defer_weight_grads;
  /// The shape and dtype of the activation between stages.
  std::vector<int64_t> activation_shape;
  at::ScalarType dtype = at::kFloat;
  c10::Device device = c10::Device(c10::kCPU);
};

/// When one action ran (steady-clock seconds, comparable between the
/// processes of one machine) and how long it waited for a peer's tensor.
struct PipelineActionTiming {
  std::string action;  // "0F3"
  double start = 0, end = 0;
  double wait = 0;  // inside [start, end): waiting for a receive
};

struct PipelineRunOptions {
  /// Longest wait for one activation or gradient from a peer.
  std::chrono::milliseconds timeout = std::chrono::seconds(600);
  /// If set, every action's timing is appended here (benchmarks: the
  /// measured bubble); the final wait for the sends is a "send" entry.
  std::vector<PipelineActionTiming>* timings = nullptr;
};

/// Runs this rank's actions of `schedule` (`pp.rank()` is the schedule's
/// rank). Throws std::runtime_error with one line on a timeout or a failed
/// peer. Parameter gradients accumulate (a sum over micro-batches).
void RunPipelineStep(const PipelineSchedule& schedule, const ProcessGroup& pp,
                     const PipelineStageFns& fns, const PipelineRunOptions& options = {});

}  // namespace weft
