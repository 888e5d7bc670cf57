#include "trainer/activation_checkpointing.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "models/pretrained.h"

namespace weft {
namespace {

struct Pass {
  int attention_calls = 0;
  at::Tensor loss;
  std::map<std::string, at::Tensor> grads;
};

Pass ForwardBackward(bool checkpointing) {
  PretrainedOptions options;
  options.dtype = at::kFloat;
  auto model = FromPretrained("tests/data/hf/llama", options);
  EXPECT_TRUE(model.ok()) << model.status();
  Pass run;
  if (checkpointing) {
    EXPECT_EQ(EnableActivationCheckpointing(**model), (*model)->config.num_hidden_layers);
  }
  for (auto& [name, module] : NamedWeftModules(**model)) {
    if (name == "model.layers.0.self_attn") {
      module->AddPreHook([&run](Module&, Module::Tensors&) { ++run.attention_calls; });
    }
  }
  at::Tensor ids = at::arange(12, at::kLong).remainder(50).view({2, 6});
  CausalLMInputs inputs;
  inputs.input_ids = ids;
  inputs.labels = ids;
  CausalLMOutput out = (*model)->Forward(inputs);
  out.loss.backward();
  run.loss = out.loss.detach();
  for (const auto& item : (*model)->named_parameters()) run.grads[item.key()] = item.value().grad();
  return run;
}

TEST(ActivationCheckpointing, RecomputesInBackwardWithIdenticalGradients) {
  Pass plain = ForwardBackward(false), checkpointed = ForwardBackward(true);
  EXPECT_EQ(plain.attention_calls, 1);
  EXPECT_EQ(checkpointed.attention_calls, 2);  // forward, then the recomputation
  EXPECT_TRUE(at::equal(plain.loss, checkpointed.loss));
  ASSERT_EQ(plain.grads.size(), checkpointed.grads.size());
  for (const auto& [name, grad] : plain.grads) {
    ASSERT_TRUE(checkpointed.grads[name].defined()) << name;
    EXPECT_TRUE(at::equal(grad, checkpointed.grads[name])) << name;
  }
}

TEST(ActivationCheckpointing, NoRecomputationWithoutGradients) {
  PretrainedOptions options;
  options.dtype = at::kFloat;
  auto model = FromPretrained("tests/data/hf/llama", options);
  ASSERT_TRUE(model.ok());
  EnableActivationCheckpointing(**model);
  at::NoGradGuard no_grad;
  at::Tensor ids = at::arange(6, at::kLong).view({1, 6});
  CausalLMInputs inputs;
  inputs.input_ids = ids;
  auto out = (*model)->Forward(inputs);
  EXPECT_FALSE(out.logits.requires_grad());
}

}  // namespace
}  // namespace weft
