#include "base/text_file.h"

#include <cstdlib>

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
}

}  // namespace
}  // namespace weft
