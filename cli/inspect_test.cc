#include "cli/inspect.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "gtest/gtest.h"

namespace weft {
namespace {

TEST(Inspect, PrintsTheTableAndTotals) {
  std::ostringstream out, err;
  ASSERT_EQ(RunInspect("tests/data/hf/llama-sharded", out, err), 0) << err.str();
  std::string text = out.str();
  EXPECT_NE(text.find("name "), std::string::npos) << text;
  // Columns are padded to the longest name.
  EXPECT_NE(text.find("model.layers.1.mlp.down_proj.weight             F32    [64, 128]  32768  "
                      "model-00002-of-00002.safetensors\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("21 tensors, 427264 bytes (417.2 KiB) in 2 files"), std::string::npos)
      << text;
  EXPECT_NE(text.find("metadata of model-00001-of-00002.safetensors: format=pt"), std::string::npos)
      << text;
  EXPECT_TRUE(err.str().empty());
}

TEST(Inspect, BadFileIsOneLineAndExitCode2) {
  const char* dir = std::getenv("TEST_TMPDIR");
  std::string path = std::string(dir ? dir : "/tmp") + "/broken.safetensors";
  std::ofstream(path, std::ios::binary) << std::string("\x10\0\0\0\0\0\0\0{\"a\":", 13);
  std::ostringstream out, err;
  EXPECT_EQ(RunInspect(path, out, err), 2);
  EXPECT_EQ(err.str(), "weft inspect: " + path +
                           ": header length 16 runs past the end of the file (5 bytes follow the "
                           "length)\n");
  EXPECT_TRUE(out.str().empty());
}

// A FIFO used to block forever (open waits for a writer).
TEST(Inspect, AFifoIsAnErrorNotAHang) {
  const char* dir = std::getenv("TEST_TMPDIR");
  const std::string fifo = std::string(dir ? dir : "/tmp") + "/inspect_fifo";
  ::unlink(fifo.c_str());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  std::ostringstream out, err;
  EXPECT_EQ(RunInspect(fifo, out, err), 2);
  EXPECT_EQ(err.str(), "weft inspect: " + fifo + ": not a regular file\n");
}

}  // namespace
}  // namespace weft
