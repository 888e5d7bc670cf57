// Resharding refuses a checkpoint whose saved slices leave part of a rank's
// slice uncovered (one line, DataLoss), and accepts slices that overlap in
// part (a packed q | k | v's replicated KV rows are saved by every rank
// sharing the head).
#include <ATen/ATen.h>

#include <cstdlib>
#include <filesystem>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "parallel/device_mesh.h"
#include "parallel/runtime.h"
#include "tests/multiprocess.h"
#include "trainer/checkpointing.h"

namespace weft {
namespace {

using testing::InitCpuRuntime;
using testing::RankResults;
using testing::RunRanks;

std::string TmpDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  return std::string(base ? base : "/tmp") + "/" + name;
}

// One process saves `w` [2, 3] as rows `rows` of a [4, 3] tensor.
void SaveRows(const std::string& dir, Range rows) {
  RankResults result = RunRanks(1, [dir, rows] {
    auto rt = InitCpuRuntime();
    auto mesh = DeviceMesh::Create(*rt, {{"dp", 1}, {"tp", 1}});
    ASSERT_TRUE(mesh.ok()) << mesh.status();
    SaveRequest request;
    request.output_dir = dir;
    request.state.step = 1;
    request.params = {{"w", at::arange(6, at::kFloat).view({2, 3})}};
    std::map<std::string, TensorSlice> slices = {{"w", {{4, 3}, {{rows}, {}}}}};
    request.slices = &slices;
    ASSERT_TRUE(SaveCheckpoint(request, *mesh, 0).ok());
  });
  ASSERT_TRUE(result.AllSucceeded()) << result.Describe();
}

absl::StatusOr<LoadedCheckpoint> LoadRows(const std::string& dir, Range rows) {
  LoadLayout layout;
  layout.dp_shard = 2;  // another layout than the saved one: the slices path
  layout.dp_shard_rank = rows.start == 0 ? 0 : 1;
  layout.targets["w"] = {{4, 3}, {{rows}, {}}};
  return LoadCheckpointSlices(CheckpointDir(dir, 1), layout);
}

TEST(Resharding, AnUncoveredSliceIsOneLineDataLoss) {
  const std::string dir = TmpDir("coverage");
  std::filesystem::remove_all(dir);
  SaveRows(dir, {0, 2});
  auto covered = LoadRows(dir, {0, 2});
  ASSERT_TRUE(covered.ok()) << covered.status();
  EXPECT_TRUE(at::equal(covered->params.at("w"), at::arange(6, at::kFloat).view({2, 3})));
  auto missing = LoadRows(dir, {1, 3});  // row 2 was never saved
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(absl::IsDataLoss(missing.status())) << missing.status();
  EXPECT_EQ(missing.status().message(),
            CheckpointDir(dir, 1) +
                ": the saved slices do not cover all 6 elements of 'w' this rank needs (expected "
                "every element saved by some rank)");
}

}  // namespace
}  // namespace weft
