// MoeExperts: the batched computation (tokens grouped per expert, one matrix
// product per projection for all experts) equals transformers' loop over
// experts, forward and backward, including experts no token chose and
// every token choosing the same expert.
#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "models/layers.h"

namespace weft {
namespace {

struct Run {
  at::Tensor out, grad_x, grad_weights, grad_gate_up, grad_down;
};

Run Compute(bool batched, const at::Tensor& x, const at::Tensor& index, const at::Tensor& weights,
            const at::Tensor& gate_up, const at::Tensor& down) {
  MoeExperts experts(MoeExpertsOptions(gate_up.size(0), x.size(1), down.size(2)).batched(batched));
  experts.ReplaceParameter("gate_up_proj", gate_up.clone().requires_grad_(true));
  experts.ReplaceParameter("down_proj", down.clone().requires_grad_(true));
  at::Tensor xin = x.clone().requires_grad_(true), win = weights.clone().requires_grad_(true);
  Run r;
  r.out = experts.forward(xin, index, win);
  (r.out * r.out).sum().backward();
  r.grad_x = xin.grad();
  r.grad_weights = win.grad();
  r.grad_gate_up = experts.gate_up_proj.grad();
  r.grad_down = experts.down_proj.grad();
  return r;
}

void ExpectSame(const Run& a, const Run& b) {
  EXPECT_TRUE(at::allclose(a.out, b.out, 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(a.grad_x, b.grad_x, 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(a.grad_weights, b.grad_weights, 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(a.grad_gate_up, b.grad_gate_up, 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(a.grad_down, b.grad_down, 1e-5, 1e-6));
}

TEST(MoeExperts, BatchedEqualsTheLoopOverExperts) {
  at::manual_seed(0);
  const int64_t n = 37, h = 16, i = 8, e = 6, k = 2;
  at::Tensor x = at::randn({n, h}), gate_up = at::randn({e, 2 * i, h}) * 0.3,
             down = at::randn({e, h, i}) * 0.3;
  // Routing that leaves expert 5 unused.
  auto [weights, index] = at::softmax(at::randn({n, e - 1}), -1).topk(k, -1);
  ExpectSame(Compute(true, x, index, weights, gate_up, down),
             Compute(false, x, index, weights, gate_up, down));
  // Every token on experts 2 and 3 (one group holds all of them).
  at::Tensor same = at::stack({at::full({n}, 2, at::kLong), at::full({n}, 3, at::kLong)}, 1);
  ExpectSame(Compute(true, x, same, weights, gate_up, down),
             Compute(false, x, same, weights, gate_up, down));
}

}  // namespace
}  // namespace weft
