// The styles beyond column/row parallelism, end to end on CPU/Gloo:
// packed_rowwise, sequence_parallel, gather, moe_tp_experts, grouped_gemm +
// ep_router (expert parallelism) and uneven (torch.chunk) shards. Each gives
// the single-process logits and loss (<= 1e-5), every rank's gradient is the
// matching slice of the single-process gradient, and models initialised from
// a config with slices (models/init.h) work too. Plus the placement metadata
// and each new validation error.
#include <ATen/ATen.h>

#include "checkpoint/safetensors.h"
#include "gtest/gtest.h"
#include "models/init.h"
#include "parallel/runtime.h"
#include "plans/engine.h"
#include "plans/tp_testing.h"
#include "tests/multiprocess.h"

namespace weft {
namespace {

using testing::CompareWithSingleProcess;
using testing::InitCpuRuntime;
using testing::MatchingSlice;
using testing::MaxDiff;
using testing::RankResults;
using testing::RunRanks;

struct Case {
  std::string dir;
  std::string plan;
  int tp;
};

class Styles : public ::testing::TestWithParam<Case> {};

// From the checkpoint: FromPretrainedTensorParallel vs FromPretrained.
TEST_P(Styles, CheckpointMatchesSingleProcess) {
  const Case c = GetParam();
  RankResults result = RunRanks(c.tp, [&] {
    auto rt = InitCpuRuntime();
    ASSERT_TRUE(rt);
    auto plan = LoadPlanFile(c.plan);
    ASSERT_TRUE(plan.ok()) << plan.status();
    PretrainedOptions options;
    options.dtype = at::kFloat;
    options.attn_implementation = "eager";
    auto sharded = FromPretrainedTensorParallel(c.dir, options, *plan, rt->world_group());
    ASSERT_TRUE(sharded.ok()) << sharded.status();
    auto full = FromPretrained(c.dir, options);
    ASSERT_TRUE(full.ok()) << full.status();
    auto ref = SafetensorsFile::Open(c.dir + "/reference.safetensors");
    ASSERT_TRUE(ref.ok());
    CompareWithSingleProcess(**sharded, **full, (*ref)->Get("input_ids").clone(), c.plan);
  });
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
}

// From a config, as the trainer does: PlanShards, InitializeWeights with
// this rank's slices, ApplyTensorParallel; vs InitializeWeights whole.
TEST_P(Styles, InitializedFromConfigMatchesSingleProcess) {
  const Case c = GetParam();
  RankResults result = RunRanks(c.tp, [&] {
    auto rt = InitCpuRuntime();
    ASSERT_TRUE(rt);
    auto plan = LoadPlanFile(c.plan);
    ASSERT_TRUE(plan.ok()) << plan.status();
    auto config = LoadModelConfig(c.dir);
    ASSERT_TRUE(config.ok()) << config.status();
    ModelOptions mo;
    mo.dtype = at::kFloat;
    mo.attn_implementation = "eager";
    auto sharded = CreateCausalLM(*config, mo);
    auto full = CreateCausalLM(*config, mo);
    ASSERT_TRUE(sharded.ok() && full.ok());
    auto shards = PlanShards(**sharded, *plan, rt->world().size(), rt->world().rank());
    ASSERT_TRUE(shards.ok()) << shards.status();
    InitOptions io;
    io.seed = 7;
    io.slice_of = [&](const std::string& name) {
      auto it = shards->find(name);
      return it == shards->end() ? Slice{} : it->second.slice;
    };
    ASSERT_TRUE(InitializeWeights(**sharded, io).ok());
    ASSERT_TRUE(InitializeWeights(**full, InitOptions(7)).ok());
    absl::Status applied = ApplyTensorParallel(**sharded, *shards, rt->world_group());
    ASSERT_TRUE(applied.ok()) << applied;
    at::Tensor ids = at::arange(32, at::kLong).reshape({2, 16}).mul(7).remainder(100);
    CompareWithSingleProcess(**sharded, **full, ids, c.plan);
  });
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
}

INSTANTIATE_TEST_SUITE_P(
    Plans, Styles,
    ::testing::Values(
        Case{"tests/data/hf/llama", "tests/data/plans/llama_packed_rowwise.yaml", 2},
        Case{"tests/data/hf/llama", "tests/data/plans/llama_packed_rowwise.yaml", 4},
        Case{"tests/data/hf/llama", "tests/data/plans/llama_sequence_parallel.yaml", 2},
        Case{"tests/data/hf/llama", "tests/data/plans/llama_sequence_parallel.yaml", 4},
        Case{"tests/data/gen/mixtral", "tests/data/plans/mixtral_sequence_parallel.yaml", 2},
        Case{"tests/data/hf/llama", "tests/data/plans/llama_gather.yaml", 2},
        Case{"tests/data/hf/llama", "tests/data/plans/llama_gather.yaml", 4},
        Case{"tests/data/gen/mixtral", "tests/data/plans/mixtral_moe_tp_experts.yaml", 2},
        Case{"tests/data/gen/mixtral", "tests/data/plans/mixtral_moe_tp_experts.yaml", 4},
        Case{"tests/data/gen/mixtral", "tests/data/plans/mixtral_expert_parallel.yaml", 2},
        Case{"tests/data/gen/mixtral", "tests/data/plans/mixtral_expert_parallel.yaml", 4},
        Case{"tests/data/hf/llama", "tests/data/plans/llama_uneven.yaml", 3}),
    [](const auto& info) {
      std::string plan = info.param.plan.substr(info.param.plan.rfind('/') + 1);
      plan = plan.substr(0, plan.size() - 5);  // .yaml
      return plan + "_tp" + std::to_string(info.param.tp);
    });

// Placement metadata from PlanShards (no ranks needed: a meta model).
std::map<std::string, ShardSpec> ShardsOf(const std::string& dir, const std::string& plan_file,
                                          int tp, int rank) {
  auto config = LoadModelConfig(dir);
  EXPECT_TRUE(config.ok());
  auto model = CreateCausalLM(*config, {});
  EXPECT_TRUE(model.ok());
  auto plan = LoadPlanFile(plan_file);
  EXPECT_TRUE(plan.ok()) << plan.status();
  auto shards = PlanShards(**model, *plan, tp, rank);
  EXPECT_TRUE(shards.ok()) << shards.status();
  return shards.ok() ? *shards : std::map<std::string, ShardSpec>{};
}

TEST(Placements, ShardReplicateAndRanges) {
  auto s = ShardsOf("tests/data/hf/llama", "tests/data/plans/llama_sequence_parallel.yaml", 2, 1);
  const DTensorSpec& q = s.at("model.layers.0.self_attn.q_proj.weight").dtensor;
  EXPECT_EQ(q.ToString(), "Shard(0) [64, 64] -> [32, 64] at [32, 0]");
  EXPECT_EQ(q.mesh_size, 2);
  EXPECT_EQ(q.mesh_rank, 1);
  EXPECT_EQ(q.grad, Placement::Shard(0));
  const DTensorSpec& o = s.at("model.layers.1.self_attn.o_proj.weight").dtensor;
  EXPECT_EQ(o.ToString(), "Shard(1) [64, 64] -> [64, 32] at [0, 32]");
  EXPECT_EQ(o.ranges[1].size(), 1u);
  EXPECT_EQ(o.ranges[1][0].start, 32);
  EXPECT_EQ(o.ranges[1][0].end, 64);
  const DTensorSpec& norm = s.at("model.norm.weight").dtensor;
  EXPECT_EQ(norm.ToString(), "Replicate() [64] -> [64] at [0], grad summed");

  auto packed = ShardsOf("tests/data/hf/llama", "tests/data/plans/llama_packed_rowwise.yaml", 4, 1);
  const DTensorSpec& down = packed.at("model.layers.0.mlp.down_proj.weight").dtensor;
  EXPECT_EQ(down.placements[0], Placement::Shard(1));
  ASSERT_EQ(down.ranges[1].size(), 2u);  // [16, 32) and [80, 96) of 128
  EXPECT_EQ(down.ranges[1][0].start, 16);
  EXPECT_EQ(down.ranges[1][1].start, 80);
  EXPECT_EQ(down.ranges[1][1].end, 96);

  auto ep =
      ShardsOf("tests/data/gen/mixtral", "tests/data/plans/mixtral_expert_parallel.yaml", 2, 1);
  EXPECT_EQ(ep.at("model.layers.0.mlp.experts.gate_up_proj").dtensor.ToString(),
            "Shard(0) [4, 128, 32] -> [2, 128, 32] at [2, 0, 0]");  // experts 2 and 3
  EXPECT_EQ(ep.at("model.layers.0.mlp.experts.down_proj").local_shape,
            (std::vector<int64_t>{2, 32, 64}));
  const ShardSpec& router = ep.at("model.layers.0.mlp.gate.weight");
  EXPECT_EQ(router.region, "model.layers.0.mlp");
  EXPECT_EQ(router.dtensor.grad, Placement::Partial());

  auto tp_experts =
      ShardsOf("tests/data/gen/mixtral", "tests/data/plans/mixtral_moe_tp_experts.yaml", 2, 0);
  const ShardSpec& gate = tp_experts.at("model.layers.1.mlp.gate.weight");
  EXPECT_EQ(gate.style, Style::kReplicatedWithGradAllreduce);  // implied by the region
  EXPECT_EQ(gate.key, "model.layers.*.mlp.experts");
  EXPECT_EQ(tp_experts.at("model.layers.1.mlp.experts.down_proj").region, "model.layers.1.mlp");
  EXPECT_EQ(tp_experts.at("model.layers.1.mlp.experts.gate_up_proj").local_shape,
            (std::vector<int64_t>{4, 64, 32}));  // each half of 2 x 64 rows split

  auto uneven = ShardsOf("tests/data/hf/llama", "tests/data/plans/llama_uneven.yaml", 3, 2);
  EXPECT_EQ(uneven.at("model.embed_tokens.weight").dtensor.ToString(),
            "Shard(0) [256, 64] -> [84, 64] at [172, 0]");
  EXPECT_EQ(uneven.at("model.layers.0.mlp.down_proj.weight").local_shape,
            (std::vector<int64_t>{64, 42}));
}

// After ApplyTensorParallel, ParameterPlacement answers with the group's name.
TEST(Placements, RecordedForTheModel) {
  RankResults result = RunRanks(2, [] {
    auto rt = InitCpuRuntime();
    ASSERT_TRUE(rt);
    auto plan = LoadPlanFile("plans/llama.yaml");
    ASSERT_TRUE(plan.ok());
    auto model = FromPretrainedTensorParallel("tests/data/hf/llama", {}, *plan, rt->world_group());
    ASSERT_TRUE(model.ok()) << model.status();
    const DTensorSpec* k = ParameterPlacement(**model, "model.layers.1.self_attn.k_proj.weight");
    ASSERT_NE(k, nullptr);
    EXPECT_EQ(k->mesh_axis, rt->world().name());
    EXPECT_EQ(k->placements[0], Placement::Shard(0));
    EXPECT_EQ(k->offsets[0], 16 * rt->rank());
    EXPECT_EQ(ParameterPlacement(**model, "model.norm.weight"), nullptr);  // not in the plan
    // The record is the model's own, not a registry's keyed by address.
    EXPECT_EQ(k, &(*model)->placements.at("model.layers.1.self_attn.k_proj.weight"));
  });
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
}

// The model owns the group its hooks use: the caller may drop its handle,
// and the group goes when the model goes.
TEST(Placements, TheModelOwnsItsGroup) {
  RankResults result = RunRanks(2, [] {
    auto rt = InitCpuRuntime();
    ASSERT_TRUE(rt);
    auto plan = LoadPlanFile("plans/llama.yaml");
    ASSERT_TRUE(plan.ok());
    std::weak_ptr<ProcessGroup> weak;
    absl::StatusOr<std::shared_ptr<CausalLM>> model;
    {
      auto group = rt->NewGroup({0, 1}, "tp_owned");
      ASSERT_TRUE(group.ok()) << group.status();
      weak = *group;
      model = FromPretrainedTensorParallel("tests/data/hf/llama", {}, *plan, *group);
      ASSERT_TRUE(model.ok()) << model.status();
    }
    ASSERT_FALSE(weak.expired());
    EXPECT_EQ(ParameterPlacement(**model, "model.layers.0.self_attn.q_proj.weight")->mesh_axis,
              "tp_owned");
    CausalLMInputs inputs;
    inputs.input_ids = at::arange(8, at::kLong).view({1, 8});
    at::NoGradGuard no_grad;
    EXPECT_EQ((*model)->Forward(inputs).logits.size(-1), 256);  // gathered by lm_head's hook
    model->reset();
    EXPECT_TRUE(weak.expired());
  });
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
}

std::string PlanError(const std::string& dir, const std::string& yaml, int tp) {
  auto config = LoadModelConfig(dir);
  auto model = CreateCausalLM(*config, {});
  auto plan = ParsePlan(yaml, "test.yaml");
  if (!plan.ok()) return std::string(plan.status().message());
  auto shards = PlanShards(**model, *plan, tp, 0);
  return shards.ok() ? "ok" : std::string(shards.status().message());
}

TEST(Validation, NewStylesErrors) {
  EXPECT_EQ(PlanError("tests/data/hf/llama",
                      "tp_plan:\n  \"model.layers.*.mlp.down_proj\": packed_rowwise\n", 3),
            "module model.layers.0.mlp.down_proj parameter weight dim 1 has size 64, not "
            "divisible by tp 3");
  EXPECT_EQ(PlanError("tests/data/gen/mixtral",
                      "tp_plan:\n  \"model.layers.*.mlp.experts.gate_up_proj\": grouped_gemm\n", 3),
            "module model.layers.0.mlp.experts has 4 experts, not divisible by tp 3");
  EXPECT_EQ(PlanError("tests/data/hf/llama",
                      "tp_plan:\n  \"model.layers.*.mlp.down_proj\": sequence_parallel\n", 2),
            "module model.layers.0.mlp.down_proj parameter weight has shape [64, 128] "
            "(sequence_parallel expects a norm's 1-D weight)");
  EXPECT_EQ(PlanError("tests/data/hf/llama", "tp_plan:\n  \"model.layers.*.nope\": gather\n", 2),
            "plan key 'model.layers.*.nope' (gather) matches no module or parameter of the model");
  EXPECT_EQ(PlanError("tests/data/hf/llama",
                      "tp_plan:\n  \"model.layers.*.self_attn.o_proj\": rowwise\n", 3),
            "num_attention_heads 4 is not divisible by tp 3");
  EXPECT_EQ(PlanError("tests/data/hf/llama", "tp_plan:\n  \"model.norm\": gather\n", 2),
            "plan key 'model.norm' (gather): module model.norm holds no sharded parameter "
            "(expected sharded layers inside it)");
  // Uneven shards are fine where torch.chunk applies.
  EXPECT_EQ(PlanError("tests/data/hf/llama", "tp_plan:\n  \"lm_head\": colwise_gather_output\n", 3),
            "ok");
}

TEST(Validation, LossParallelNeedsAnEvenVocab) {
  RankResults result = RunRanks(3, [] {
    auto rt = InitCpuRuntime();
    ASSERT_TRUE(rt);
    auto plan = LoadPlanFile("tests/data/plans/llama_uneven.yaml");
    ASSERT_TRUE(plan.ok());
    TensorParallelOptions tp_options;
    tp_options.loss_parallel = true;
    auto model = FromPretrainedTensorParallel("tests/data/hf/llama", {}, *plan, rt->world_group(),
                                              tp_options);
    ASSERT_FALSE(model.ok());
    EXPECT_EQ(model.status().message(),
              "loss_parallel needs lm_head's vocab 256 divisible by tp 3 (uneven vocab shards are "
              "supported without loss_parallel)");
  });
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
}

}  // namespace
}  // namespace weft
