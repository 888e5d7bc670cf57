#include "base/slice.h"
#include "gtest/gtest.h"
#include "parallel/device_mesh.h"

namespace weft {
namespace {

TEST(MeshShape, ProductMustEqualWorld) {
  EXPECT_TRUE(ValidateMeshShape({{"dp", 2}, {"tp", 2}}, 4).ok());
  EXPECT_EQ(ValidateMeshShape({{"dp", 2}, {"tp", 3}}, 4).message(),
            "mesh dp(2) * tp(3) = 6 != WORLD_SIZE 4");
  EXPECT_EQ(ValidateMeshShape({{"pp", 2}, {"dp", 1}, {"tp", 4}}, 4).message(),
            "mesh pp(2) * dp(1) * tp(4) = 8 != WORLD_SIZE 4");
}

TEST(MeshShape, RejectsBadAxes) {
  EXPECT_EQ(ValidateMeshShape({}, 1).message(), "mesh has no axes (expected at least one)");
  EXPECT_EQ(ValidateMeshShape({{"tp", 2}, {"tp", 2}}, 4).message(),
            "mesh axis 'tp' appears twice (expected distinct names)");
  EXPECT_EQ(ValidateMeshShape({{"tp", 0}}, 1).message(), "mesh axis tp has size 0 (expected >= 1)");
}

TEST(Chunk, FollowsTorchChunk) {
  // torch.arange(5).chunk(4) -> [0,1], [2,3], [4], (nothing)
  EXPECT_EQ(ChunkOf(5, 4, 0), (ChunkSpan{0, 2}));
  EXPECT_EQ(ChunkOf(5, 4, 1), (ChunkSpan{2, 2}));
  EXPECT_EQ(ChunkOf(5, 4, 2), (ChunkSpan{4, 1}));
  EXPECT_EQ(ChunkOf(5, 4, 3), (ChunkSpan{5, 0}));
  EXPECT_EQ(ChunkOf(8, 4, 3), (ChunkSpan{6, 2}));
  EXPECT_EQ(ChunkOf(0, 2, 1), (ChunkSpan{0, 0}));
}

}  // namespace
}  // namespace weft
