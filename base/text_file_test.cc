#include "base/text_file.h"

#include <cstdlib>

#include <sys/stat.h>

#include "gtest/gtest.h"

namespace weft {
namespace {

TEST(TextFile, RoundTrip) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/a.json";
  ASSERT_TRUE(WriteTextFileAtomically(path, "{\"a\": 1}\n").ok());
  auto text = ReadTextFile(path);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "{\"a\": 1}\n");
  ASSERT_TRUE(WriteTextFileAtomically(path, "").ok());
  EXPECT_EQ(*ReadTextFile(path), "");
}

TEST(TextFile, Errors) {
  EXPECT_EQ(ReadTextFile("/nonexistent/x.yaml").status().message(),
            "/nonexistent/x.yaml: cannot be opened (No such file or directory)");
  EXPECT_FALSE(WriteTextFileAtomically("/nonexistent/dir/x.yaml", "x").ok());
  // A directory used to read as an empty file, a FIFO to block forever.
  const std::string dir = std::getenv("TEST_TMPDIR");
  EXPECT_EQ(ReadTextFile(dir).status().message(), dir + ": is a directory (expected a file)");
  const std::string fifo = dir + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_EQ(ReadTextFile(fifo).status().message(),
            fifo + ": is not a regular file (expected a file)");
}

}  // namespace
}  // namespace weft
