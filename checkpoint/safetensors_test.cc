#include "checkpoint/safetensors.h"

#include <ATen/ATen.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include "base/dtype.h"
#include "gtest/gtest.h"

namespace weft {
namespace {

// Bytes of a safetensors file: the length, `header` verbatim, `data` bytes.
std::string FileBytes(const std::string& header, size_t data_bytes, bool pad = false) {
  std::string h = header;
  if (pad) h.append((8 - h.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(n >> (8 * i));
  return out + h + std::string(data_bytes, '\x01');
}

std::string Parse(const std::string& bytes) {
  auto h = ParseSafetensorsHeader(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  return h.ok() ? "OK" : std::string(h.status().message());
}

std::string TmpPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/" + name;
}

TEST(SafetensorsHeader, AcceptsAValidFile) {
  EXPECT_EQ(
      Parse(FileBytes(
          R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
          8)),
      "OK");
  // Empty header object and no data: a valid, empty file.
  EXPECT_EQ(Parse(FileBytes("{}", 0)), "OK");
  // Zero-sized tensors anywhere.
  EXPECT_EQ(
      Parse(FileBytes(
          R"({"z":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
          1)),
      "OK");
}

TEST(SafetensorsHeader, RejectsShortFilesAndBadLengths) {
  EXPECT_EQ(Parse("abc"),
            "file is 3 bytes, too short for the 8-byte header length (expected >= 8)");
  std::string huge(8, '\0');
  uint64_t n = 100'000'001;
  for (int i = 0; i < 8; ++i) huge[i] = static_cast<char>(n >> (8 * i));
  EXPECT_EQ(Parse(huge), "header length 100000001 exceeds the limit of 100000000 bytes");
  std::string past = FileBytes("{}", 0);
  past[0] = 50;
  EXPECT_EQ(Parse(past),
            "header length 50 runs past the end of the file (2 bytes follow the length)");
}

TEST(SafetensorsHeader, RejectsBadText) {
  EXPECT_EQ(Parse(FileBytes("{\"a\xff\":1}", 0)), "header is not valid UTF-8 (byte 3 of 8)");
  EXPECT_EQ(Parse(FileBytes("[1, 2]", 0)),
            "header does not start with '{' (expected a JSON object)");
  EXPECT_EQ(Parse(FileBytes("{\"a\": }", 0)), "header: invalid JSON at byte 6: expected a value");
  EXPECT_EQ(Parse(FileBytes("{} x", 0)),
            "header: invalid JSON at byte 3: unexpected bytes after the JSON value");
}

TEST(SafetensorsHeader, RejectsBadMetadata) {
  EXPECT_EQ(Parse(FileBytes(R"({"__metadata__":{"format":"pt","n":3}})", 0)),
            "'__metadata__' value for key 'n' is not a string (expected string values only)");
  EXPECT_EQ(Parse(FileBytes(R"({"__metadata__":[1]})", 0)),
            "'__metadata__' is not an object of strings");
}

TEST(SafetensorsHeader, RejectsBadFields) {
  auto one = [](const std::string& entry, size_t data = 8) {
    return Parse(FileBytes("{\"w\":" + entry + "}", data));
  };
  EXPECT_EQ(one(R"({"shape":[2],"data_offsets":[0,8]})"), "tensor 'w': missing field 'dtype'");
  EXPECT_EQ(one(R"({"dtype":"F32","data_offsets":[0,8]})"), "tensor 'w': missing field 'shape'");
  EXPECT_EQ(one(R"({"dtype":"F32","shape":[2]})"), "tensor 'w': missing field 'data_offsets'");
  EXPECT_EQ(one(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"),
            "tensor 'w': shape[0] is -2 (expected a non-negative integer)");
  EXPECT_EQ(one(R"({"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})"),
            "tensor 'w': shape[0] is 2.0 (expected a non-negative integer)");
  EXPECT_EQ(one(R"({"dtype":"F32","shape":["2"],"data_offsets":[0,8]})"),
            "tensor 'w': shape[0] is \"2\" (expected a non-negative integer)");
  EXPECT_EQ(one(R"({"dtype":"F32","shape":[2],"data_offsets":[-1,8]})"),
            "tensor 'w': data_offsets[0] is -1 (expected a non-negative integer)");
  EXPECT_EQ(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8.5]})"),
            "tensor 'w': data_offsets[1] is 8.5 (expected a non-negative integer)");
  EXPECT_EQ(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})"),
            "tensor 'w': 'data_offsets' is not a [begin, end] pair");
  EXPECT_EQ(
      one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,99999999999999999999999]})"),
      "tensor 'w': data_offsets[1] is 99999999999999999999999 (expected a non-negative integer)");
  EXPECT_EQ(one(R"([1])"), "tensor 'w': entry is not a JSON object");
}

TEST(SafetensorsHeader, RejectsDtypes) {
  EXPECT_EQ(
      Parse(FileBytes(R"({"w":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", 8)),
      "tensor 'w': unknown dtype 'F33' (expected one of " + SupportedSafetensorsDtypes() + ")");
  EXPECT_EQ(Parse(FileBytes(R"({"w":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", 1)),
            "tensor 'w': dtype F4 has no LibTorch scalar type (expected one of " +
                SupportedSafetensorsDtypes() + ")");
}

TEST(SafetensorsHeader, RejectsSpansThatDoNotMatchTheShape) {
  EXPECT_EQ(Parse(FileBytes(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8)),
            "tensor 'w': data_offsets [0, 8] span 8 bytes, but shape [3] of F32 needs 12");
  EXPECT_EQ(Parse(FileBytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8)),
            "tensor 'w': data_offsets [8, 0] end before they begin (expected begin <= end)");
  EXPECT_EQ(
      Parse(FileBytes(
          R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8)),
      "tensor 'w': shape [4294967296, 4294967296] times 4-byte F32 overflows 64 bits");
  EXPECT_EQ(Parse(FileBytes(
                R"({"w":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8]}})", 8)),
            "tensor 'w': shape [2305843009213693952] times 8-byte F64 overflows 64 bits");
}

TEST(SafetensorsHeader, RejectsOffsetsThatDoNotTileTheData) {
  const char* a = R"("a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]})";
  EXPECT_EQ(Parse(FileBytes(
                std::string("{") + R"("a":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})", 6)),
            "tensor 'a': first tensor starts at data offset 2 (expected 0)");
  EXPECT_EQ(
      Parse(FileBytes(
          std::string("{") + a + R"(,"b":{"dtype":"U8","shape":[2],"data_offsets":[5,7]}})", 7)),
      "tensor 'b' starts at data offset 5 but 'a' ends at 4 (a hole; expected contiguous tensors)");
  EXPECT_EQ(
      Parse(FileBytes(
          std::string("{") + a + R"(,"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}})", 5)),
      "tensor 'b' starts at data offset 3 but 'a' ends at 4 (an overlap; expected contiguous "
      "tensors)");
  EXPECT_EQ(Parse(FileBytes(std::string("{") + a + "}", 3)),
            "file is truncated: tensors end at data offset 4 but the data section has 3 bytes");
  EXPECT_EQ(
      Parse(FileBytes(std::string("{") + a + "}", 9)),
      "5 bytes after the last tensor (tensors end at data offset 4, the data section has 9 bytes)");
  EXPECT_EQ(Parse(FileBytes(std::string("{") + a + "," + a + "}", 4)), "duplicate tensor name 'a'");
}

TEST(SafetensorsFile, ErrorsNameTheFile) {
  std::string path = TmpPath("bad.safetensors");
  std::ofstream(path, std::ios::binary) << "abc";
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().message(),
            path + ": file is 3 bytes, too short for the 8-byte header length (expected >= 8)");
  auto missing = SafetensorsFile::Open(TmpPath("missing.safetensors"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(std::string(missing.status().message())
                .rfind("open(" + TmpPath("missing.safetensors") +
                           "): No such file or directory (errno 2) [",
                       0),
            0u)
      << missing.status();
}

TEST(SafetensorsFile, RoundTripsEveryDtype) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  at::Tensor base = at::arange(-6, 6, at::kFloat).reshape({3, 4}) * 0.75;
  for (at::ScalarType t : {at::kBool, at::kByte, at::kChar, at::kShort, at::kInt, at::kLong,
                           at::kHalf, at::kBFloat16, at::kFloat, at::kDouble, at::kFloat8_e4m3fn,
                           at::kFloat8_e5m2, at::kUInt16, at::kUInt32, at::kUInt64}) {
    at::Tensor v = (t == at::kByte || t == at::kUInt16 || t == at::kUInt32 || t == at::kUInt64)
                       ? base.abs().to(t)
                       : base.to(t);
    tensors.emplace_back(std::string("t.") + c10::toString(t), v);
  }
  tensors.emplace_back("scalar", at::scalar_tensor(3.5, at::kFloat));
  tensors.emplace_back("empty", at::empty({0, 5}, at::kFloat));
  tensors.emplace_back("strided", base.t());  // non-contiguous input
  std::string path = TmpPath("round.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}, {"note", "é\"x"}}).ok());
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->header().header_length % 8, 0u);
  EXPECT_EQ((*file)->header().metadata.size(), 2u);
  EXPECT_EQ((*file)->header().metadata[1].second, "é\"x");
  for (const auto& [name, t] : tensors) {
    at::Tensor got = (*file)->Get(name);
    EXPECT_EQ(got.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(got.sizes(), t.sizes()) << name;
    EXPECT_TRUE(at::equal(got.reshape({1, -1}).view(at::kByte),
                          t.contiguous().reshape({1, -1}).view(at::kByte)))
        << name;
    // Every tensor starts aligned to its element size, so it is a view.
    const TensorEntry* entry = (*file)->Find(name);
    EXPECT_EQ(reinterpret_cast<uintptr_t>((*file)->Data(*entry)) % got.element_size(), 0u) << name;
  }
  // No temporary file is left behind.
  EXPECT_NE(access((path + ".tmp." + std::to_string(getpid())).c_str(), F_OK), 0);
}

TEST(SafetensorsFile, ViewsOutliveTheFileObjectAndUnalignedDataIsCopied) {
  // A header of 9 bytes puts the data at offset 17: misaligned for F32.
  std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  header += std::string((8 - (8 + header.size()) % 8) % 8 + 1, ' ');
  std::string bytes = FileBytes(header, 0);
  float values[2] = {1.5f, -2.25f};
  bytes.append(reinterpret_cast<const char*>(values), 8);
  std::string path = TmpPath("unaligned.safetensors");
  std::ofstream(path, std::ios::binary) << bytes;
  at::Tensor t;
  {
    auto file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    t = (*file)->Get("a");
  }
  EXPECT_EQ(t[0].item<float>(), 1.5f);
  EXPECT_EQ(t[1].item<float>(), -2.25f);
}

}  // namespace
}  // namespace weft
