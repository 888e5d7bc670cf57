#include "trainer/optimizer.h"

#include <ATen/ATen.h>

#include <cmath>

#include "gtest/gtest.h"

namespace weft {
namespace {

// torch.optim.AdamW, written out for one scalar.
struct Reference {
  double p, m = 0, v = 0;
  int t = 0;
  void Step(double g, double lr, double b1, double b2, double eps, double wd) {
    ++t;
    p *= 1 - lr * wd;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    const double mhat = m / (1 - std::pow(b1, t)), vhat = v / (1 - std::pow(b2, t));
    p -= lr * mhat / (std::sqrt(vhat) + eps);
  }
};

TEST(AdamW, MatchesTorchAdamW) {
  at::Tensor w = at::tensor({1.0, -2.0}, at::kFloat).set_requires_grad(true);
  at::Tensor b = at::tensor({0.5}, at::kFloat).set_requires_grad(true);
  AdamW opt({{"w", w, true}, {"b", b, false}}, {0.9, 0.95, 1e-8, 0.1});
  Reference r0{1.0}, r1{-2.0}, rb{0.5};
  for (int step = 0; step < 5; ++step) {
    const double lr = 0.01 * (step + 1);
    at::Tensor loss = (w * w * w).sum() + (b * 3).sum();
    loss.backward();
    const double g0 = 3 * r0.p * r0.p, g1 = 3 * r1.p * r1.p;
    r0.Step(g0, lr, 0.9, 0.95, 1e-8, 0.1);
    r1.Step(g1, lr, 0.9, 0.95, 1e-8, 0.1);
    rb.Step(3, lr, 0.9, 0.95, 1e-8, 0.0);  // no decay
    opt.Step(lr);
    opt.ZeroGrad();
    EXPECT_NEAR(w[0].item<double>(), r0.p, 1e-6);
    EXPECT_NEAR(w[1].item<double>(), r1.p, 1e-6);
    EXPECT_NEAR(b[0].item<double>(), rb.p, 1e-6);
    EXPECT_FALSE(w.grad().defined());
  }
  EXPECT_EQ(opt.steps(), 5);
}

TEST(AdamW, Bf16ParametersKeepFp32MasterWeights) {
  at::Tensor w = at::full({4}, 1.0, at::kBFloat16).set_requires_grad(true);
  AdamW opt({{"w", w, false}}, {0.9, 0.999, 1e-8, 0.0});
  for (int i = 0; i < 10; ++i) {
    w.mutable_grad() = at::full({4}, 1.0, at::kBFloat16);
    opt.Step(1e-4);  // each step is below bf16's resolution at 1.0
  }
  auto state = opt.StateTensors();
  ASSERT_EQ(state.size(), 3u);
  EXPECT_EQ(state[2].first, "master.w");
  EXPECT_NEAR(state[2].second[0].item<double>(), 1.0 - 10 * 1e-4, 1e-6);
  EXPECT_EQ(state[2].second.scalar_type(), at::kFloat);
}

TEST(AdamW, StateRoundTripAndErrors) {
  at::Tensor w = at::ones({2, 3}).set_requires_grad(true);
  AdamW a({{"w", w, true}}, {});
  w.mutable_grad() = at::ones({2, 3});
  a.Step(0.1);
  std::map<std::string, at::Tensor> state;
  for (auto& [k, v] : a.StateTensors()) state[k] = v.clone();
  at::Tensor w2 = at::ones({2, 3}).set_requires_grad(true);
  AdamW b({{"w", w2, true}}, {});
  ASSERT_TRUE(b.LoadState(state, a.steps()).ok());
  w.mutable_grad() = at::full({2, 3}, 0.5);
  w2.mutable_grad() = at::full({2, 3}, 0.5);
  w2.detach().copy_(w.detach());
  a.Step(0.1);
  b.Step(0.1);
  EXPECT_TRUE(at::equal(w, w2));
  state.erase("exp_avg_sq.w");
  EXPECT_EQ(b.LoadState(state, 1).message(), "optimizer state has no tensor 'exp_avg_sq.w'");
  state["exp_avg_sq.w"] = at::zeros({3});
  EXPECT_EQ(b.LoadState(state, 1).message(),
            "optimizer state 'exp_avg_sq.w' has shape [3] but the parameter's is [2, 3]");
}

TEST(LearningRate, TransformersSchedules) {
  ScheduleOptions o{1.0, 10, 110, "cosine", 0.0};
  EXPECT_DOUBLE_EQ(LearningRate(o, 0), 0.0);
  EXPECT_DOUBLE_EQ(LearningRate(o, 5), 0.5);
  EXPECT_DOUBLE_EQ(LearningRate(o, 10), 1.0);
  EXPECT_NEAR(LearningRate(o, 60), 0.5, 1e-12);
  EXPECT_NEAR(LearningRate(o, 110), 0.0, 1e-12);
  o.min_lr_ratio = 0.1;
  EXPECT_NEAR(LearningRate(o, 110), 0.1, 1e-12);
  EXPECT_NEAR(LearningRate(o, 60), 0.55, 1e-12);
  o = {2.0, 0, 100, "linear", 0.0};
  EXPECT_DOUBLE_EQ(LearningRate(o, 0), 2.0);
  EXPECT_DOUBLE_EQ(LearningRate(o, 25), 1.5);
  o.decay = "constant";
  EXPECT_DOUBLE_EQ(LearningRate(o, 99), 2.0);
}

TEST(ClipGradNorm, CountsReplicatedParametersOnce) {
  at::Tensor a = at::zeros({2}).set_requires_grad(true), b = at::zeros({1}).set_requires_grad(true);
  a.mutable_grad() = at::tensor({3.0, 0.0});
  b.mutable_grad() = at::tensor({4.0});
  // No group: replication divides as if the other copies were summed in.
  EXPECT_NEAR(ClipGradNorm({a, b}, {1, 1}, nullptr, 0), 5.0, 1e-9);
  EXPECT_NEAR(ClipGradNorm({a, b}, {1, 1}, nullptr, 1.0), 5.0, 1e-9);
  EXPECT_NEAR(a.grad()[0].item<double>(), 3.0 / (5.0 + 1e-6), 1e-9);
  EXPECT_NEAR(b.grad()[0].item<double>(), 4.0 / (5.0 + 1e-6), 1e-9);
}

// A packed q | k | v with replicated KV heads: only its KV rows are held by
// several ranks, so only their squares are divided.
TEST(ClipGradNorm, CountsReplicatedRowsOnce) {
  at::Tensor w = at::zeros({4, 1}).set_requires_grad(true);
  w.mutable_grad() = at::tensor({1.0, 2.0, 4.0, 2.0}).view({4, 1});
  // Rows 1 and 2 held by 2 ranks: 1 + (4 + 16) / 2 + 4 = 15.
  EXPECT_NEAR(ClipGradNorm({w}, {GradCopies(2, {{1, 3}})}, nullptr, 0), std::sqrt(15.0), 1e-9);
  // Rows past the end are ignored; rows before 0 too (a later dp_shard piece).
  EXPECT_NEAR(ClipGradNorm({w}, {GradCopies(2, {{-2, 1}, {3, 9}})}, nullptr, 0),
              std::sqrt(0.5 + 4 + 16 + 2), 1e-9);
}

}  // namespace
}  // namespace weft
