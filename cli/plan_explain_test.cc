#include "cli/plan_explain.h"

#include <sstream>

#include "base/text_file.h"
#include "gtest/gtest.h"

namespace weft {
namespace {

void WriteFile(const std::string& path, const std::string& text) {
  ASSERT_TRUE(WriteTextFileAtomically(path, text).ok());
}

TEST(PlanExplain, ShapesBytesAndCollectivesPerRank) {
  ExplainOptions c;
  c.model = "tests/data/hf/llama";
  c.plan = "auto";
  c.tp = 4;
  c.dp = 2;
  std::ostringstream out, err;
  ASSERT_EQ(RunPlanExplain(c, out, err), 0) << err.str();
  std::string text = out.str();
  // q_proj rows split 4 ways; k_proj's 2 KV heads replicated over 4 ranks.
  EXPECT_NE(text.find("model.layers.0.self_attn.q_proj.weight  colwise"), std::string::npos)
      << text;
  EXPECT_NE(text.find("[64, 64]   [16, 64]"), std::string::npos) << text;
  EXPECT_NE(text.find("[32, 64]   [16, 64]"), std::string::npos) << text;
  EXPECT_NE(text.find("shared KV head"), std::string::npos) << text;
  EXPECT_NE(text.find("lm_head.weight"), std::string::npos);
  EXPECT_NE(text.find("mesh: dp(2) * tp(4) = 8 ranks; LlamaForCausalLM, Float"), std::string::npos)
      << text;
  // 2 layers x (o_proj + down_proj) + lm_head gather = 5 per forward.
  EXPECT_NE(text.find("collectives per forward"), std::string::npos);
  EXPECT_NE(text.find(" 5 collectives per forward"), std::string::npos) << text;
}

TEST(PlanExplain, ValidationErrors) {
  ExplainOptions c;
  c.model = "tests/data/hf/llama";
  c.tp = 3;
  std::ostringstream out, err;
  EXPECT_EQ(RunPlanExplain(c, out, err), 2);
  EXPECT_EQ(err.str(), "weft plan explain: num_attention_heads 4 is not divisible by tp 3\n");
  c.tp = 2;
  c.plan = "plans/nope.yaml";
  std::ostringstream err2;
  EXPECT_EQ(RunPlanExplain(c, out, err2), 2);
  EXPECT_EQ(err2.str(), "weft plan explain: plans/nope.yaml: cannot read the plan file\n");
}

// --pp: each stage's modules and bytes, the activation estimate per rank
// under the schedule, the grid and its bubble; errors are one line.
TEST(PlanExplain, PipelineStagesMemoryAndSchedule) {
  ExplainOptions c;
  c.model = "tests/data/hf/llama";
  c.pp = 2;
  c.pp_microbatches = 4;
  c.micro_batch = 2;
  c.seq_len = 16;
  std::ostringstream out, err;
  ASSERT_EQ(RunPlanExplain(c, out, err), 0) << err.str();
  const std::string text = out.str();
  for (const char* line : {
           "pipeline: pp 2 x 1 stage(s) per rank = 2 stages; schedule 1f1b, 4 micro-batches of 2 "
           "x 16 tokens\n",
           "0      0        model.embed_tokens .. model.layers.0  1       53376       208.5 KiB\n",
           "1      1        model.layers.1 .. lm_head             1       53440       208.8 KiB\n",
           // 16 x 2 x 64 x (34 + 5 x 4 x 16 / 64) x 2 bytes (fp32) = 156 KiB per layer.
           "pp rank 0: parameters 208.5 KiB per rank; activations 312.0 KiB at peak (2 "
           "micro-batches in flight x 1 layers x 156.0 KiB)\n",
           "rank 1: .    1F0  1B0  1B0  1F1",
           "bubble 0.25 (idle / busy), makespan 15\n",
       }) {
    EXPECT_NE(text.find(line), std::string::npos) << line << "\n" << text;
  }
  c.pp = 5;
  c.pp_microbatches = 10;
  std::ostringstream err2;
  EXPECT_EQ(RunPlanExplain(c, out, err2), 2);
  EXPECT_EQ(err2.str(),
            "weft plan explain: pipeline: 5 stages for a model of 2 layers (expected at most 4: "
            "the layers plus first_stage_less_layers 1 and last_stage_less_layers 1)\n");
  c.pp = 2;
  c.pp_schedule = "zigzag";
  std::ostringstream err3;
  EXPECT_EQ(RunPlanExplain(c, out, err3), 2);
  EXPECT_EQ(err3.str(),
            "weft plan explain: pipeline schedule 'zigzag' is not known (expected GPipe, 1F1B, "
            "Interleaved1F1B, ZB1P)\n");
}

// "Will it fit?" from config.json alone: per rank the parameters, gradients,
// AdamW state and activations, at dp_shard 2 half of each piece of state,
// with activation checkpointing only the layer inputs and one layer.
TEST(PlanExplain, TrainingMemoryFromAConfigAlone) {
  ExplainOptions c;
  c.model = "tests/data/hf/llama/config.json";
  c.micro_batch = 2;
  c.seq_len = 16;
  std::ostringstream whole, err;
  ASSERT_EQ(RunPlanExplain(c, whole, err), 0) << err.str();
  // 106,816 fp32 parameters: 417.2 KiB each for parameters and gradients, twice
  // that for the two moments; 2 layers x 78 KiB x 2 (fp32) of activations.
  EXPECT_NE(whole.str().find("parameters 417.2 KiB, gradients 417.2 KiB, optimizer 834.5 KiB, "
                             "activations ~312.0 KiB, total ~1.9 MiB\n"),
            std::string::npos)
      << whole.str();
  c.dp_shard = 2;
  std::ostringstream sharded;
  ASSERT_EQ(RunPlanExplain(c, sharded, err), 0) << err.str();
  EXPECT_NE(sharded.str().find("(estimate; micro-batch 2 x 16 tokens, dp_shard 2):\nparameters "
                               "208.6 KiB, gradients 208.6 KiB, optimizer 417.2 KiB, activations "
                               "~312.0 KiB, gathered for compute 272.8 KiB"),
            std::string::npos)
      << sharded.str();
  c.dp_shard = 1;
  c.activation_checkpointing = true;
  std::ostringstream recomputed;
  ASSERT_EQ(RunPlanExplain(c, recomputed, err), 0) << err.str();
  EXPECT_NE(recomputed.str().find("activations ~172.0 KiB"), std::string::npos) << recomputed.str();
  c.dp_shard = 0;
  std::ostringstream bad;
  EXPECT_EQ(RunPlanExplain(c, whole, bad), 2);
  EXPECT_EQ(bad.str(), "weft plan explain: --dp-shard 0 (expected >= 1)\n");
}

// An inconsistent plan is named at plan time (it used to fail at run time
// with "mat1 and mat2 shapes cannot be multiplied").
TEST(PlanExplain, ProducersMeetConsumers) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string dir = tmp ? tmp : "/tmp";
  ExplainOptions c;
  c.model = "tests/data/hf/llama";
  c.tp = 2;
  c.plan = dir + "/q_without_o.yaml";
  WriteFile(c.plan, "tp_plan:\n  \"model.layers.*.self_attn.q_proj\": colwise\n");
  std::ostringstream out, err;
  EXPECT_EQ(RunPlanExplain(c, out, err), 2);
  EXPECT_EQ(err.str(),
            "weft plan explain: plan key 'model.layers.*.self_attn.q_proj' makes "
            "model.layers.0.self_attn.q_proj colwise (its output sharded) but its consumer "
            "model.layers.0.self_attn.o_proj is replicated (expected rowwise, packed_rowwise or "
            "local_rowwise)\n");
  c.plan = dir + "/down_without_gate.yaml";
  WriteFile(c.plan,
            "tp_plan:\n  \"model.layers.*.mlp.up_proj\": colwise\n"
            "  \"model.layers.*.mlp.down_proj\": rowwise\n");
  std::ostringstream err2;
  EXPECT_EQ(RunPlanExplain(c, out, err2), 2);
  EXPECT_EQ(err2.str(),
            "weft plan explain: plan key 'model.layers.*.mlp.down_proj' makes "
            "model.layers.0.mlp.down_proj rowwise (it expects sharded input) but "
            "model.layers.0.mlp.gate_proj is replicated (expected colwise, packed_colwise or "
            "local_colwise)\n");
}

// Expert parallelism and sequence parallelism in the dry run: placements,
// empty expert shards and the MoE block's one all-reduce.
TEST(PlanExplain, NewStyles) {
  ExplainOptions c;
  c.model = "tests/data/gen/mixtral";
  c.plan = "tests/data/plans/mixtral_expert_parallel.yaml";
  c.tp = 2;
  std::ostringstream out, err;
  ASSERT_EQ(RunPlanExplain(c, out, err), 0) << err.str();
  std::string text = out.str();
  EXPECT_NE(text.find("model.layers.0.mlp.experts.gate_up_proj  grouped_gemm"), std::string::npos)
      << text;
  EXPECT_NE(text.find("[4, 128, 32]  [2, 128, 32]"), std::string::npos) << text;
  EXPECT_NE(text.find("(model.layers.1.mlp: all-reduce(output))"), std::string::npos) << text;
  EXPECT_NE(text.find("ep_router"), std::string::npos) << text;

  c.model = "tests/data/hf/llama";
  c.plan = "tests/data/plans/llama_sequence_parallel.yaml";
  std::ostringstream out2, err2;
  ASSERT_EQ(RunPlanExplain(c, out2, err2), 0) << err2.str();
  EXPECT_NE(out2.str().find("all-gather(output, seq)"), std::string::npos) << out2.str();
}

}  // namespace
}  // namespace weft
