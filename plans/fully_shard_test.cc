// fully_shard on 2 CPU/Gloo ranks with a tiny Llama: each rank holds half of
// every parameter; a decoder layer's gathered weights hold no memory after
// its forward (reshard_after_forward) and again after its backward; the
// pieces' gradients are the whole model's gradients, cut.
#include "plans/fully_shard.h"

#include <ATen/ATen.h>

#include "gtest/gtest.h"
#include "models/init.h"
#include "models/pretrained.h"
#include "parallel/runtime.h"
#include "tests/multiprocess.h"

namespace weft {
namespace {

ModelConfig TinyConfig(bool tied) {
  auto config = ParseModelConfig(std::string(R"({"architectures": ["LlamaForCausalLM"],
      "model_type": "llama", "vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
      "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": )") +
                                 (tied ? "true}" : "false}"));
  EXPECT_TRUE(config.ok()) << config.status();
  return *config;
}

ModelOptions Eager() {
  ModelOptions options;
  options.attn_implementation = "eager";
  return options;
}

std::shared_ptr<CausalLM> TinyLlama(bool tied) {
  auto model = CreateCausalLM(TinyConfig(tied), Eager());
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

// Pieces read before sharding (each rank reads or initialises only its rows)
// give what sharding a whole model gives: the same pieces, loss and
// gradients; 3 ranks cut unevenly. `dir` empty: transformers' initialisation.
void CheckReadPieces(const std::string& dir, bool tied) {
  auto rt = testing::InitCpuRuntime();
  const int n = rt->world_group()->size(), rank = rt->world_group()->rank();
  PretrainedOptions pretrained;
  pretrained.dtype = at::kFloat;
  pretrained.attn_implementation = "eager";
  auto load = [&]() -> std::shared_ptr<CausalLM> {
    if (dir.empty()) return TinyLlama(tied);
    auto model = FromPretrained(dir, pretrained);
    EXPECT_TRUE(model.ok()) << model.status();
    return *model;
  };
  std::shared_ptr<CausalLM> whole = load(), cut_model = load(), meta;
  PieceSource source;
  source.dir = dir;
  source.pretrained = pretrained;
  source.config = TinyConfig(tied);
  source.model_options = Eager();
  source.init = InitOptions(3);
  if (dir.empty()) {
    meta = *CreateCausalLM(source.config, source.model_options);
  } else {
    LoadHooks nothing;  // names and shapes checked, nothing read
    nothing.keep = [](const std::string&) { return false; };
    auto model = FromPretrained(dir, pretrained, nothing);
    ASSERT_TRUE(model.ok()) << model.status();
    meta = *model;
  }
  auto pieces = ReadPieces(source, n, rank);
  ASSERT_TRUE(pieces.ok()) << pieces.status();
  FullyShardOptions options;
  options.pieces = *pieces;
  auto read = FullyShard(*meta, rt->world_group(), options);
  ASSERT_TRUE(read.ok()) << read.status();
  auto cut = FullyShard(*cut_model, rt->world_group());
  ASSERT_TRUE(cut.ok()) << cut.status();
  ASSERT_EQ((*read)->parameters().size(), (*cut)->parameters().size());
  int64_t held = 0;
  for (size_t i = 0; i < (*cut)->parameters().size(); ++i) {
    const auto &a = (*read)->parameters()[i], &b = (*cut)->parameters()[i];
    ASSERT_EQ(a.name, b.name);
    EXPECT_EQ(a.full_shape, b.full_shape) << a.name;
    EXPECT_TRUE(at::equal(a.piece, b.piece)) << a.name;
    held += a.piece.numel();
  }
  // What the rank read: its pieces only (the loader's arena or the inits).
  int64_t total = 0;
  for (const auto& item : whole->named_parameters()) {
    if (item.key() != "lm_head.weight" || !tied) total += item.value().numel();
  }
  EXPECT_LE(held, total / n + 2000) << "rank " << rank;
  at::Tensor ids = at::arange(18, at::kLong).view({2, 9}) % 50;
  CausalLMInputs inputs;
  inputs.input_ids = ids;
  inputs.labels = ids;
  CausalLMOutput want = cut_model->Forward(inputs);
  want.loss.backward();
  CausalLMOutput got = meta->Forward(inputs);
  got.loss.backward();
  EXPECT_NEAR(got.loss.item<double>(), whole->Forward(inputs).loss.item<double>(), 1e-6);
  for (size_t i = 0; i < (*cut)->parameters().size(); ++i) {
    const auto &a = (*read)->parameters()[i], &b = (*cut)->parameters()[i];
    EXPECT_TRUE(at::allclose(a.piece.grad(), b.piece.grad(), 1e-5, 1e-7)) << a.name;
  }
}

TEST(FullyShard, PiecesReadBeforeShardingEqualAWholeModelCut) {
  for (int n : {2, 3}) {
    for (const std::string& dir : {std::string(), std::string("tests/data/hf/llama")}) {
      for (bool tied : {false, true}) {
        if (!dir.empty() && tied) continue;  // the fixture is untied
        testing::RankResults r = testing::RunRanks(n, [&] { CheckReadPieces(dir, tied); });
        EXPECT_TRUE(r.AllSucceeded()) << n << " ranks, " << (dir.empty() ? "initialised" : dir)
                                      << (tied ? ", tied" : "") << "\n"
                                      << r.Describe();
      }
    }
  }
}

// NarrowRows: an FSDP piece of a tensor-parallel slice, packed ranges included.
TEST(FullyShard, NarrowRowsCutsTheRowsASliceSelects) {
  const std::vector<int64_t> shape = {12, 4};
  Slice whole = NarrowRows({}, shape, 3, 5);
  ASSERT_EQ(whole.size(), 2u);
  ASSERT_EQ(whole[0].size(), 1u);
  EXPECT_EQ(whole[0][0].start, 3);
  EXPECT_EQ(whole[0][0].end, 8);
  EXPECT_TRUE(whole[1].empty());
  // A packed shard: rows [2, 4) and [8, 10); its local rows [1, 3) are 3 and 8.
  Slice packed = NarrowRows({{{2, 4}, {8, 10}}, {{0, 2}}}, shape, 1, 2);
  ASSERT_EQ(packed[0].size(), 2u);
  EXPECT_EQ(packed[0][0].start, 3);
  EXPECT_EQ(packed[0][0].end, 4);
  EXPECT_EQ(packed[0][1].start, 8);
  EXPECT_EQ(packed[0][1].end, 9);
  EXPECT_EQ(packed[1][0].end, 2);
  // No rows (a trailing rank of torch.chunk): an empty range, not "all".
  Slice none = NarrowRows({}, shape, 12, 0);
  ASSERT_EQ(none[0].size(), 1u);
  EXPECT_EQ(none[0][0].start, none[0][0].end);
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
