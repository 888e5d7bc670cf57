// LoRA under tensor parallelism against one process: colwise bases (A
// replicated, B's rows cut), rowwise bases (A's columns cut, B replicated),
// packed q | k | v with a replicated KV head and packed gate | up (Phi-3 with
// one KV head); and the same comparison failing when the replicated factor's
// gradient sum is dropped.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "models/pretrained.h"
#include "parallel/runtime.h"
#include "plans/engine.h"
#include "plans/shipped_plans.h"
#include "plans/tp_testing.h"
#include "tests/multiprocess.h"
#include "trainer/lora.h"

namespace weft {
namespace {

using testing::CompareWithSingleProcess;
using testing::InitCpuRuntime;
using testing::MaxDiff;
using testing::RankResults;
using testing::RunRanks;

// B drawn whole from a fixed generator (the same on every rank), then cut as
// the adapter is: B = 0 would leave A without a gradient.
void RandomB(CausalLM& model) {
  at::NoGradGuard no_grad;
  for (auto& item : model.named_parameters()) {
    if (!absl::EndsWith(item.key(), ".lora_B.weight")) continue;
    const DTensorSpec* spec = ParameterPlacement(model, item.key());
    std::vector<int64_t> shape = spec != nullptr ? spec->global_shape : item.value().sizes().vec();
    at::Generator gen =
        at::make_generator<at::CPUGeneratorImpl>(std::hash<std::string>{}(item.key()));
    at::Tensor full = at::empty(shape).normal_(0, 0.05, gen);
    if (spec != nullptr && !spec->ranges.empty() && !spec->ranges[0].empty()) {
      std::vector<at::Tensor> rows;
      for (const Range& r : spec->ranges[0])
        rows.push_back(full.narrow(0, r.start, r.end - r.start));
      full = at::cat(rows, 0);
    }
    item.value().copy_(full);
  }
}

struct Models {
  std::shared_ptr<CausalLM> sharded, full;
};

Models Adapted(const std::string& dir, const Runtime& rt, LoraOptions o) {
  PretrainedOptions options;
  options.attn_implementation = "eager";
  auto plan = ResolvePlanArgument("auto", dir);
  EXPECT_TRUE(plan.ok()) << plan.status();
  auto sharded = FromPretrainedTensorParallel(dir, options, *plan, rt.world_group());
  EXPECT_TRUE(sharded.ok()) << sharded.status();
  auto full = FromPretrained(dir, options);
  EXPECT_TRUE(full.ok()) << full.status();
  EXPECT_TRUE(ApplyLora(**sharded, o, rt.world_group()).ok());
  o.sum_over_tp = true;
  EXPECT_TRUE(ApplyLora(**full, o, nullptr).ok());
  RandomB(**sharded);
  RandomB(**full);
  return {*sharded, *full};
}

LoraOptions AllLinear() {
  LoraOptions o;
  o.r = 4;
  o.alpha = 8;
  o.target_modules = {"all-linear"};
  return o;
}

class LoraTensorParallel : public ::testing::TestWithParam<std::pair<std::string, int>> {};

TEST_P(LoraTensorParallel, GradientsEqualOneProcess) {
  const auto [dir, tp] = GetParam();
  RankResults result = RunRanks(tp, [dir = dir] {
    auto rt = InitCpuRuntime();
    Models m = Adapted(dir, *rt, AllLinear());
    CompareWithSingleProcess(*m.sharded, *m.full, at::arange(24, at::kLong).view({2, 12}), dir);
  });
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
}

INSTANTIATE_TEST_SUITE_P(Models, LoraTensorParallel,
                         ::testing::Values(std::make_pair("tests/data/hf/llama", 2),
                                           std::make_pair("tests/data/gen/phi3-mqa", 2),
                                           std::make_pair("tests/data/gen/phi3", 4)),
                         [](const auto& info) {
                           std::string name =
                               info.param.first.substr(info.param.first.rfind('/') + 1) + "_tp" +
                               std::to_string(info.param.second);
                           for (char& c : name)
                             if (c == '-') c = '_';
                           return name;
                         });

// Without the sum over tp, q_proj's A (replicated) keeps each rank's partial
// gradient: far from one process's.
TEST(LoraTensorParallel, DroppedGradientSumIsCaught) {
  RankResults result = RunRanks(2, [] {
    auto rt = InitCpuRuntime();
    LoraOptions o = AllLinear();
    o.sum_over_tp = false;
    Models m = Adapted("tests/data/hf/llama", *rt, o);
    for (CausalLM* model : {m.sharded.get(), m.full.get()}) {
      CausalLMInputs inputs;
      inputs.input_ids = at::arange(24, at::kLong).view({2, 12});
      inputs.labels = inputs.input_ids;
      model->Forward(inputs).loss.backward();
    }
    const std::string a = "model.layers.0.self_attn.q_proj.lora_A.weight";
    EXPECT_GT(
        MaxDiff(m.sharded->named_parameters()[a].grad(), m.full->named_parameters()[a].grad()),
        1e-4);
  });
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
}

}  // namespace
}  // namespace weft
