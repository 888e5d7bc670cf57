// TokenFile: a memory-mapped, tokenized training corpus with document
// boundaries. Written by WriteTokenFile (C++) or tools/tokenize_data.py.
//
// Two files share a prefix:
//   <prefix>.bin  the flat tokens, little-endian, uint16 when vocab_size <=
//                 65536, else uint32 (a reader accepts 4 bytes for any vocab);
//   <prefix>.idx  little-endian: 8-byte magic "WEFTTOK1", uint32 version (1),
//                 uint32 bytes per token (2 or 4), uint64 vocab_size, uint64
//                 num_tokens, uint64 num_documents, then uint64 document
//                 starts [num_documents + 1]: token offsets, the first 0,
//                 strictly increasing, the last num_tokens.
//   <prefix>.mask (optional) the loss mask of instruction data: 8-byte magic
//                 "WEFTMSK1", uint64 num_tokens, then one byte per token, 1
//                 when the token is a label counted in the loss (a
//                 completion's or an assistant turn's), 0 when not (a
//                 prompt's). Without it every token counts.
//
// Open validates both files completely (header, sizes, every document start)
// before anything reads a token. Token values are checked lazily: Tokens()
// and ReadTokens() throw (TORCH_CHECK) on a token >= vocab_size naming the
// file, the offset and the value. Scanning every token at Open would read
// the whole corpus (tens of GB) before the first step; the check is skipped
// when the width cannot hold an out-of-range id (uint16 with vocab 65536).
//
//   ASSIGN_OR_RETURN(std::shared_ptr<TokenFile> file, TokenFile::Open("data/train"));
//   at::Tensor doc0 = file->Tokens(file->document_start(0), file->document_start(1));
//
//   RETURN_IF_ERROR(WriteByteLevelTokenFile("book.txt", "data/book"));
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "base/mapped_file.h"

namespace weft {

/// The index's magic bytes and format version.
inline constexpr char kTokenFileMagic[] = "WEFTTOK1";
inline constexpr uint32_t kTokenFileVersion = 1;
/// Size of the fixed .idx header before the document starts.
inline constexpr int64_t kTokenIndexHeaderBytes = 40;
/// The loss mask's magic bytes and header size.
inline constexpr char kLossMaskMagic[] = "WEFTMSK1";
inline constexpr int64_t kLossMaskHeaderBytes = 16;

class TokenFile {
 public:
  /// Maps `<prefix>.idx` and `<prefix>.bin` and validates them; errors are
  /// one line naming the file, the value found and the value expected.
  static absl::StatusOr<std::shared_ptr<TokenFile>> Open(const std::string& prefix);

  const std::string& prefix() const { return prefix_; }
  int64_t num_tokens() const { return num_tokens_; }
  int64_t num_documents() const { return num_documents_; }
  int64_t vocab_size() const { return vocab_size_; }
  int bytes_per_token() const { return bytes_per_token_; }
  /// Token offset where document `doc` starts, for 0 <= doc <= num_documents
  /// (document_start(num_documents()) == num_tokens()).
  int64_t document_start(int64_t doc) const;

  /// Tokens [begin, end) as an int64 CPU tensor (a copy).
  at::Tensor Tokens(int64_t begin, int64_t end) const;
  /// Tokens [begin, end) into out[0, end - begin), with the same checks.
  void ReadTokens(int64_t begin, int64_t end, int64_t* out) const;

  /// Whether <prefix>.mask exists: some tokens are not counted in the loss.
  bool has_loss_mask() const { return mask_ != nullptr; }
  /// The loss mask of tokens [begin, end) into out (1: counted), all ones
  /// without a mask file; throws (TORCH_CHECK) on a byte other than 0 or 1.
  void ReadLossMask(int64_t begin, int64_t end, uint8_t* out) const;

 private:
  TokenFile() = default;

  std::string prefix_;
  std::shared_ptr<MappedFile> index_;
  std::shared_ptr<MappedFile> data_;
  std::shared_ptr<MappedFile> mask_;  // or null
  int64_t num_tokens_ = 0;
  int64_t num_documents_ = 0;
  int64_t vocab_size_ = 0;
  int bytes_per_token_ = 2;
};

/// Writes `<prefix>.bin` and `<prefix>.idx` atomically (each to a temporary,
/// fsynced and renamed; .bin first, so a crash in between leaves an index
/// that Open rejects for its .bin size rather than a silently torn pair).
/// `document_starts` has num_documents + 1 entries: 0, strictly increasing,
/// ending at tokens.size(). Tokens must lie in [0, vocab_size). With a
/// `loss_mask` (one 0 or 1 per token) <prefix>.mask is written too (after
/// .bin, before .idx); without one a stale <prefix>.mask is removed first.
absl::Status WriteTokenFile(const std::string& prefix, const std::vector<int64_t>& tokens,
                            const std::vector<int64_t>& document_starts, int64_t vocab_size,
                            const std::vector<uint8_t>* loss_mask = nullptr);

/// One id per byte (0..255): the byte-level "tokenizer" of vocab size 256.
std::vector<int64_t> ByteLevelTokens(absl::string_view text);

/// Splits `text` into documents: blocks of non-blank lines separated by one
/// or more blank lines (a blank line holds only spaces, tabs or '\r').
/// Document i is the text from the first byte of block i up to the first
/// byte of block i + 1 (the blank lines after a block belong to it; the last
/// document runs to the end), so the documents concatenated are `text` from
/// its first non-blank line on. Returns the byte offsets where documents
/// start, plus text.size() at the end (one entry, {size}, when there is no
/// block), relative to the start of `text`; leading blank lines are not part
/// of any document, so the first entry is where the first block starts.
std::vector<int64_t> BlankLineDocumentStarts(absl::string_view text);

/// Reads the text file `text_path` and writes it as a byte-level token file
/// (vocab_size 256) with one document per blank-line separated block (see
/// BlankLineDocumentStarts). tools/tokenize_data.py --byte-level writes the
/// same bytes for a .txt file.
absl::Status WriteByteLevelTokenFile(const std::string& text_path, const std::string& prefix);

}  // namespace weft
