#include "parallel/cuda_plugin.h"

#include "gtest/gtest.h"

namespace weft {
namespace {

// The plugin builds, is found next to the test and resolves, whether or not
// this machine has a GPU.
TEST(CudaPlugin, LoadsWhenBuiltWithCuda) {
  std::string why;
  const CudaPlugin* cuda = GetCudaPlugin(&why);
  if (!WEFT_WITH_NCCL) {
    EXPECT_EQ(cuda, nullptr);
    EXPECT_NE(why.find("no CUDA"), std::string::npos) << why;
    return;
  }
  ASSERT_NE(cuda, nullptr) << why;
  ASSERT_NE(cuda->device_count, nullptr);
  ASSERT_NE(cuda->create_nccl, nullptr);
  ASSERT_NE(cuda->reserve, nullptr);
  int gpus = cuda->device_count();
  EXPECT_GE(gpus, 0);
  if (!MachineHasNvidiaDevices()) EXPECT_EQ(gpus, 0);
}

}  // namespace
}  // namespace weft
