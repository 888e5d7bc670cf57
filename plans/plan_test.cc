#include "plans/plan.h"
#include "plans/shipped_plans.h"

#include "gtest/gtest.h"
#include "models/causal_lm.h"
#include "models/pretrained.h"

namespace weft {
namespace {

std::vector<std::string> ParameterNames(const std::string& dir) {
  auto config = LoadModelConfig(dir);
  EXPECT_TRUE(config.ok()) << config.status();
  auto model = CreateCausalLM(*config, {});
  EXPECT_TRUE(model.ok()) << model.status();
  std::vector<std::string> names;
  for (const auto& item : (*model)->named_parameters()) names.push_back(item.key());
  return names;
}

TEST(Patterns, StarMatchesOneSegment) {
  EXPECT_TRUE(MatchPattern("model.layers.*.mlp", "model.layers.3.mlp"));
  EXPECT_FALSE(MatchPattern("model.layers.*.mlp", "model.layers.3.x.mlp"));
  EXPECT_FALSE(MatchPattern("model.layers.*", "model.layers"));
  EXPECT_TRUE(MatchPattern("*.*", "a.b"));
  EXPECT_FALSE(MatchPattern("lm_head", "lm_head.weight"));
}

TEST(Styles, StringsAndAliases) {
  EXPECT_EQ(*ParseStyle("colwise_rep"), Style::kColwiseGatherOutput);
  EXPECT_EQ(*ParseStyle("rowwise_rep"), Style::kRowwiseSplitInput);
  EXPECT_STREQ(StyleName(Style::kPackedColwise), "packed_colwise");
  EXPECT_EQ(ParseStyle("colwize").status().message(),
            "unknown style 'colwize' (expected one of: colwise, rowwise, colwise_gather_output, "
            "rowwise_split_input, embedding_rowwise, embedding_colwise, packed_colwise, "
            "packed_rowwise, sequence_parallel, replicated_with_grad_allreduce, all_reduce, "
            "local_colwise, local_rowwise, local, gather, grouped_gemm, moe_tp_experts, ep_router, "
            "colwise_rep, rowwise_rep)");
}

TEST(Resolve, PrecedenceAndConflicts) {
  std::vector<std::string> names = {"model.layers.0.attn.q.weight", "model.layers.0.attn.q.bias",
                                    "model.layers.1.attn.q.weight", "model.layers.1.attn.q.bias"};
  auto plan = ParsePlan(R"(tp_plan:
  "model.layers.*.attn.q": colwise
  "model.layers.1.attn.q": rowwise
  "model.layers.*.attn.q.bias": replicated_with_grad_allreduce
)",
                        "t.yaml");
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto r = ResolvePlan(*plan, names);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->at("model.layers.0.attn.q.weight").style, Style::kColwise);
  EXPECT_EQ(r->at("model.layers.1.attn.q.weight").style, Style::kRowwise);  // exact beats *
  EXPECT_EQ(r->at("model.layers.1.attn.q.bias").style,
            Style::kReplicatedWithGradAllreduce);  // parameter key beats module key
  EXPECT_EQ(r->at("model.layers.1.attn.q.bias").key, "model.layers.*.attn.q.bias");

  auto conflict = ParsePlan(
      R"({"tp_plan": {"model.*.0.attn.q": "colwise", "model.layers.*.attn.q": "rowwise"}})",
      "c.json");
  ASSERT_TRUE(conflict.ok()) << conflict.status();
  EXPECT_EQ(ResolvePlan(*conflict, names).status().message(),
            "plan keys 'model.*.0.attn.q' (colwise) and 'model.layers.*.attn.q' (rowwise) give "
            "parameter model.layers.0.attn.q.weight two styles (expected one)");

  auto unmatched = ParsePlan("tp_plan:\n  \"model.layers.*.attn.qq\": colwise\n", "u.yaml");
  ASSERT_TRUE(unmatched.ok());
  EXPECT_EQ(
      ResolvePlan(*unmatched, names).status().message(),
      "plan key 'model.layers.*.attn.qq' (colwise) matches no module or parameter of the model");
  ResolveOptions lenient;
  lenient.allow_unmatched = true;
  EXPECT_TRUE(ResolvePlan(*unmatched, names, lenient).ok());
}

TEST(Parse, ErrorsNameTheFileAndKey) {
  EXPECT_EQ(ParsePlan("tp_plan:\n  \"a\": colwize\n", "p.yaml").status().message().substr(0, 43),
            "p.yaml: tp_plan key 'a': unknown style 'col");
  EXPECT_EQ(ParsePlan("layers: 1\n", "p.yaml").status().message(),
            "p.yaml: no tp_plan mapping (expected tp_plan: {pattern: style})");
  EXPECT_EQ(ParsePlan("tp_plan: [1\n", "p.yaml").status().message().substr(0, 9), "p.yaml:2:");
  EXPECT_EQ(LoadPlanFile("plans/nope.yaml").status().message(),
            "plans/nope.yaml: cannot read the plan file");
  // Nothing in a plan file is silently ignored, and a directory is no file.
  EXPECT_EQ(ParsePlan("tp_plan: {\"lm_head\": colwise}\nlayers: 1\n", "p.yaml").status().message(),
            "p.yaml: unknown top-level key 'layers' (expected tp_plan, pp_plan or pp_split)");
  EXPECT_EQ(ParsePlan("tp_plan: {\"model.**.q_proj\": colwise}\n", "p.yaml").status().message(),
            "p.yaml: tp_plan key 'model.**.q_proj': segment '**' is not a pattern (expected a "
            "name or '*', one dot-separated segment)");
  EXPECT_EQ(ParsePlan("tp_plan: {\"model..q_proj\": colwise}\n", "p.yaml").status().message(),
            "p.yaml: tp_plan key 'model..q_proj': segment '' is not a pattern (expected a name or "
            "'*', one dot-separated segment)");
  EXPECT_EQ(LoadPlanFile("plans").status().message(), "plans: is a directory (expected a file)");
}

TEST(Auto, BaseModelPlanFromConfigJson) {
  auto plan = PlanFromConfigJson(R"({"base_model_tp_plan": {"layers.*.self_attn.q_proj": "colwise",
      "layers.*.self_attn.o_proj": "rowwise"}})");
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->tp.size(), 3u);
  EXPECT_EQ(plan->tp[0].pattern, "model.layers.*.self_attn.q_proj");
  EXPECT_EQ(plan->tp[2].pattern, "lm_head");
  EXPECT_EQ(plan->tp[2].style, Style::kColwiseGatherOutput);
  EXPECT_EQ(PlanFromConfigJson("{}").status().code(), absl::StatusCode::kNotFound);
}

// Every shipped plan parses and every key matches the real model's names.
TEST(ShippedPlans, ResolveAgainstTheirModels) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"plans/llama.yaml", "tests/data/hf/llama"},
      {"plans/mistral.yaml", "tests/data/hf/mistral"},
      {"plans/qwen2.yaml", "tests/data/hf/qwen2"},
      {"plans/qwen3.yaml", "tests/data/gen/qwen3"},
      {"plans/phi3.yaml", "tests/data/gen/phi3"},
      {"plans/mixtral.yaml", "tests/data/gen/mixtral"}};
  for (const auto& [file, model] : cases) {
    auto plan = LoadPlanFile(file);
    ASSERT_TRUE(plan.ok()) << plan.status();
    auto resolved = ResolvePlan(*plan, ParameterNames(model));
    ASSERT_TRUE(resolved.ok()) << file << ": " << resolved.status();
    EXPECT_EQ(resolved->at("lm_head.weight").style, Style::kColwiseGatherOutput) << file;
    EXPECT_EQ(resolved->count("model.norm.weight"), 0u) << file;  // replicated
  }
  auto qwen2 =
      ResolvePlan(*LoadPlanFile("plans/qwen2.yaml"), ParameterNames("tests/data/hf/qwen2"));
  EXPECT_EQ(qwen2->at("model.layers.1.self_attn.k_proj.bias").style, Style::kColwise);
}

TEST(ShippedPlans, CompiledInAndAuto) {
  EXPECT_EQ(ShippedPlans().size(), 13u);
  auto plan = ResolvePlanArgument("auto", "tests/data/gen/phi3");  // no base_model_tp_plan
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->tp[0].pattern, "model.layers.*.self_attn.qkv_proj");
  EXPECT_EQ(plan->tp[0].style, Style::kPackedColwise);
  auto file = ResolvePlanArgument("plans/llama.yaml", "tests/data/hf/llama");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->tp.size(), 8u);
}

}  // namespace
}  // namespace weft
