#include "models/deferred_weight_grads.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <atomic>

namespace weft {
namespace {

// Process-wide, not thread-local: CUDA backward runs on the engine's device
// threads. The pipeline runtime drives one micro-batch at a time.
std::atomic<int> g_recording{0};
std::atomic<DeferredWeightGrads*> g_capture{nullptr};

// The parameters of one Linear, passed to the function as a plain struct:
// autograd gets no edge to them, so the first backward never touches their
// AccumulateGrad nodes (or their hooks); their gradients enter autograd when
// computed (at once outside a capture, at Apply inside one).
struct LinearParams {
  at::Tensor weight, bias;
};

void Accumulate(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads) {
  if (!params.empty()) torch::autograd::backward(params, grads);
}

class LinearFunction : public torch::autograd::Function<LinearFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            LinearParams params) {
    ctx->save_for_backward({x});
    ctx->saved_data["weight"] = params.weight;
    ctx->saved_data["has_bias"] = params.bias.defined();
    if (params.bias.defined()) ctx->saved_data["bias"] = params.bias;
    return at::linear(x, params.weight, params.bias);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor x = ctx->get_saved_variables()[0];
    const at::Tensor weight = ctx->saved_data["weight"].toTensor();
    const at::Tensor bias =
        ctx->saved_data["has_bias"].toBool() ? ctx->saved_data["bias"].toTensor() : at::Tensor();
    const at::Tensor grad = grads[0];
    // [*, out] and [*, in] as matrices: grad_w = grad^T x, grad_b = sum grad.
    auto grad_w = [grad, x]() {
      return grad.reshape({-1, grad.size(-1)}).t().mm(x.reshape({-1, x.size(-1)}));
    };
    auto grad_b = [grad]() { return grad.reshape({-1, grad.size(-1)}).sum(0); };
    DeferredWeightGrads* capture = DeferWeightGrads::capture();
    std::vector<at::Tensor> params, now;
    if (weight.requires_grad()) {
      if (capture)
        capture->Add({weight, grad_w});
      else
        params.push_back(weight), now.push_back(grad_w());
    }
    if (bias.defined() && bias.requires_grad()) {
      if (capture)
        capture->Add({bias, grad_b});
      else
        params.push_back(bias), now.push_back(grad_b());
    }
    Accumulate(params, now);  // a nested backward: the parameters' hooks run
    return {grad.matmul(weight), at::Tensor()};
  }
};

}  // namespace

DeferWeightGrads::Recording::Recording() { ++g_recording; }
DeferWeightGrads::Recording::~Recording() { --g_recording; }

DeferWeightGrads::Capture::Capture() {
  DeferredWeightGrads* expected = nullptr;
  TORCH_CHECK(g_capture.compare_exchange_strong(expected, &grads_),
              "DeferWeightGrads::Capture does not nest");
}
DeferWeightGrads::Capture::~Capture() {
  DeferredWeightGrads* mine = &grads_;
  g_capture.compare_exchange_strong(mine, nullptr);
}
DeferredWeightGrads DeferWeightGrads::Capture::Take() {
  DeferredWeightGrads out = std::move(grads_);
  grads_ = DeferredWeightGrads();
  return out;
}

bool DeferWeightGrads::recording() { return g_recording.load() > 0; }
DeferredWeightGrads* DeferWeightGrads::capture() { return g_capture.load(); }

void DeferredWeightGrads::Apply() {
  std::vector<at::Tensor> parameters, gradients;
  for (Entry& e : entries_) {
    parameters.push_back(e.parameter);
    gradients.push_back(e.gradient());
  }
  entries_.clear();
  Accumulate(parameters, gradients);
}

at::Tensor DeferrableLinear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  // Without a gradient path through x there is nothing to split.
  if (!x.requires_grad()) return at::linear(x, weight, bias);
  return LinearFunction::apply(x, LinearParams{weight, bias});
}

}  // namespace weft
