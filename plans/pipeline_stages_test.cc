// Pipeline stages from pp_plans: the cuts (even with torchtitan's weights,
// layers_per_stage, split points, explicit stages) and their errors; plan
// files in transformers' format; and the gates: a model run stage by stage,
// each stage handing its activation to the next, gives the whole model's
// logits and gradients, for tied and untied models.
#include "plans/pipeline_stages.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "gtest/gtest.h"
#include "models/init.h"
#include "plans/shipped_plans.h"

namespace weft {
namespace {

std::vector<std::string> Layers(int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back("model.layers." + std::to_string(i));
  return out;
}

const std::vector<std::string> kBefore = {"model.embed_tokens"};
const std::vector<std::string> kAfter = {"model.norm", "lm_head"};

std::string Text(const std::vector<std::vector<std::string>>& stages) {
  std::string out;
  for (const auto& stage : stages) {
    out += "[";
    for (size_t i = 0; i < stage.size(); ++i) out += (i ? " " : "") + stage[i];
    out += "]";
  }
  return out;
}

std::string Cut(int layers, const PpSplit& split, int stages) {
  auto cut = CutStages(kBefore, Layers(layers), kAfter, split, stages);
  return cut.ok() ? Text(*cut) : std::string(cut.status().message());
}

TEST(CutStages, AnEvenSplitCountsTheEmbeddingAndTheHeadAsLayers) {
  PpSplit split;
  EXPECT_EQ(Cut(2, split, 2),
            "[model.embed_tokens model.layers.0][model.layers.1 model.norm lm_head]");
  EXPECT_EQ(Cut(3, split, 2),
            "[model.embed_tokens model.layers.0 model.layers.1][model.layers.2 model.norm "
            "lm_head]");
  // 8 layers + 2 = 10 on 4 stages: 3, 3, 2, 2 with the ends counting one each.
  EXPECT_EQ(Cut(8, split, 4),
            "[model.embed_tokens model.layers.0 model.layers.1][model.layers.2 model.layers.3 "
            "model.layers.4][model.layers.5 model.layers.6][model.layers.7 model.norm lm_head]");
  split.first_stage_less_layers = 0;
  split.last_stage_less_layers = 0;
  EXPECT_EQ(Cut(4, split, 2),
            "[model.embed_tokens model.layers.0 model.layers.1][model.layers.2 model.layers.3 "
            "model.norm lm_head]");
  split = PpSplit();
  EXPECT_EQ(Cut(2, split, 5),
            "pipeline: 5 stages for a model of 2 layers (expected at most 4: the layers plus "
            "first_stage_less_layers 1 and last_stage_less_layers 1)");
}

TEST(CutStages, LayersPerStageSplitPointsAndExplicitStages) {
  PpSplit split;
  split.layers_per_stage = {3, 1};
  EXPECT_EQ(Cut(4, split, 2),
            "[model.embed_tokens model.layers.0 model.layers.1 model.layers.2][model.layers.3 "
            "model.norm lm_head]");
  split.layers_per_stage = {3, 2};
  EXPECT_EQ(Cut(4, split, 2),
            "pp_split.layers_per_stage [3, 2] has 2 entries summing to 5 (expected 2 stages "
            "summing to the model's 4 layers)");
  split = PpSplit();
  split.split_points = {"model.layers.1", "model.norm"};
  EXPECT_EQ(Cut(2, split, 3),
            "[model.embed_tokens model.layers.0][model.layers.1][model.norm lm_head]");
  split.split_points = {"model.layers.1", "model.layers.7"};
  EXPECT_EQ(Cut(2, split, 3),
            "pp_split.split_points: 'model.layers.7' is no pipeline module (model.embed_tokens .. "
            "lm_head (5 modules))");
  split.split_points = {"model.layers.1", "model.layers.0"};
  EXPECT_EQ(Cut(2, split, 3),
            "pp_split.split_points: 'model.layers.0' does not come after the previous point "
            "(expected modules in forward order, each stage non-empty)");
  split = PpSplit();
  split.stages = {{"model.embed_tokens"},
                  {"model.layers.0", "model.layers.1", "model.norm", "lm_head"}};
  EXPECT_EQ(Cut(2, split, 2),
            "[model.embed_tokens][model.layers.0 model.layers.1 model.norm lm_head]");
  split.stages = {{"model.embed_tokens", "model.layers.0"},
                  {"model.layers.0", "model.layers.1", "model.norm", "lm_head"}};
  EXPECT_EQ(Cut(2, split, 2),
            "pp_split.stages: 'model.layers.0' in stage 1 is named twice or out of forward order "
            "(expected model.layers.1)");
  split.stages = {{"model.embed_tokens"}, {"model.layers.0", "model.layers.1", "model.norm"}};
  EXPECT_EQ(Cut(2, split, 2),
            "pp_split.stages: 'lm_head' is in no stage (expected every module once, in forward "
            "order)");
  split.stages = {{"model.embed_tokens"}};
  EXPECT_EQ(Cut(2, split, 2),
            "pp_split.stages lists 1 stages, but the pipeline has 2 (pp x stages_per_rank)");
}

TEST(PpPlanFiles, TransformersFormatWithSplitKeysNextToATpPlan) {
  auto plan = ParsePlan(R"(
tp_plan:
  "model.layers.*.self_attn.q_proj": colwise
pp_plan:
  embed_tokens: [[input_ids], [inputs_embeds]]
  layers: [[hidden_states, attention_mask], [hidden_states]]
  norm: [[hidden_states], [hidden_states]]
  lm_head: [[hidden_states], [logits]]
pp_split:
  layers_per_stage: [1, 1]
  stages_per_rank: 1
)",
                        "p.yaml");
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->tp.size(), 1u);
  ASSERT_EQ(plan->pp.size(), 4u);
  EXPECT_EQ(plan->pp[1].module, "layers");
  EXPECT_EQ(plan->pp[1].inputs, (std::vector<std::string>{"hidden_states", "attention_mask"}));
  EXPECT_EQ(plan->pp_split.layers_per_stage, (std::vector<int64_t>{1, 1}));
  // JSON as transformers' configs spell it.
  auto json = PpPlanFromConfigJson(
      R"({"base_model_pp_plan": {"embed_tokens": [["input_ids"], ["inputs_embeds"]],
          "layers": [["hidden_states", "attention_mask"], ["hidden_states"]],
          "norm": [["hidden_states"], ["hidden_states"]]}})");
  ASSERT_TRUE(json.ok()) << json.status();
  ASSERT_EQ(json->pp.size(), 4u);
  EXPECT_EQ(json->pp[0].module, "model.embed_tokens");
  EXPECT_EQ(json->pp[3].module, "lm_head");
  EXPECT_EQ(json->pp[3].outputs, std::vector<std::string>{"logits"});
  for (const auto& [text, error] : std::vector<std::pair<std::string, std::string>>{
           {"pp_plan:\n  layers: [hidden_states]\n",
            "p.yaml: pp_plan key 'layers' is not [[inputs], [outputs]] (transformers' pp_plan "
            "format)"},
           {"tp_plan:\n  lm_head: colwise\npp_split:\n  layers_per_stage: [1]\n",
            "p.yaml: pp_split without a pp_plan (expected both, or pp_plan alone)"},
           {"pp_plan:\n  layers: [[a], [b]]\npp_split:\n  layers_per_stage: [1]\n  split_points: "
            "[x]\n",
            "p.yaml: pp_split gives more than one of layers_per_stage, split_points and stages "
            "(expected at most one way to cut the model)"},
           {"pp_plan:\n  layers: [[a], [b]]\npp_split:\n  stage_to_rank: zigzag\n",
            "p.yaml: pp_split.stage_to_rank is 'zigzag' (expected loop or v)"},
           {"pp_plan:\n  layers: [[a], [b]]\npp_split:\n  chunks: 2\n",
            "p.yaml: unknown pp_split key 'chunks' (expected first_stage_less_layers, "
            "last_stage_less_layers, layers_per_stage, split_points, stages, stages_per_rank or "
            "stage_to_rank)"},
       }) {
    auto bad = ParsePlan(text, "p.yaml");
    ASSERT_FALSE(bad.ok()) << text;
    EXPECT_EQ(bad.status().message(), error);
  }
}

TEST(PpPlanFiles, EveryShippedPlanHasAPpPlan) {
  for (const auto& [name, yaml] : ShippedPlans()) {
    auto plan = ParsePlan(yaml, name);
    ASSERT_TRUE(plan.ok()) << plan.status();
    ASSERT_EQ(plan->pp.size(), 4u) << name;
    EXPECT_EQ(plan->pp[1].module, "model.layers") << name;
  }
}

std::shared_ptr<CausalLM> TinyLlama(bool tied, int layers = 4) {
  auto config = ParseModelConfig(
      std::string(R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": 50, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": )") +
      std::to_string(layers) + R"(, "num_attention_heads": 4, "num_key_value_heads": 2,
      "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": )" +
      (tied ? "true" : "false") + "}");
  EXPECT_TRUE(config.ok()) << config.status();
  ModelOptions options;
  options.attn_implementation = "eager";
  auto model = CreateCausalLM(*config, options);
  EXPECT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE(InitializeWeights(**model, InitOptions(7)).ok());
  return *model;
}

Plan LlamaPlan() {
  for (const auto& [name, yaml] : ShippedPlans()) {
    if (name == "llama") return ParsePlan(yaml, name).value();
  }
  return Plan();
}

// Stage by stage in one process, the activation handed on as a leaf, the
// gradient handed back: the whole model's loss and gradients.
TEST(GatePipelineStages, StageByStageEqualsTheWholeModel) {
  for (bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied" : "untied");
    auto whole = TinyLlama(tied), staged = TinyLlama(tied);
    at::Tensor ids = at::randint(0, 50, {2, 9}, at::kLong);
    CausalLMInputs inputs;
    inputs.input_ids = ids;
    inputs.labels = ids;
    CausalLMOutput want = whole->Forward(inputs);
    want.loss.backward();

    auto stages = PartitionModel(*staged, LlamaPlan(), 3);
    ASSERT_TRUE(stages.ok()) << stages.status();
    EXPECT_EQ(Text(stages->stages),
              "[model.embed_tokens model.layers.0][model.layers.1 model.layers.2]"
              "[model.layers.3 model.norm lm_head]");
    EXPECT_EQ(stages->StageOf("model.layers.2.mlp.up_proj.weight"), 1);
    EXPECT_EQ(stages->StageOf("model.layers.20.mlp.up_proj.weight"), -1);
    auto gate = GatePipelineStages(*staged, *stages);
    std::vector<at::Tensor> inputs_of(3), outputs_of(3);
    at::Tensor activation;
    CausalLMOutput last;
    for (int s = 0; s < 3; ++s) {
      gate->current = s;
      gate->input = s == 0 ? at::Tensor() : activation.detach().requires_grad_(true);
      inputs_of[s] = gate->input;
      CausalLMInputs in;
      in.input_ids = ids;
      if (s == 2) in.labels = ids;
      last = staged->Forward(in);
      outputs_of[s] = s == 2 ? last.loss : gate->output;
      activation = gate->output;
    }
    gate->current = -1;
    EXPECT_TRUE(at::allclose(last.logits, want.logits, 1e-6, 1e-6));
    EXPECT_NEAR(last.loss.item<double>(), want.loss.item<double>(), 1e-6);
    at::Tensor grad;
    for (int s = 2; s >= 0; --s) {
      if (s == 2) {
        outputs_of[s].backward();
      } else {
        outputs_of[s].backward(grad);
      }
      if (s > 0) grad = inputs_of[s].grad();
    }
    auto want_params = whole->named_parameters();
    for (const auto& item : staged->named_parameters()) {
      const at::Tensor& w = want_params[item.key()];
      ASSERT_TRUE(item.value().grad().defined()) << item.key();
      EXPECT_TRUE(at::allclose(item.value().grad(), w.grad(), 1e-5, 1e-6)) << item.key();
    }
    // Gates off: the model runs whole again.
    CausalLMOutput again = staged->Forward(inputs);
    EXPECT_TRUE(at::allclose(again.logits, want.logits, 1e-6, 1e-6));
  }
}

TEST(PartitionModel, NamesAPlanKeyThatMatchesNothing) {
  auto model = TinyLlama(false);
  Plan plan = LlamaPlan();
  plan.pp[2].module = "model.final_norm";
  auto stages = PartitionModel(*model, plan, 2);
  ASSERT_FALSE(stages.ok());
  EXPECT_EQ(stages.status().message(),
            "pp_plan key 'model.final_norm' matches no module of LlamaForCausalLM (expected a "
            "piece of the model in forward order, e.g. model.layers)");
  plan = LlamaPlan();
  plan.pp.erase(plan.pp.begin() + 2);  // no norm: its weight lies in no stage
  stages = PartitionModel(*model, plan, 2);
  ASSERT_FALSE(stages.ok());
  EXPECT_EQ(stages.status().message(),
            "parameter 'model.norm.weight' of LlamaForCausalLM lies in no pp_plan module "
            "(expected the pp_plan to cover the whole model)");
}

}  // namespace
}  // namespace weft
