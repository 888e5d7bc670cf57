// Deferred weight gradients: a Linear stack's backward inside a capture
// gives the input gradient and the other parameters' gradients at once, no
// Linear weight gradient until Apply, and then the same gradients as a plain
// backward, gradient hooks included.
#include "models/deferred_weight_grads.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "gtest/gtest.h"
#include "models/layers.h"

namespace weft {
namespace {

struct Stack {
  std::shared_ptr<Linear> a, b;
  std::shared_ptr<RMSNorm> norm;
  Stack() {
    a = std::make_shared<Linear>(LinearOptions(6, 5).bias(true).dtype(at::kDouble));
    b = std::make_shared<Linear>(LinearOptions(5, 4).bias(false).dtype(at::kDouble));
    norm = std::make_shared<RMSNorm>(5, 1e-6, at::kDouble);
    a->ReplaceParameter("weight", (at::arange(30, at::kDouble).view({5, 6}) * 0.1).sin());
    a->ReplaceParameter("bias", at::arange(5, at::kDouble).cos());
    b->ReplaceParameter("weight", (at::arange(20, at::kDouble).view({4, 5}) * 0.2).cos());
    norm->ReplaceParameter("weight", at::arange(5, at::kDouble) * 0.1 + 1);
    for (at::Tensor p : {a->weight, a->bias, b->weight, norm->weight}) p.requires_grad_(true);
  }
  at::Tensor operator()(const at::Tensor& x) { return b->forward(norm->forward(a->forward(x))); }
};

TEST(DeferredWeightGrads, CaptureThenApplyEqualsAPlainBackward) {
  at::Tensor x0 = (at::arange(2 * 3 * 6, at::kDouble).view({2, 3, 6}) * 0.05).sin();
  Stack plain, deferred;
  at::Tensor xp = x0.clone().requires_grad_(true), xd = x0.clone().requires_grad_(true);
  plain(xp).pow(2).sum().backward();
  int hook_calls = 0;
  deferred.b->weight.register_hook([&hook_calls](at::Tensor g) {
    ++hook_calls;
    return g * 2;  // a TP-style gradient hook must still apply
  });
  at::Tensor out;
  {
    DeferWeightGrads::Recording recording;
    out = deferred(xd).pow(2).sum();
  }
  DeferredWeightGrads grads;
  {
    DeferWeightGrads::Capture capture;
    out.backward();
    grads = capture.Take();
  }
  ASSERT_TRUE(xd.grad().defined());
  EXPECT_TRUE(at::allclose(xd.grad(), xp.grad(), 1e-12, 1e-12));
  EXPECT_TRUE(at::allclose(deferred.norm->weight.grad(), plain.norm->weight.grad(), 1e-12, 1e-12));
  EXPECT_FALSE(deferred.a->weight.grad().defined());
  EXPECT_FALSE(deferred.b->weight.grad().defined());
  EXPECT_EQ(grads.size(), 3u);  // a.weight, a.bias, b.weight
  grads.Apply();
  EXPECT_EQ(hook_calls, 1);
  EXPECT_TRUE(at::allclose(deferred.a->weight.grad(), plain.a->weight.grad(), 1e-12, 1e-12));
  EXPECT_TRUE(at::allclose(deferred.a->bias.grad(), plain.a->bias.grad(), 1e-12, 1e-12));
  EXPECT_TRUE(at::allclose(deferred.b->weight.grad(), plain.b->weight.grad() * 2, 1e-12, 1e-12));
  // Outside a capture the deferrable node computes everything at once.
  Stack again;
  at::Tensor y;
  {
    DeferWeightGrads::Recording recording;
    y = again(x0).pow(2).sum();
  }
  y.backward();
  EXPECT_TRUE(at::allclose(again.a->weight.grad(), plain.a->weight.grad(), 1e-12, 1e-12));
}

}  // namespace
}  // namespace weft
