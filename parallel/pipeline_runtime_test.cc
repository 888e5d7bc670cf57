// The pipeline runtime on 2 CPU/Gloo ranks: every schedule gives the
// parameter gradients of the same computation in one process, and a peer
// that never sends gives one line naming the stage, micro-batch and peer
// within the timeout instead of a hang.
#include "parallel/pipeline_runtime.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <chrono>
#include <thread>

#include "gtest/gtest.h"
#include "parallel/runtime.h"
#include "tests/multiprocess.h"

namespace weft {
namespace {

using testing::RankResults;
using testing::RunOptions;
using testing::RunRanks;

constexpr int kMicro = 4;
constexpr int64_t kWidth = 3;

// Stage s: x -> tanh(x W_s + b_s); the last stage's loss is the sum of
// squares of its output, times 1/m (a mean over micro-batches).
at::Tensor Weight(int stage) {
  return (at::arange(kWidth * kWidth, at::kDouble).view({kWidth, kWidth}) * 0.1 + stage)
      .sin()
      .requires_grad_(true);
}
at::Tensor Bias(int stage) {
  return (at::arange(kWidth, at::kDouble) + stage).cos().requires_grad_(true);
}
at::Tensor Input(int mb) {
  return (at::arange(2 * kWidth, at::kDouble).view({2, kWidth}) * 0.3 + mb).sin();
}

// Runs `schedule` (p = 2) and compares every held stage's gradients with
// one process's.
void CheckSchedule(const std::string& name, int stages_per_rank) {
  auto rt = testing::InitCpuRuntime();
  PipelineShape shape;
  shape.schedule = name;
  shape.ranks = 2;
  shape.stages_per_rank = stages_per_rank;
  shape.microbatches = kMicro;
  auto schedule = MakeSchedule(shape);
  ASSERT_TRUE(schedule.ok()) << schedule.status();
  const int stages = schedule->num_stages();
  std::vector<at::Tensor> w, b;
  for (int s = 0; s < stages; ++s) w.push_back(Weight(s)), b.push_back(Bias(s));
  PipelineStageFns fns;
  fns.forward = [&](int stage, int mb, const at::Tensor& input) {
    at::Tensor x = stage == 0 ? Input(mb) : input;
    at::Tensor y = at::tanh(at::matmul(x, w[stage]) + b[stage]);
    return stage == stages - 1 ? y.pow(2).sum() / kMicro : y;
  };
  fns.parameters = [&](int stage) { return std::vector<at::Tensor>{w[stage], b[stage]}; };
  fns.activation_shape = {2, kWidth};
  fns.dtype = at::kDouble;
  RunPipelineStep(*schedule, rt->world(), fns);
  // One process: the same computation, whole.
  std::vector<at::Tensor> rw, rb;
  for (int s = 0; s < stages; ++s) rw.push_back(Weight(s)), rb.push_back(Bias(s));
  at::Tensor loss = at::zeros({}, at::kDouble);
  for (int mb = 0; mb < kMicro; ++mb) {
    at::Tensor x = Input(mb);
    for (int s = 0; s < stages; ++s) x = at::tanh(at::matmul(x, rw[s]) + rb[s]);
    loss = loss + x.pow(2).sum() / kMicro;
  }
  loss.backward();
  for (int s = 0; s < stages; ++s) {
    if (schedule->RankOf(s) != rt->rank()) continue;
    ASSERT_TRUE(w[s].grad().defined()) << name << " stage " << s;
    EXPECT_TRUE(at::allclose(w[s].grad(), rw[s].grad(), 1e-12, 1e-12)) << name << " stage " << s;
    EXPECT_TRUE(at::allclose(b[s].grad(), rb[s].grad(), 1e-12, 1e-12)) << name << " stage " << s;
  }
}

TEST(PipelineRuntime, EveryScheduleGivesOneProcessGradients) {
  for (auto [name, v] : std::vector<std::pair<std::string, int>>{
           {"GPipe", 1}, {"1F1B", 1}, {"Interleaved1F1B", 2}, {"ZB1P", 1}}) {
    RankResults r = RunRanks(2, [name = name, v = v] { CheckSchedule(name, v); });
    EXPECT_TRUE(r.AllSucceeded()) << name << "\n" << r.Describe();
  }
}

// Rank 0 never runs its part: rank 1 names what it waited for, then stops.
TEST(PipelineRuntime, APeerThatNeverSendsIsNamedWithinTheTimeout) {
  RankResults r = RunRanks(2, [] {
    auto rt = testing::InitCpuRuntime();
    PipelineShape shape{"1F1B", 2, 1, 2};
    auto schedule = MakeSchedule(shape);
    ASSERT_TRUE(schedule.ok());
    PipelineStageFns fns;
    fns.forward = [](int, int, const at::Tensor& input) { return input * 2; };
    fns.parameters = [](int) { return std::vector<at::Tensor>{}; };
    fns.activation_shape = {2};
    PipelineRunOptions options;
    options.timeout = std::chrono::seconds(2);
    if (rt->rank() == 0) {
      std::this_thread::sleep_for(std::chrono::seconds(4));
      std::_Exit(0);  // never ran its part; the peer's timeout closed the connection
    }
    const auto start = std::chrono::steady_clock::now();
    try {
      RunPipelineStep(*schedule, rt->world(), fns, options);
      ADD_FAILURE() << "no timeout";
    } catch (const std::runtime_error& e) {
      EXPECT_EQ(std::string(e.what()),
                "pipeline: pp rank 1 (global rank 1) waited 2 s for the activation of "
                "micro-batch 0 for stage 1 from stage 0 on pp rank 0 (global rank 0); it never "
                "came (expected every pp rank to run the same schedule; the peer is stuck, dead "
                "or ran another one)");
    }
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(4));
    // Gloo closes the connection on a timeout: the group is done for.
    std::_Exit(::testing::Test::HasFailure() ? 1 : 0);
  });
  EXPECT_TRUE(r.AllSucceeded()) << r.Describe();
}

}  // namespace
}  // namespace weft
