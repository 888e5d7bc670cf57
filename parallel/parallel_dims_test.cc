#include "parallel/parallel_dims.h"

#include "gtest/gtest.h"

namespace weft {
namespace {

ParallelDimsOptions Options(int dp, int tp, int64_t global_batch, int64_t micro_batch) {
  ParallelDimsOptions o;
  o.dp = dp;
  o.tp = tp;
  o.global_batch = global_batch;
  o.micro_batch = micro_batch;
  return o;
}

TEST(ParallelDims, BatchArithmetic) {
  auto dims = ParallelDims::Create(Options(0, 2, 8, 2), /*world_size=*/4);
  ASSERT_TRUE(dims.ok()) << dims.status();
  EXPECT_EQ(dims->dp(), 2);  // WORLD_SIZE / tp
  EXPECT_EQ(dims->tp(), 2);
  EXPECT_TRUE(dims->dp_enabled());
  EXPECT_TRUE(dims->tp_enabled());
  EXPECT_EQ(dims->local_batch(), 4);
  EXPECT_EQ(dims->micro_batch(), 2);
  EXPECT_EQ(dims->accumulation(), 2);
  ASSERT_EQ(dims->mesh_axes().size(), 2u);
  EXPECT_EQ(dims->mesh_axes()[0].name, "dp");
  EXPECT_EQ(dims->mesh_axes()[1].size, 2);
  auto whole = ParallelDims::Create(Options(1, 1, 3, 0), 1);
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(whole->micro_batch(), 3);  // 0: the whole per-rank batch
  EXPECT_EQ(whole->accumulation(), 1);
}

TEST(ParallelDims, ErrorsNameEveryDegree) {
  EXPECT_EQ(ParallelDims::Create(Options(2, 2, 8, 0), 3).status().message(),
            "mesh dp(2) * tp(2) = 4 != WORLD_SIZE 3");
  EXPECT_EQ(ParallelDims::Create(Options(2, 1, 7, 0), 2).status().message(),
            "train.global_batch 7 is not divisible by dp 2");
  EXPECT_EQ(ParallelDims::Create(Options(2, 1, 8, 3), 2).status().message(),
            "train.micro_batch 3 does not divide the per-rank batch 4 (global_batch 8 / dp 2)");
  EXPECT_EQ(ParallelDims::Create(Options(1, 0, 8, 0), 2).status().message(),
            "parallel.tp 0 is not a degree (expected >= 1)");
}

TEST(ParallelDims, GradientReplicationFromPlacements) {
  auto dims = ParallelDims::Create(Options(1, 4, 4, 0), 4);
  ASSERT_TRUE(dims.ok());
  EXPECT_EQ(dims->GradReplication(nullptr), 4);  // not in the plan: replicated
  DTensorSpec replicated;
  replicated.placements = {Placement::Replicate()};
  replicated.replicas = 4;
  EXPECT_EQ(dims->GradReplication(&replicated), 4);
  DTensorSpec shard;
  shard.placements = {Placement::Shard(0)};
  EXPECT_EQ(dims->GradReplication(&shard), 1);
  DTensorSpec kv_head = shard;  // a KV head shared by 2 of the 4 ranks
  kv_head.replicas = 2;
  EXPECT_EQ(dims->GradReplication(&kv_head), 2);
  auto single = ParallelDims::Create(Options(2, 1, 4, 0), 2);
  EXPECT_EQ(single->GradReplication(nullptr), 1);  // no tp: every gradient is whole
}

}  // namespace
}  // namespace weft
