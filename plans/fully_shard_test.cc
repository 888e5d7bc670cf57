// fully_shard on 2 CPU/Gloo ranks with a tiny Llama: each rank holds half of
// every parameter; a decoder layer's gathered weights hold no memory after
// its forward (reshard_after_forward) and again after its backward; the
// pieces' gradients are the whole model's gradients, cut.
#include "plans/fully_shard.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "models/init.h"
#include "parallel/runtime.h"
#include "tests/multiprocess.h"

namespace weft {
namespace {

std::shared_ptr<CausalLM> TinyLlama(bool tied) {
  auto config = ParseModelConfig(std::string(R"({"architectures": ["LlamaForCausalLM"],
      "model_type": "llama", "vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
      "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": )") +
                                 (tied ? "true}" : "false}"));
  EXPECT_TRUE(config.ok()) << config.status();
  ModelOptions options;
  options.attn_implementation = "eager";
  auto model = CreateCausalLM(*config, options);
  EXPECT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE(InitializeWeights(**model, InitOptions(3)).ok());
  return *model;
}

void CheckShards(bool tied) {
  auto rt = testing::InitCpuRuntime();
  auto whole = TinyLlama(tied), sharded = TinyLlama(tied);
  auto fsdp = FullyShard(*sharded, rt->world_group());
  ASSERT_TRUE(fsdp.ok()) << fsdp.status();
  at::Tensor ids = at::arange(18, at::kLong).view({2, 9}) % 50;  // the same batch on both ranks
  CausalLMInputs inputs;
  inputs.input_ids = ids;
  inputs.labels = ids;
  CausalLMOutput want = whole->Forward(inputs);
  want.loss.backward();
  CausalLMOutput got = sharded->Forward(inputs);
  EXPECT_NEAR(got.loss.item<double>(), want.loss.item<double>(), 1e-6);
  auto params = sharded->named_parameters();
  auto bytes = [&](const char* name) { return params[name].storage().nbytes(); };
  EXPECT_EQ(bytes("model.layers.0.mlp.up_proj.weight"), 0u);  // freed after the layer's forward
  EXPECT_EQ(bytes("model.layers.1.self_attn.q_proj.weight"), 0u);
  EXPECT_GT(bytes("model.embed_tokens.weight"), 0u);  // kept through the step
  got.loss.backward();
  EXPECT_EQ(bytes("model.layers.0.mlp.up_proj.weight"), 0u);  // and after its backward
  auto want_params = whole->named_parameters();
  int64_t held = 0, total = 0;
  for (size_t i = 0; i < (*fsdp)->parameters().size(); ++i) {
    const FullyShardedModel::Param& p = (*fsdp)->parameters()[i];
    held += p.piece.numel();
    total += want_params[p.name].numel();
    ASSERT_TRUE(p.piece.grad().defined()) << p.name;
    at::Tensor expected = (*fsdp)->PieceOf(i, want_params[p.name].grad());
    EXPECT_TRUE(at::allclose(p.piece.grad(), expected, 1e-5, 1e-7)) << p.name;
  }
  EXPECT_LE(held, total / 2 + 200);  // about half (uneven chunks)
  (*fsdp)->Reshard();
  EXPECT_EQ(sharded->named_parameters()["model.norm.weight"].device().type(), at::kMeta);
}

TEST(FullyShard, PiecesGradientsAndFreedLayers) {
  for (bool tied : {false, true}) {
    testing::RankResults r = testing::RunRanks(2, [tied] { CheckShards(tied); });
    EXPECT_TRUE(r.AllSucceeded()) << (tied ? "tied\n" : "untied\n") << r.Describe();
  }
}

// A rank that dies before the step: the other's all-gather fails at once
// with one line naming the operation and the group, instead of hanging.
TEST(FullyShard, ADeadPeerIsNamedByTheAllGather) {
  testing::RankResults r = testing::RunRanks(2, [] {
    auto rt = testing::InitCpuRuntime();
    auto model = TinyLlama(false);
    auto fsdp = FullyShard(*model, rt->world_group());
    ASSERT_TRUE(fsdp.ok());
    if (rt->rank() == 1) std::_Exit(0);
    CausalLMInputs inputs;
    inputs.input_ids = at::arange(8, at::kLong).view({1, 8});
    try {
      model->Forward(inputs);
      ADD_FAILURE() << "the forward went through without its peer";
    } catch (const std::runtime_error& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.rfind("collective all-gather on group '" + rt->world().name() +
                               "' (global ranks 0,1) failed: ",
                           0),
                0u)
          << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    }
    std::_Exit(::testing::Test::HasFailure() ? 1 : 0);
  });
  EXPECT_TRUE(r.AllSucceeded()) << r.Describe();
}

}  // namespace
}  // namespace weft
