#include "trainer/token_file.h"

#include <ATen/ATen.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "base/atomic_file.h"
#include "base/status.h"
#include "base/text_file.h"

namespace weft {
namespace {

uint64_t LoadLe(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void StoreLe(uint64_t v, int bytes, std::string* out) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

constexpr uint64_t kMaxInt64 = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());

// "<a> * <b> + <c>" as text when it overflows uint64, else the number.
std::string ProductText(uint64_t a, uint64_t b, uint64_t c, uint64_t* value) {
  if (b != 0 && a > (std::numeric_limits<uint64_t>::max() - c) / b) {
    *value = 0;
    return absl::StrCat("more than ", std::numeric_limits<uint64_t>::max());
  }
  *value = a * b + c;
  return absl::StrCat(*value);
}

absl::StatusOr<std::shared_ptr<MappedFile>> OpenPart(const std::string& path,
                                                     absl::string_view what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    int err = errno;
    return absl::NotFoundError(absl::StrCat(what, " ", path, ": ", std::strerror(err),
                                            " (expected a file written by WriteTokenFile or "
                                            "tools/tokenize_data.py)"));
  }
  return MappedFile::Open(path);
}

}  // namespace

absl::StatusOr<std::shared_ptr<TokenFile>> TokenFile::Open(const std::string& prefix) {
  const std::string idx_path = prefix + ".idx";
  const std::string bin_path = prefix + ".bin";
  ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> index, OpenPart(idx_path, "token index"));
  ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> data, OpenPart(bin_path, "token data"));

  const uint8_t* p = index->data();
  const uint64_t idx_size = index->size();
  const std::string where = absl::StrCat("token index ", idx_path);
  if (idx_size < static_cast<uint64_t>(kTokenIndexHeaderBytes)) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, " is ", idx_size,
        " bytes, too short for the header (expected >= ", kTokenIndexHeaderBytes, ")"));
  }
  if (std::memcmp(p, kTokenFileMagic, 8) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " has magic \"",
                     absl::CHexEscape(absl::string_view(reinterpret_cast<const char*>(p), 8)),
                     "\" (expected \"", kTokenFileMagic, "\")"));
  }
  const uint64_t version = LoadLe(p + 8, 4);
  if (version != kTokenFileVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " has version ", version, " (expected ", kTokenFileVersion, ")"));
  }
  const uint64_t bytes_per_token = LoadLe(p + 12, 4);
  if (bytes_per_token != 2 && bytes_per_token != 4) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " has ", bytes_per_token, " bytes per token (expected 2 or 4)"));
  }
  const uint64_t vocab_size = LoadLe(p + 16, 8);
  const uint64_t max_vocab = uint64_t{1} << (8 * bytes_per_token);
  if (vocab_size == 0 || vocab_size > max_vocab) {
    return absl::InvalidArgumentError(absl::StrCat(where, " has vocab_size ", vocab_size,
                                                   " (expected 1 to ", max_vocab, " for ",
                                                   bytes_per_token, " bytes per token)"));
  }
  const uint64_t num_tokens = LoadLe(p + 24, 8);
  const uint64_t num_documents = LoadLe(p + 32, 8);

  uint64_t expected_idx = 0;
  std::string expected_idx_text =
      num_documents == std::numeric_limits<uint64_t>::max()
          ? absl::StrCat("more than ", std::numeric_limits<uint64_t>::max())
          : ProductText(num_documents + 1, 8, kTokenIndexHeaderBytes, &expected_idx);
  if (expected_idx == 0 || idx_size != expected_idx) {
    return absl::InvalidArgumentError(absl::StrCat(where, " is ", idx_size, " bytes (expected ",
                                                   expected_idx_text, " for num_documents ",
                                                   num_documents, ")"));
  }
  uint64_t expected_bin = 0;
  std::string expected_bin_text = ProductText(num_tokens, bytes_per_token, 0, &expected_bin);
  if (data->size() != expected_bin || num_tokens > kMaxInt64 ||
      (num_tokens > 0 && expected_bin == 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token data ", bin_path, " is ", data->size(), " bytes (expected ", expected_bin_text,
        " for num_tokens ", num_tokens, " of ", bytes_per_token, " bytes)"));
  }
  const uint8_t* starts = p + kTokenIndexHeaderBytes;
  const uint64_t first = LoadLe(starts, 8);
  if (first != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " has document_starts[0] ", first, " (expected 0)"));
  }
  uint64_t prev = 0;
  for (uint64_t i = 1; i <= num_documents; ++i) {
    const uint64_t s = LoadLe(starts + 8 * i, 8);
    if (s <= prev) {
      return absl::InvalidArgumentError(absl::StrCat(where, " has document_starts[", i, "] ", s,
                                                     " (expected > document_starts[", i - 1,
                                                     "] = ", prev, ")"));
    }
    prev = s;
  }
  if (prev != num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(where, " has document_starts[", num_documents,
                                                   "] ", prev, " (expected num_tokens ", num_tokens,
                                                   ")"));
  }

  // The optional loss mask: its header and size checked here, its bytes when read.
  std::shared_ptr<MappedFile> mask;
  const std::string mask_path = prefix + ".mask";
  struct stat mask_stat {};
  if (::stat(mask_path.c_str(), &mask_stat) == 0) {
    ASSIGN_OR_RETURN(mask, MappedFile::Open(mask_path));
    const std::string mwhere = absl::StrCat("loss mask ", mask_path);
    if (mask->size() < static_cast<uint64_t>(kLossMaskHeaderBytes)) {
      return absl::InvalidArgumentError(absl::StrCat(
          mwhere, " is ", mask->size(),
          " bytes, too short for the header (expected >= ", kLossMaskHeaderBytes, ")"));
    }
    if (std::memcmp(mask->data(), kLossMaskMagic, 8) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          mwhere, " has magic \"",
          absl::CHexEscape(absl::string_view(reinterpret_cast<const char*>(mask->data()), 8)),
          "\" (expected \"", kLossMaskMagic, "\")"));
    }
    const uint64_t mask_tokens = LoadLe(mask->data() + 8, 8);
    if (mask_tokens != num_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(mwhere, " covers ", mask_tokens,
                                                     " tokens (expected num_tokens ", num_tokens,
                                                     " of ", idx_path, ")"));
    }
    if (mask->size() != kLossMaskHeaderBytes + num_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(mwhere, " is ", mask->size(),
                                                     " bytes (expected ", kLossMaskHeaderBytes,
                                                     " + num_tokens ", num_tokens, ")"));
    }
  }

  std::shared_ptr<TokenFile> file(new TokenFile());
  file->prefix_ = prefix;
  file->mask_ = std::move(mask);
  file->index_ = std::move(index);
  file->data_ = std::move(data);
  file->num_tokens_ = static_cast<int64_t>(num_tokens);
  file->num_documents_ = static_cast<int64_t>(num_documents);
  file->vocab_size_ = static_cast<int64_t>(vocab_size);
  file->bytes_per_token_ = static_cast<int>(bytes_per_token);
  return file;
}

int64_t TokenFile::document_start(int64_t doc) const {
  TORCH_CHECK(doc >= 0 && doc <= num_documents_, "document ", doc, " is out of range for ", prefix_,
              " (expected 0 <= doc <= num_documents ", num_documents_, ")");
  return static_cast<int64_t>(LoadLe(index_->data() + kTokenIndexHeaderBytes + 8 * doc, 8));
}

void TokenFile::ReadTokens(int64_t begin, int64_t end, int64_t* out) const {
  TORCH_CHECK(begin >= 0 && begin <= end && end <= num_tokens_, "token range [", begin, ", ", end,
              ") is out of range for ", prefix_, " (expected 0 <= begin <= end <= num_tokens ",
              num_tokens_, ")");
  const uint8_t* p = data_->data() + begin * bytes_per_token_;
  const int64_t n = end - begin;
  // Out-of-range ids are possible unless the width is exactly the vocab.
  const bool check = static_cast<uint64_t>(vocab_size_) < (uint64_t{1} << (8 * bytes_per_token_));
  if (bytes_per_token_ == 2) {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<int64_t>(p[2 * i] | (p[2 * i + 1] << 8));
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<int64_t>(LoadLe(p + 4 * i, 4));
  }
  if (check) {
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK(out[i] < vocab_size_, "token ", out[i], " at offset ", begin + i, " of ", prefix_,
                  ".bin is out of range (expected < vocab_size ", vocab_size_, ")");
    }
  }
}

void TokenFile::ReadLossMask(int64_t begin, int64_t end, uint8_t* out) const {
  TORCH_CHECK(begin >= 0 && begin <= end && end <= num_tokens_, "token range [", begin, ", ", end,
              ") is out of range for ", prefix_, " (expected 0 <= begin <= end <= num_tokens ",
              num_tokens_, ")");
  if (mask_ == nullptr) {
    std::fill(out, out + (end - begin), uint8_t{1});
    return;
  }
  const uint8_t* p = mask_->data() + kLossMaskHeaderBytes + begin;
  for (int64_t i = 0; i < end - begin; ++i) {
    TORCH_CHECK(p[i] <= 1, "loss mask byte ", static_cast<int>(p[i]), " at offset ", begin + i,
                " of ", prefix_, ".mask (expected 0 or 1)");
    out[i] = p[i];
  }
}

at::Tensor TokenFile::Tokens(int64_t begin, int64_t end) const {
  TORCH_CHECK(begin >= 0 && begin <= end && end <= num_tokens_, "token range [", begin, ", ", end,
              ") is out of range for ", prefix_, " (expected 0 <= begin <= end <= num_tokens ",
              num_tokens_, ")");
  at::Tensor out = at::empty({end - begin}, at::kLong);
  ReadTokens(begin, end, out.data_ptr<int64_t>());
  return out;
}

absl::Status WriteTokenFile(const std::string& prefix, const std::vector<int64_t>& tokens,
                            const std::vector<int64_t>& document_starts, int64_t vocab_size,
                            const std::vector<uint8_t>* loss_mask) {
  const std::string where = absl::StrCat("token file ", prefix);
  if (vocab_size <= 0 || vocab_size > (int64_t{1} << 32)) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": vocab_size ", vocab_size,
                                                   " (expected 1 to ", int64_t{1} << 32, ")"));
  }
  const int64_t num_tokens = static_cast<int64_t>(tokens.size());
  if (document_starts.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": document_starts is empty (expected num_documents + 1 entries)"));
  }
  if (document_starts[0] != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": document_starts[0] is ", document_starts[0], " (expected 0)"));
  }
  for (size_t i = 1; i < document_starts.size(); ++i) {
    if (document_starts[i] <= document_starts[i - 1]) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": document_starts[", i, "] is ", document_starts[i],
          " (expected > document_starts[", i - 1, "] = ", document_starts[i - 1], ")"));
    }
  }
  if (document_starts.back() != num_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": document_starts[", document_starts.size() - 1, "] is ",
                     document_starts.back(), " (expected the number of tokens, ", num_tokens, ")"));
  }
  for (int64_t i = 0; i < num_tokens; ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": token ", tokens[i], " at offset ", i,
                                                     " is out of range (expected 0 <= token < ",
                                                     vocab_size, ")"));
    }
  }
  if (loss_mask != nullptr) {
    if (static_cast<int64_t>(loss_mask->size()) != num_tokens) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": the loss mask has ",
                                                     loss_mask->size(),
                                                     " entries (expected one per "
                                                     "token, ",
                                                     num_tokens, ")"));
    }
    for (size_t i = 0; i < loss_mask->size(); ++i) {
      if ((*loss_mask)[i] > 1) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": loss mask entry ", i, " is ",
                                                       static_cast<int>((*loss_mask)[i]),
                                                       " (expected 0 or 1)"));
      }
    }
  } else if (::unlink((prefix + ".mask").c_str()) != 0 && errno != ENOENT) {
    const int err = errno;
    return absl::InternalError(
        absl::StrCat(where, ": removing the stale ", prefix, ".mask failed: ", std::strerror(err)));
  }
  const int bytes = vocab_size <= 65536 ? 2 : 4;

  ASSIGN_OR_RETURN(AtomicFile bin, AtomicFile::Create(prefix + ".bin"));
  constexpr int64_t kChunk = 1 << 20;
  std::string buf;
  for (int64_t begin = 0; begin < num_tokens; begin += kChunk) {
    const int64_t end = std::min(num_tokens, begin + kChunk);
    buf.clear();
    buf.reserve(static_cast<size_t>((end - begin) * bytes));
    for (int64_t i = begin; i < end; ++i) StoreLe(static_cast<uint64_t>(tokens[i]), bytes, &buf);
    RETURN_IF_ERROR(bin.Write(buf.data(), buf.size()));
  }
  RETURN_IF_ERROR(bin.Commit());

  if (loss_mask != nullptr) {
    std::string header(kLossMaskMagic, 8);
    StoreLe(static_cast<uint64_t>(num_tokens), 8, &header);
    ASSIGN_OR_RETURN(AtomicFile mask, AtomicFile::Create(prefix + ".mask"));
    RETURN_IF_ERROR(mask.Write(header.data(), header.size()));
    RETURN_IF_ERROR(
        mask.Write(reinterpret_cast<const char*>(loss_mask->data()), loss_mask->size()));
    RETURN_IF_ERROR(mask.Commit());
  }

  std::string idx(kTokenFileMagic, 8);
  StoreLe(kTokenFileVersion, 4, &idx);
  StoreLe(static_cast<uint64_t>(bytes), 4, &idx);
  StoreLe(static_cast<uint64_t>(vocab_size), 8, &idx);
  StoreLe(static_cast<uint64_t>(num_tokens), 8, &idx);
  StoreLe(document_starts.size() - 1, 8, &idx);
  for (int64_t s : document_starts) StoreLe(static_cast<uint64_t>(s), 8, &idx);
  ASSIGN_OR_RETURN(AtomicFile out, AtomicFile::Create(prefix + ".idx"));
  RETURN_IF_ERROR(out.Write(idx.data(), idx.size()));
  return out.Commit();
}

std::vector<int64_t> ByteLevelTokens(absl::string_view text) {
  std::vector<int64_t> out(text.size());
  for (size_t i = 0; i < text.size(); ++i) out[i] = static_cast<unsigned char>(text[i]);
  return out;
}

std::vector<int64_t> BlankLineDocumentStarts(absl::string_view text) {
  std::vector<int64_t> starts;
  bool in_block = false;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    size_t next = eol == absl::string_view::npos ? text.size() : eol + 1;
    absl::string_view line = text.substr(pos, next - pos);
    bool blank = line.find_first_not_of(" \t\r\n") == absl::string_view::npos;
    if (!blank && !in_block) starts.push_back(static_cast<int64_t>(pos));
    in_block = !blank;
    pos = next;
  }
  starts.push_back(static_cast<int64_t>(text.size()));
  return starts;
}

absl::Status WriteByteLevelTokenFile(const std::string& text_path, const std::string& prefix) {
  int err = 0;
  auto read = ReadTextFile(text_path, &err);
  if (!read.ok() && err != 0) {
    return absl::NotFoundError(absl::StrCat("text file ", text_path, ": ", std::strerror(err),
                                            " (expected a readable text file)"));
  }
  if (absl::IsInvalidArgument(read.status())) {  // a directory, a FIFO
    return absl::InvalidArgumentError(absl::StrCat("text file ", read.status().message()));
  }
  if (!read.ok()) {
    return absl::UnavailableError(
        absl::StrCat("text file ", text_path, ": read failed (expected a readable text file)"));
  }
  const std::string text = *std::move(read);
  std::vector<int64_t> starts = BlankLineDocumentStarts(text);
  const int64_t origin = starts.front();
  for (int64_t& s : starts) s -= origin;
  return WriteTokenFile(prefix, ByteLevelTokens(absl::string_view(text).substr(origin)), starts,
                        256);
}

}  // namespace weft
