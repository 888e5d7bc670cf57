// Deferred weight gradients: the backward split of zero-bubble pipeline
// schedules (ZB-H1, as Megatron's WeightGradStore does it).
//
// While `DeferWeightGrads::Recording` is on, Linear layers build a graph node
// whose backward can leave the weight gradient for later: inside a
// `DeferWeightGrads::Capture`, backward computes the input gradient (and
// every other parameter's gradient) at once and records, per Linear, the
// product that gives its weight and bias gradients; `Apply` computes them
// later and accumulates them through autograd (so gradient hooks run as for
// any gradient). Outside a capture the node computes everything, as
// at::linear's backward does. Model files know nothing of it.
//
//   { DeferWeightGrads::Recording on; out = model->Forward(inputs); }
//   DeferWeightGrads::Capture capture;
//   out.backward(grad);                        // I: input grads now
//   DeferredWeightGrads w = capture.Take();
//   ...;                                       // other work (the bubble)
//   w.Apply();                                 // W: the weight grads
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <utility>
#include <vector>

namespace weft {

/// The weight gradients one backward left for later.
class DeferredWeightGrads {
 public:
  struct Entry {
    at::Tensor parameter;
    std::function<at::Tensor()> gradient;
  };
  void Add(Entry entry) { entries_.push_back(std::move(entry)); }
  bool empty() const { return entries_.empty(); }
  size_t size() const { return entries_.size(); }
  /// Computes every gradient and accumulates it into its parameter (one
  /// autograd call; parameter hooks run).
  void Apply();

 private:
  std::vector<Entry> entries_;
};

class DeferWeightGrads {
 public:
  /// While alive, Linear layers build deferrable nodes (forward).
  class Recording {
   public:
    Recording();
    ~Recording();
    Recording(const Recording&) = delete;
    Recording& operator=(const Recording&) = delete;
  };
  /// While alive, deferrable nodes record their weight gradients here
  /// instead of computing them (backward). Not nestable.
  class Capture {
   public:
    Capture();
    ~Capture();
    Capture(const Capture&) = delete;
    Capture& operator=(const Capture&) = delete;
    DeferredWeightGrads Take();

   private:
    DeferredWeightGrads grads_;
  };
  static bool recording();
  /// The capture in progress, or nullptr.
  static DeferredWeightGrads* capture();
};

/// y = x W^T + b whose weight gradient can be deferred (see above).
at::Tensor DeferrableLinear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

}  // namespace weft
