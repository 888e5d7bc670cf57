// Tensor parallelism end to end on CPU/Gloo: every fixture model at TP = 2
// and 4 (4 exercises KV-head replication: the fixtures have 2 KV heads) gives
// the single-process logits and loss, and every rank's gradient of each
// parameter equals the matching slice of the single-process gradient.
#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "checkpoint/safetensors.h"
#include "gtest/gtest.h"
#include "parallel/data_parallel.h"
#include "parallel/device_mesh.h"
#include "parallel/runtime.h"
#include "plans/engine.h"
#include "plans/shipped_plans.h"
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

void CheckModel(const std::string& dir, const std::string& plan_file) {
  auto rt = InitCpuRuntime();
  ASSERT_TRUE(rt);
  auto plan = ResolvePlanArgument(plan_file, dir);  // a file or "auto"
  ASSERT_TRUE(plan.ok()) << plan.status();
  PretrainedOptions options;
  options.dtype = at::kFloat;
  options.attn_implementation = "eager";
  auto sharded = FromPretrainedTensorParallel(dir, options, *plan, rt->world_group());
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  auto full = FromPretrained(dir, options);
  ASSERT_TRUE(full.ok()) << full.status();

  auto ref = SafetensorsFile::Open(dir + "/reference.safetensors");
  ASSERT_TRUE(ref.ok());
  CompareWithSingleProcess(**sharded, **full, (*ref)->Get("input_ids").clone(), dir);
}

// The comparison with one process catches a missing collective: with
// o_proj's all-reduce dropped (local_rowwise instead of rowwise), every
// rank's logits leave the single-process ones.
TEST(TensorParallel, DroppedCollectiveIsCaught) {
  RankResults result = RunRanks(2, [] {
    auto rt = InitCpuRuntime();
    ASSERT_TRUE(rt);
    auto plan = LoadPlanFile("plans/llama.yaml");
    ASSERT_TRUE(plan.ok()) << plan.status();
    bool dropped = false;
    for (PlanEntry& e : plan->tp) {
      if (e.style == Style::kRowwise && e.pattern.find("o_proj") != std::string::npos) {
        e.style = Style::kLocalRowwise;
        dropped = true;
      }
    }
    ASSERT_TRUE(dropped);
    PretrainedOptions options;
    options.attn_implementation = "eager";
    auto sharded =
        FromPretrainedTensorParallel("tests/data/hf/llama", options, *plan, rt->world_group());
    ASSERT_TRUE(sharded.ok()) << sharded.status();
    auto full = FromPretrained("tests/data/hf/llama", options);
    ASSERT_TRUE(full.ok()) << full.status();
    CausalLMInputs inputs;
    inputs.input_ids = at::arange(16, at::kLong).view({2, 8});
    at::NoGradGuard no_grad;
    EXPECT_GT(MaxDiff((*sharded)->Forward(inputs).logits, (*full)->Forward(inputs).logits), 1e-3);
  });
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
}

struct Case {
  std::string dir;
  std::string plan;
  int tp;
};

class TensorParallel : public ::testing::TestWithParam<Case> {};

TEST_P(TensorParallel, MatchesSingleProcess) {
  const Case c = GetParam();
  RankResults result = RunRanks(c.tp, [&] { CheckModel(c.dir, c.plan); });
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
}

INSTANTIATE_TEST_SUITE_P(
    Models, TensorParallel,
    ::testing::Values(
        Case{"tests/data/hf/llama", "plans/llama.yaml", 2},
        Case{"tests/data/hf/llama", "plans/llama.yaml", 4},
        Case{"tests/data/hf/mistral", "plans/mistral.yaml", 2},
        Case{"tests/data/hf/qwen2", "plans/qwen2.yaml", 2},
        Case{"tests/data/hf/qwen2", "plans/qwen2.yaml", 4},
        Case{"tests/data/gen/qwen3", "plans/qwen3.yaml", 2},
        Case{"tests/data/gen/phi3", "plans/phi3.yaml", 2},
        // Packed q | k | v with fewer KV heads than ranks: replicated KV rows.
        Case{"tests/data/gen/phi3", "plans/phi3.yaml", 4},
        Case{"tests/data/gen/phi3-mqa", "plans/phi3.yaml", 2},
        Case{"tests/data/gen/phi3-mqa", "plans/phi3.yaml", 4},
        Case{"tests/data/gen/mixtral", "plans/mixtral.yaml", 2},
        Case{"tests/data/gen/llama-tied", "plans/llama.yaml", 2},
        Case{"tests/data/gen/llama-tied", "plans/llama.yaml", 4},
        Case{"tests/data/gen/granite", "auto", 2}, Case{"tests/data/gen/granite", "auto", 4},
        Case{"tests/data/gen/smollm3", "auto", 2}, Case{"tests/data/gen/smollm3", "auto", 4},
        Case{"tests/data/gen/olmo2", "auto", 2}, Case{"tests/data/gen/olmo2", "auto", 4},
        Case{"tests/data/gen/gemma2", "auto", 2}, Case{"tests/data/gen/gemma2", "auto", 4},
        Case{"tests/data/gen/gemma3", "auto", 2}, Case{"tests/data/gen/gemma3", "auto", 4},
        Case{"tests/data/gen/qwen3-moe", "auto", 2}, Case{"tests/data/gen/qwen3-moe", "auto", 4},
        Case{"tests/data/gen/qwen3-moe", "tests/data/plans/qwen3_moe_expert_parallel.yaml", 2},
        Case{"tests/data/gen/qwen3-moe", "tests/data/plans/qwen3_moe_expert_parallel.yaml", 4},
        Case{"tests/data/gen/gpt-oss", "auto", 2}, Case{"tests/data/gen/gpt-oss", "auto", 4},
        Case{"tests/data/gen/gpt-oss", "tests/data/plans/gpt_oss_expert_parallel.yaml", 2},
        Case{"tests/data/gen/gpt-oss", "tests/data/plans/gpt_oss_expert_parallel.yaml", 4},
        Case{"tests/data/hf/llama", "tests/data/plans/llama_variant_a.yaml", 2},
        Case{"tests/data/hf/llama", "tests/data/plans/llama_variant_a.yaml", 4},
        Case{"tests/data/hf/llama", "tests/data/plans/llama_variant_b.yaml", 2}),
    [](const auto& info) {
      std::string name = info.param.dir.substr(info.param.dir.rfind('/') + 1) + "_tp" +
                         std::to_string(info.param.tp);
      size_t variant = info.param.plan.find("variant_");
      if (variant != std::string::npos) name += "_" + info.param.plan.substr(variant, 9);
      if (info.param.plan.find("expert_parallel") != std::string::npos) name += "_ep";
      for (char& ch : name)
        if (ch == '-') ch = '_';
      return name;
    });

// DP=2 x TP=2 on 4 ranks: each dp replica takes one sequence of the batch;
// after backward and the bucketed dp all-reduce, every rank's gradient is the
// matching slice of the single-process full-batch gradient.
TEST(DataAndTensorParallel, TwoByTwoMesh) {
  RankResults result = RunRanks(4, [] {
    auto rt = InitCpuRuntime();
    ASSERT_TRUE(rt);
    auto mesh = DeviceMesh::Create(*rt, {{"dp", 2}, {"tp", 2}});
    ASSERT_TRUE(mesh.ok()) << mesh.status();
    const std::string dir = "tests/data/hf/llama";
    PretrainedOptions options;
    options.dtype = at::kFloat;
    options.attn_implementation = "eager";
    auto plan = LoadPlanFile("plans/llama.yaml");
    ASSERT_TRUE(plan.ok());
    auto sharded = FromPretrainedTensorParallel(dir, options, *plan, mesh->group("tp"));
    ASSERT_TRUE(sharded.ok()) << sharded.status();
    auto full = FromPretrained(dir, options);
    ASSERT_TRUE(full.ok());
    auto ref = SafetensorsFile::Open(dir + "/reference.safetensors");
    at::Tensor ids = (*ref)->Get("input_ids").clone();  // [2, 16]: one row per dp replica

    CausalLMInputs mine;
    mine.input_ids = ids.narrow(0, mesh->coordinate("dp"), 1);
    mine.labels = mine.input_ids;
    (*sharded)->Forward(mine).loss.backward();
    GradientBucketStats stats =
        AllReduceGradients((*sharded)->parameters(), (*mesh)["dp"], 16 << 10);
    EXPECT_GT(stats.buckets, 1);  // small buckets: several all-reduces

    CausalLMInputs all;
    all.input_ids = ids;
    all.labels = ids;
    (*full)->Forward(all).loss.backward();
    auto full_params = (*full)->named_parameters();
    for (const auto& item : (*sharded)->named_parameters()) {
      const at::Tensor& whole = full_params[item.key()];
      at::Tensor want = MatchingSlice(whole.detach(), item.value().detach(), whole.grad());
      EXPECT_TRUE(at::allclose(item.value().grad(), want, 1e-4, 1e-5))
          << item.key() << " max diff " << MaxDiff(item.value().grad(), want);
    }
  });
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
}

// With loss_parallel on `dir` (a 2-rank job): the logits stay sharded (each
// rank's half of the vocab); the loss (one ignored label too) and every
// gradient slice equal the single-process ones. Returns the sharded model.
std::shared_ptr<CausalLM> CompareLossParallel(const std::string& dir, const std::string& plan_file,
                                              std::shared_ptr<ProcessGroup> group) {
  const int rank = group->rank();
  PretrainedOptions options;
  options.dtype = at::kFloat;
  options.attn_implementation = "eager";
  TensorParallelOptions tp_options;
  tp_options.loss_parallel = true;
  auto plan = LoadPlanFile(plan_file);
  EXPECT_TRUE(plan.ok()) << plan.status();
  auto sharded = FromPretrainedTensorParallel(dir, options, *plan, group, tp_options);
  EXPECT_TRUE(sharded.ok()) << sharded.status();
  if (!sharded.ok()) return nullptr;
  auto full = FromPretrained(dir, options);
  auto ref = SafetensorsFile::Open(dir + "/reference.safetensors");
  CausalLMInputs inputs;
  inputs.input_ids = (*ref)->Get("input_ids").clone();
  inputs.labels = inputs.input_ids.clone();
  inputs.labels.index_put_({0, 3}, -100);  // an ignored token too
  CausalLMOutput a = (*sharded)->Forward(inputs);
  CausalLMOutput b = (*full)->Forward(inputs);
  const int64_t half = b.logits.size(2) / 2;
  EXPECT_EQ(a.logits.size(2), half);  // this rank's half of the vocab
  EXPECT_LT(MaxDiff(a.logits, b.logits.narrow(2, half * rank, half)), 1e-5);
  EXPECT_LT(MaxDiff(a.loss, b.loss), 1e-5);
  a.loss.backward();
  b.loss.backward();
  auto full_params = (*full)->named_parameters();
  for (const auto& item : (*sharded)->named_parameters()) {
    const at::Tensor& whole = full_params[item.key()];
    at::Tensor want = MatchingSlice(whole.detach(), item.value().detach(), whole.grad());
    EXPECT_TRUE(at::allclose(item.value().grad(), want, 1e-4, 1e-5))
        << item.key() << " max diff " << MaxDiff(item.value().grad(), want);
  }
  return *sharded;
}

// loss_parallel: the logits stay sharded; the loss and every gradient slice
// still equal the single-process ones.
TEST(LossParallel, MatchesSingleProcessWithoutGatheringLogits) {
  RankResults result = RunRanks(2, [] {
    auto rt = InitCpuRuntime();
    ASSERT_TRUE(rt);
    CompareLossParallel("tests/data/hf/qwen2", "plans/qwen2.yaml", rt->world_group());
  });
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
}

TEST(TiedEmbeddings, ShareOneVocabShardUnderLossParallel) {
  RankResults result = RunRanks(2, [] {
    auto rt = InitCpuRuntime();
    ASSERT_TRUE(rt);
    const std::string dir = "tests/data/gen/llama-tied";
    std::shared_ptr<CausalLM> sharded =
        CompareLossParallel(dir, "plans/llama.yaml", rt->world_group());
    ASSERT_NE(sharded, nullptr);
    auto params = sharded->named_parameters();
    EXPECT_TRUE(params["lm_head.weight"].is_same(params["model.embed_tokens.weight"]));
    EXPECT_EQ(params["lm_head.weight"].sizes(), (at::IntArrayRef{64, 32}));
    const DTensorSpec* embed = ParameterPlacement(*sharded, "model.embed_tokens.weight");
    ASSERT_NE(embed, nullptr);
    EXPECT_EQ(embed->ToString(), ParameterPlacement(*sharded, "lm_head.weight")->ToString());
    PretrainedOptions options;
    options.dtype = at::kFloat;
    // A pair that cannot share a shard is named.
    auto bad =
        ParsePlan("tp_plan:\n  \"lm_head\": colwise\n  \"model.embed_tokens\": embedding_colwise\n",
                  "tied.yaml");
    ASSERT_TRUE(bad.ok());
    auto refused = FromPretrainedTensorParallel(dir, options, *bad, rt->world_group());
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().message(),
              "tie_word_embeddings: lm_head is colwise (plan key 'lm_head') and "
              "model.embed_tokens is embedding_colwise (plan key 'model.embed_tokens'), but tied "
              "they are one tensor (expected lm_head colwise or colwise_gather_output with "
              "model.embed_tokens embedding_rowwise: one [vocab/tp, hidden] shard)");
  });
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
}

// transformers' Qwen3-MoE plan, verbatim, on the fused experts: each rank
// holds every expert's share of the intermediate dim (gate_up_proj's halves
// split, down_proj's input dim), read from per-expert checkpoint tensors, and
// the router inside the all-reduced MoE block sums its gradients over tp.
TEST(FusedExperts, ShardTheIntermediateDimAsTransformersPlanSays) {
  RankResults result = RunRanks(2, [] {
    auto rt = InitCpuRuntime();
    ASSERT_TRUE(rt);
    const std::string dir = "tests/data/gen/qwen3-moe";
    auto plan = ResolvePlanArgument("auto", dir);
    ASSERT_TRUE(plan.ok()) << plan.status();
    PretrainedOptions options;
    options.dtype = at::kFloat;
    options.attn_implementation = "eager";
    auto sharded = FromPretrainedTensorParallel(dir, options, *plan, rt->world_group());
    ASSERT_TRUE(sharded.ok()) << sharded.status();
    auto full = FromPretrained(dir, options);
    ASSERT_TRUE(full.ok()) << full.status();
    auto params = (*sharded)->named_parameters();
    auto whole = (*full)->named_parameters();
    const at::Tensor gate_up = params["model.layers.0.mlp.experts.gate_up_proj"];
    EXPECT_EQ(gate_up.sizes(), (at::IntArrayRef{4, 16, 32}));  // [E, 2I/tp, H]
    const int64_t i = 16, half = 8, r = rt->rank();
    const at::Tensor full_gate_up = whole["model.layers.0.mlp.experts.gate_up_proj"];
    EXPECT_TRUE(at::equal(gate_up.narrow(1, 0, half), full_gate_up.narrow(1, r * half, half)));
    EXPECT_TRUE(
        at::equal(gate_up.narrow(1, half, half), full_gate_up.narrow(1, i + r * half, half)));
    EXPECT_EQ(params["model.layers.0.mlp.experts.down_proj"].sizes(),
              (at::IntArrayRef{4, 32, 8}));  // [E, H, I/tp]
    EXPECT_EQ(params["model.layers.0.mlp.gate.weight"].sizes(), (at::IntArrayRef{4, 32}));
    EXPECT_EQ(ParameterPlacement(**sharded, "model.layers.0.mlp.experts.down_proj")->ToString(),
              absl::StrCat("Shard(2) [4, 32, 16] -> [4, 32, 8] at [0, 0, ", 8 * r, "]"));
  });
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
}

TEST(PlanValidation, ErrorsBeforeAllocating) {
  RankResults result = RunRanks(3, [] {
    auto rt = InitCpuRuntime();
    ASSERT_TRUE(rt);
    auto plan = LoadPlanFile("plans/llama.yaml");
    ASSERT_TRUE(plan.ok());
    auto model = FromPretrainedTensorParallel("tests/data/hf/llama", {}, *plan, rt->world_group());
    ASSERT_FALSE(model.ok());
    EXPECT_EQ(model.status().message(), "num_attention_heads 4 is not divisible by tp 3");
    auto bad = ParsePlan("tp_plan:\n  \"model.layers.*.self_attn.q_proj\": gather\n", "g.yaml");
    ASSERT_TRUE(bad.ok());
  });
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
}

}  // namespace
}  // namespace weft
