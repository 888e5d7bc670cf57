#include "trainer/token_file.h"

#include <ATen/ATen.h>

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "base/json.h"
#include "base/text_file.h"
#include "gtest/gtest.h"

namespace weft {
namespace {

std::string TmpPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/" + name;
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

std::vector<int64_t> ToVector(const at::Tensor& t) {
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
}

std::string OpenError(const std::string& prefix) {
  auto f = TokenFile::Open(prefix);
  return f.ok() ? "OK" : std::string(f.status().message());
}

void PutLe(std::string* s, size_t at, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) (*s)[at + i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

TEST(TokenFile, WritesAndReadsBack) {
  const std::string prefix = TmpPath("roundtrip");
  std::vector<int64_t> tokens = {5, 0, 255, 17, 3, 3, 9};
  ASSERT_TRUE(WriteTokenFile(prefix, tokens, {0, 3, 4, 7}, 256).ok());
  EXPECT_EQ(ReadTextFile(prefix + ".bin").value_or("").size(), 14u);
  EXPECT_EQ(ReadTextFile(prefix + ".idx").value_or("").size(), 40u + 8 * 4);
  EXPECT_EQ(ReadTextFile(prefix + ".idx").value_or("").substr(0, 8), "WEFTTOK1");

  auto file = TokenFile::Open(prefix);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->num_tokens(), 7);
  EXPECT_EQ((*file)->num_documents(), 3);
  EXPECT_EQ((*file)->vocab_size(), 256);
  EXPECT_EQ((*file)->bytes_per_token(), 2);
  EXPECT_EQ((*file)->document_start(0), 0);
  EXPECT_EQ((*file)->document_start(1), 3);
  EXPECT_EQ((*file)->document_start(3), 7);
  at::Tensor all = (*file)->Tokens(0, 7);
  EXPECT_EQ(all.scalar_type(), at::kLong);
  EXPECT_EQ(ToVector(all), tokens);
  EXPECT_EQ(ToVector((*file)->Tokens(2, 5)), (std::vector<int64_t>{255, 17, 3}));
  EXPECT_EQ((*file)->Tokens(4, 4).numel(), 0);
  // No temporaries are left behind.
  EXPECT_TRUE(ReadTextFile(prefix + ".bin.tmp." + std::to_string(::getpid())).value_or("").empty());
}

// Instruction data's loss mask: written beside the tokens, read back; a
// later write without one removes it; a mask that does not fit the tokens
// is refused at Open, a byte other than 0 or 1 when read.
TEST(TokenFile, LossMask) {
  const std::string prefix = TmpPath("masked");
  const std::vector<int64_t> tokens = {5, 0, 255, 17};
  const std::vector<uint8_t> mask = {0, 0, 1, 1};
  ASSERT_TRUE(WriteTokenFile(prefix, tokens, {0, 4}, 256, &mask).ok());
  EXPECT_EQ(ReadTextFile(prefix + ".mask").value_or("").size(), 16u + 4);
  auto file = TokenFile::Open(prefix);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_TRUE((*file)->has_loss_mask());
  std::vector<uint8_t> got(3);
  (*file)->ReadLossMask(1, 4, got.data());
  EXPECT_EQ(got, (std::vector<uint8_t>{0, 1, 1}));

  const std::vector<uint8_t> short_mask = {1};
  EXPECT_EQ(WriteTokenFile(prefix, tokens, {0, 4}, 256, &short_mask).message(),
            "token file " + prefix + ": the loss mask has 1 entries (expected one per token, 4)");
  std::string bytes = ReadTextFile(prefix + ".mask").value_or("");
  PutLe(&bytes, 8, 5, 8);
  WriteAll(prefix + ".mask", bytes);
  EXPECT_EQ(OpenError(prefix), "loss mask " + prefix +
                                   ".mask covers 5 tokens (expected num_tokens 4 of " + prefix +
                                   ".idx)");
  PutLe(&bytes, 8, 4, 8);
  bytes[16 + 2] = 2;
  WriteAll(prefix + ".mask", bytes);
  auto bad = TokenFile::Open(prefix);
  ASSERT_TRUE(bad.ok()) << bad.status();
  try {
    (*bad)->ReadLossMask(0, 4, got.data());
    ADD_FAILURE() << "a mask byte of 2 was read";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("loss mask byte 2 at offset 2 of " + prefix +
                                         ".mask (expected 0 or 1)"),
              std::string::npos)
        << e.what();
  }

  ASSERT_TRUE(WriteTokenFile(prefix, tokens, {0, 4}, 256).ok());
  EXPECT_FALSE(std::ifstream(prefix + ".mask").good()) << "a stale mask would still apply";
  auto plain = TokenFile::Open(prefix);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE((*plain)->has_loss_mask());
  got.assign(4, 0);
  (*plain)->ReadLossMask(0, 4, got.data());
  EXPECT_EQ(got, (std::vector<uint8_t>{1, 1, 1, 1}));
}

TEST(TokenFile, UsesFourBytesAboveUint16) {
  const std::string prefix = TmpPath("wide");
  std::vector<int64_t> tokens = {70000, 1, 65536, 99999};
  ASSERT_TRUE(WriteTokenFile(prefix, tokens, {0, 4}, 100000).ok());
  auto file = TokenFile::Open(prefix);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->bytes_per_token(), 4);
  EXPECT_EQ(ToVector((*file)->Tokens(0, 4)), tokens);
  // 65536 still fits uint16.
  ASSERT_TRUE(WriteTokenFile(prefix, {65535}, {0, 1}, 65536).ok());
  EXPECT_EQ((*TokenFile::Open(prefix))->bytes_per_token(), 2);
}

TEST(TokenFile, EmptyFileIsValid) {
  const std::string prefix = TmpPath("empty");
  ASSERT_TRUE(WriteTokenFile(prefix, {}, {0}, 256).ok());
  auto file = TokenFile::Open(prefix);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->num_tokens(), 0);
  EXPECT_EQ((*file)->num_documents(), 0);
}

TEST(TokenFile, WriteRejectsBadInput) {
  const std::string p = TmpPath("bad_write");
  auto Err = [&](std::vector<int64_t> tokens, std::vector<int64_t> starts, int64_t vocab) {
    absl::Status s = WriteTokenFile(p, tokens, starts, vocab);
    return s.ok() ? std::string("OK") : std::string(s.message());
  };
  EXPECT_EQ(Err({1}, {0, 1}, 0), "token file " + p + ": vocab_size 0 (expected 1 to 4294967296)");
  EXPECT_EQ(Err({1}, {}, 10),
            "token file " + p + ": document_starts is empty (expected num_documents + 1 entries)");
  EXPECT_EQ(Err({1}, {1, 1}, 10), "token file " + p + ": document_starts[0] is 1 (expected 0)");
  EXPECT_EQ(Err({1, 2}, {0, 1, 1, 2}, 10),
            "token file " + p + ": document_starts[2] is 1 (expected > document_starts[1] = 1)");
  EXPECT_EQ(Err({1, 2}, {0, 1}, 10),
            "token file " + p + ": document_starts[1] is 1 (expected the number of tokens, 2)");
  EXPECT_EQ(
      Err({1, 10}, {0, 2}, 10),
      "token file " + p + ": token 10 at offset 1 is out of range (expected 0 <= token < 10)");
  EXPECT_EQ(
      Err({-1}, {0, 1}, 10),
      "token file " + p + ": token -1 at offset 0 is out of range (expected 0 <= token < 10)");
}

class TokenFileOpen : public ::testing::Test {
 protected:
  void SetUp() override {
    prefix_ = TmpPath("corrupt");
    ASSERT_TRUE(WriteTokenFile(prefix_, {1, 2, 3, 4, 5}, {0, 2, 5}, 10).ok());
    idx_ = ReadTextFile(prefix_ + ".idx").value_or("");
    bin_ = ReadTextFile(prefix_ + ".bin").value_or("");
  }
  std::string Idx() const { return prefix_ + ".idx"; }
  std::string Bin() const { return prefix_ + ".bin"; }
  std::string prefix_, idx_, bin_;
};

TEST_F(TokenFileOpen, MissingFiles) {
  const std::string nothing = TmpPath("nothing");
  EXPECT_EQ(OpenError(nothing),
            "token index " + nothing +
                ".idx: No such file or directory (expected a file written by WriteTokenFile or "
                "tools/tokenize_data.py)");
  std::remove(Bin().c_str());
  EXPECT_EQ(OpenError(prefix_),
            "token data " + Bin() +
                ": No such file or directory (expected a file written by WriteTokenFile or "
                "tools/tokenize_data.py)");
}

TEST_F(TokenFileOpen, BadHeader) {
  WriteAll(Idx(), idx_.substr(0, 12));
  EXPECT_EQ(OpenError(prefix_),
            "token index " + Idx() + " is 12 bytes, too short for the header (expected >= 40)");

  std::string s = idx_;
  s.replace(0, 8, std::string("WEFTTOK\0", 8));
  WriteAll(Idx(), s);
  EXPECT_EQ(OpenError(prefix_),
            "token index " + Idx() + " has magic \"WEFTTOK\\x00\" (expected \"WEFTTOK1\")");

  s = idx_;
  PutLe(&s, 8, 2, 4);
  WriteAll(Idx(), s);
  EXPECT_EQ(OpenError(prefix_), "token index " + Idx() + " has version 2 (expected 1)");

  s = idx_;
  PutLe(&s, 12, 3, 4);
  WriteAll(Idx(), s);
  EXPECT_EQ(OpenError(prefix_),
            "token index " + Idx() + " has 3 bytes per token (expected 2 or 4)");

  s = idx_;
  PutLe(&s, 16, 70000, 8);
  WriteAll(Idx(), s);
  EXPECT_EQ(OpenError(prefix_), "token index " + Idx() +
                                    " has vocab_size 70000 (expected 1 to 65536 for 2 bytes per "
                                    "token)");
}

TEST_F(TokenFileOpen, BadSizes) {
  WriteAll(Idx(), idx_ + std::string(8, '\0'));
  EXPECT_EQ(OpenError(prefix_),
            "token index " + Idx() + " is 72 bytes (expected 64 for num_documents 2)");

  std::string s = idx_;
  PutLe(&s, 32, ~uint64_t{0} / 4, 8);  // num_documents so large the size overflows
  WriteAll(Idx(), s);
  EXPECT_EQ(OpenError(prefix_), "token index " + Idx() +
                                    " is 64 bytes (expected more than 18446744073709551615 for "
                                    "num_documents 4611686018427387903)");

  WriteAll(Idx(), idx_);
  WriteAll(Bin(), bin_ + "x");
  EXPECT_EQ(OpenError(prefix_),
            "token data " + Bin() + " is 11 bytes (expected 10 for num_tokens 5 of 2 bytes)");

  s = idx_;
  PutLe(&s, 24, 6, 8);  // num_tokens 6, .bin holds 5
  WriteAll(Idx(), s);
  WriteAll(Bin(), bin_);
  EXPECT_EQ(OpenError(prefix_),
            "token data " + Bin() + " is 10 bytes (expected 12 for num_tokens 6 of 2 bytes)");
}

TEST_F(TokenFileOpen, BadDocumentStarts) {
  std::string s = idx_;
  PutLe(&s, 40, 1, 8);
  WriteAll(Idx(), s);
  EXPECT_EQ(OpenError(prefix_), "token index " + Idx() + " has document_starts[0] 1 (expected 0)");

  s = idx_;
  PutLe(&s, 48, 0, 8);
  WriteAll(Idx(), s);
  EXPECT_EQ(
      OpenError(prefix_),
      "token index " + Idx() + " has document_starts[1] 0 (expected > document_starts[0] = 0)");

  s = idx_;
  PutLe(&s, 48, 5, 8);
  WriteAll(Idx(), s);
  EXPECT_EQ(
      OpenError(prefix_),
      "token index " + Idx() + " has document_starts[2] 5 (expected > document_starts[1] = 5)");

  s = idx_;
  PutLe(&s, 56, 4, 8);
  WriteAll(Idx(), s);
  EXPECT_EQ(OpenError(prefix_),
            "token index " + Idx() + " has document_starts[2] 4 (expected num_tokens 5)");
}

TEST_F(TokenFileOpen, TokensOutOfVocabAreCheckedLazily) {
  std::string b = bin_;
  PutLe(&b, 6, 12, 2);  // token 3 := 12 >= vocab 10
  WriteAll(Bin(), b);
  auto file = TokenFile::Open(prefix_);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(ToVector((*file)->Tokens(0, 3)), (std::vector<int64_t>{1, 2, 3}));
  try {
    (*file)->Tokens(2, 5);
    FAIL() << "expected an out-of-vocab error";
  } catch (const c10::Error& e) {
    EXPECT_EQ(e.msg(), "token 12 at offset 3 of " + prefix_ +
                           ".bin is out of range (expected < vocab_size 10)");
  }
  EXPECT_THROW((*file)->Tokens(3, 6), c10::Error);
  EXPECT_THROW((*file)->document_start(3), c10::Error);
}

TEST(ByteLevel, TokensAreBytes) {
  EXPECT_EQ(ByteLevelTokens("a\xff\n"), (std::vector<int64_t>{97, 255, 10}));
  EXPECT_TRUE(ByteLevelTokens("").empty());
}

TEST(ByteLevel, BlankLinesSeparateDocuments) {
  EXPECT_EQ(BlankLineDocumentStarts(""), (std::vector<int64_t>{0}));
  EXPECT_EQ(BlankLineDocumentStarts("\n \n\t\r\n"), (std::vector<int64_t>{6}));
  EXPECT_EQ(BlankLineDocumentStarts("one"), (std::vector<int64_t>{0, 3}));
  // "a\nb\n" | "\n \n" belongs to the first block; "c" starts at 7.
  EXPECT_EQ(BlankLineDocumentStarts("a\nb\n\n \nc\n"), (std::vector<int64_t>{0, 7, 9}));
  EXPECT_EQ(BlankLineDocumentStarts("\n\nx\n\ny"), (std::vector<int64_t>{2, 5, 6}));
}

TEST(ByteLevel, WritesATextFile) {
  const std::string text_path = TmpPath("book.txt");
  const std::string text = "\n\nFirst para,\nline two.\n\n\nSecond.\n";
  WriteAll(text_path, text);
  const std::string prefix = TmpPath("book");
  ASSERT_TRUE(WriteByteLevelTokenFile(text_path, prefix).ok());
  auto file = TokenFile::Open(prefix);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->vocab_size(), 256);
  EXPECT_EQ((*file)->num_documents(), 2);
  EXPECT_EQ((*file)->document_start(1), 24);
  EXPECT_EQ(ToVector((*file)->Tokens(0, (*file)->num_tokens())), ByteLevelTokens(text.substr(2)));

  const std::string missing = TmpPath("no_such.txt");
  absl::Status s = WriteByteLevelTokenFile(missing, prefix);
  EXPECT_EQ(s.message(),
            "text file " + missing + ": No such file or directory (expected a readable text file)");
}

// Fixtures written by tools/tokenize_data.py (tests/data/tokens/README.md):
// TokenFile reads exactly the ids the script wrote to the .json beside them.
struct Expected {
  int64_t vocab_size = 0;
  std::vector<int64_t> starts, tokens;
};

Expected ReadExpected(const std::string& path) {
  auto v = ParseJson(ReadTextFile(path).value_or(""));
  EXPECT_TRUE(v.ok()) << path << ": " << v.status();
  Expected e;
  if (!v.ok()) return e;
  e.vocab_size = static_cast<int64_t>(*v->Find("vocab_size")->AsUint64());
  for (const auto& x : v->Find("document_starts")->items) e.starts.push_back(*x.AsUint64());
  for (const auto& x : v->Find("tokens")->items) e.tokens.push_back(*x.AsUint64());
  return e;
}

void ExpectFixture(const std::string& name) {
  SCOPED_TRACE(name);
  const std::string prefix = "tests/data/tokens/" + name;
  Expected e = ReadExpected(prefix + ".json");
  ASSERT_FALSE(e.tokens.empty());
  auto file = TokenFile::Open(prefix);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->vocab_size(), e.vocab_size);
  EXPECT_EQ((*file)->num_documents() + 1, static_cast<int64_t>(e.starts.size()));
  for (size_t d = 0; d < e.starts.size(); ++d) {
    EXPECT_EQ((*file)->document_start(static_cast<int64_t>(d)), e.starts[d]) << "doc " << d;
  }
  EXPECT_EQ(ToVector((*file)->Tokens(0, (*file)->num_tokens())), e.tokens);
}

TEST(Fixtures, ByteLevelFromThePythonScript) {
  ExpectFixture("byte");
  // The C++ writer produces the same bytes as the script for the same text.
  const std::string prefix = TmpPath("sample_cc");
  ASSERT_TRUE(WriteByteLevelTokenFile("tests/data/tokens/sample.txt", prefix).ok());
  EXPECT_EQ(ReadTextFile(prefix + ".bin").value_or(""),
            ReadTextFile("tests/data/tokens/byte.bin").value_or(""));
  EXPECT_EQ(ReadTextFile(prefix + ".idx").value_or(""),
            ReadTextFile("tests/data/tokens/byte.idx").value_or(""));
}

TEST(Fixtures, HuggingFaceTokenizerFromThePythonScript) {
  ExpectFixture("bpe");
  ExpectFixture("jsonl");
  // Each document ends in the tokenizer's EOS (</s>, id 1).
  auto file = TokenFile::Open("tests/data/tokens/bpe");
  ASSERT_TRUE(file.ok());
  for (int64_t d = 1; d <= (*file)->num_documents(); ++d) {
    const int64_t end = (*file)->document_start(d);
    EXPECT_EQ((*file)->Tokens(end - 1, end).item<int64_t>(), 1) << "doc " << d - 1;
  }
}

}  // namespace
}  // namespace weft
