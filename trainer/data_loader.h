// DataLoader: deterministic, shuffled, data-parallel batches of packed token
// windows from a TokenFile.
//
// Samples are the flat token stream cut into consecutive windows of seq_len
// tokens (sample i = tokens [i * seq_len, (i + 1) * seq_len); a trailing
// partial window is dropped; labels are the inputs, the model shifts them as
// transformers does). Each epoch visits the samples in a permutation drawn
// from (seed, epoch) by Fisher-Yates over std::mt19937_64 with weft's own
// uniform draw, so the order is the same on every platform and standard
// library. A global batch is the next global_batch samples of the
// permutation; dp rank d gets the d-th contiguous block of
// global_batch / dp_size of them. An epoch ends when fewer than global_batch
// samples remain (those are skipped); the next starts with a new permutation.
//
// The position (epoch, samples consumed in it) is all the state: Restore()
// then Next() gives exactly what an uninterrupted loader would. The offset
// counts samples, not batches, so a run may resume with another global_batch
// or dp_size (not another seq_len or seed: those change the samples).
//
//   ASSIGN_OR_RETURN(auto file, TokenFile::Open("data/train"));
//   DataLoaderOptions options;
//   options.seq_len = 256;
//   options.global_batch = 32;  // 16 per rank
//   options.dp_rank = rank;
//   options.dp_size = 2;
//   ASSIGN_OR_RETURN(std::unique_ptr<DataLoader> loader, DataLoader::Create(file, options));
//   at::Tensor input_ids = loader->Next();        // int64 [16, 256]
//   std::string saved = loader->position().ToJson();
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "trainer/token_file.h"

namespace weft {

struct DataLoaderOptions {
  int64_t seq_len = 0;
  /// Samples per optimizer step over all dp ranks.
  int64_t global_batch = 0;
  int dp_rank = 0;
  int dp_size = 1;
  uint64_t seed = 0;
  bool shuffle = true;
};

struct DataPosition {
  int64_t epoch = 0;
  /// Samples consumed in this epoch.
  int64_t offset = 0;

  /// `{"epoch": 2, "offset": 96}`.
  std::string ToJson() const;
  /// Parses ToJson()'s output: an object with exactly the non-negative
  /// integers "epoch" and "offset".
  static absl::StatusOr<DataPosition> FromJson(absl::string_view json);

  bool operator==(const DataPosition& o) const { return epoch == o.epoch && offset == o.offset; }
  bool operator!=(const DataPosition& o) const { return !(*this == o); }
};

/// Sample order of one epoch: a permutation of [0, n) drawn from (seed,
/// epoch), the same on every platform.
std::vector<int64_t> EpochPermutation(int64_t n, uint64_t seed, int64_t epoch);

class DataLoader {
 public:
  /// Checks `options` against `file` (see Validate) and returns a loader at
  /// position {0, 0}.
  static absl::StatusOr<std::unique_ptr<DataLoader>> Create(std::shared_ptr<TokenFile> file,
                                                            DataLoaderOptions options);
  /// The options' errors, one line each naming the values found and
  /// expected, e.g. `token file data/train has 1000 tokens: 3 samples of
  /// seq_len 256, fewer than one global_batch of 4 (expected num_tokens >=
  /// 1024)`.
  static absl::Status Validate(const TokenFile& file, const DataLoaderOptions& options);

  /// For options already validated (Create); throws std::runtime_error with
  /// Validate's message otherwise.
  DataLoader(std::shared_ptr<TokenFile> file, DataLoaderOptions options);

  /// This dp rank's share of the next global batch: int64 [global_batch /
  /// dp_size, seq_len] on the CPU.
  at::Tensor Next();
  /// Where the next batch comes from (after the last batch of an epoch this
  /// is already {epoch + 1, 0}).
  DataPosition position() const { return position_; }
  /// Continues from `position`; CheckPosition's error (and no change) when
  /// it is invalid.
  absl::Status Restore(const DataPosition& position);
  /// A position is valid when epoch >= 0 and 0 <= offset <= num_samples.
  absl::Status CheckPosition(const DataPosition& position) const;

  int64_t num_samples() const { return num_samples_; }
  /// Global batches per epoch: num_samples / global_batch.
  int64_t batches_per_epoch() const { return num_samples_ / options_.global_batch; }
  int64_t epoch() const { return position_.epoch; }
  const DataLoaderOptions& options() const { return options_; }

 private:
  int64_t SampleAt(int64_t index);  // the index-th sample of this epoch's order
  void Normalize();                 // start the next epoch when this one is exhausted

  std::shared_ptr<TokenFile> file_;
  DataLoaderOptions options_;
  int64_t num_samples_ = 0;
  DataPosition position_;
  int64_t permutation_epoch_ = -1;
  std::vector<int64_t> permutation_;
};

}  // namespace weft
