#include "base/dtype.h"

#include "gtest/gtest.h"

namespace weft {
namespace {

TEST(Dtype, TorchNamesAndTheirShortForms) {
  EXPECT_EQ(ScalarTypeFromTorchName("float32").value(), at::kFloat);
  EXPECT_EQ(ScalarTypeFromTorchName("fp32").value(), at::kFloat);
  EXPECT_EQ(ScalarTypeFromTorchName("bf16").value(), at::kBFloat16);
  EXPECT_EQ(ScalarTypeFromTorchName("half").value(), at::kHalf);
  EXPECT_EQ(ScalarTypeFromTorchName("int8", {at::kFloat, at::kBFloat16}).status().message(),
            "int8 is not supported (expected float32 or bfloat16)");
  EXPECT_EQ(ScalarTypeFromTorchName("float16", {at::kFloat, at::kBFloat16}).status().message(),
            "float16 is not supported (expected float32 or bfloat16)");
  EXPECT_EQ(TorchDtypeName(at::kBFloat16), "bfloat16");
}

TEST(Dtype, SafetensorsNames) {
  EXPECT_EQ(ScalarTypeFromSafetensors("BF16").value(), at::kBFloat16);
  EXPECT_EQ(SafetensorsDtypeName(at::kFloat).value(), "F32");
  EXPECT_FALSE(ScalarTypeFromSafetensors("F4").ok());
}

}  // namespace
}  // namespace weft
