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
// Packing (`packing`): samples are instead rows of whole documents packed by
// best-fit decreasing (TRL's "bfd": documents sorted by length, longest
// first, each into the fullest row it fits; a document longer than seq_len
// is truncated to it), so no document is split; the rows are shuffled and
// split like windows. A packed row's positions restart at every document,
// each document's first label is -100 (it is not predicted from the
// previous document's end) and the tail a row leaves is padding (labels
// -100, a segment of its own); the model's mask keeps attention inside each
// document (models/attention.h CausalMask).
//
// Labels are the inputs with -100 where the token file's loss mask is 0
// (instruction data: prompts, non-assistant turns), as TRL's
// completion_only_loss / assistant_only_loss.
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
#include <utility>
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
  /// Whole documents packed into rows (best-fit decreasing), see above.
  bool packing = false;
  /// The documents to read, in order (empty: all of them): windows are cut
  /// from their concatenation, packed rows made of them. data.eval_fraction
  /// gives the training and the evaluation loader disjoint lists.
  std::vector<int64_t> documents;
  /// Evaluation: fewer samples than one global batch are enough (EvalBatch
  /// pads the last batch).
  bool allow_partial = false;
  /// The token id of padding (a packed row's tail, EvalBatch's missing rows);
  /// its labels are -100, so any id in the vocabulary does.
  int64_t pad_token = 0;
};

/// A rank's batch, as the model takes it.
struct Batch {
  at::Tensor input_ids;  // int64 [rows, seq_len]
  at::Tensor labels;     // int64 [rows, seq_len]; -100: not a counted label
  at::Tensor
      position_ids;  // packed: int64 [rows, seq_len], restarting per document; else undefined
  /// The labels the loss counts: labels[:, 1:] != -100 (the model shifts).
  int64_t label_tokens = 0;
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
  at::Tensor Next() { return NextBatch().input_ids; }
  /// The same with its labels (and positions when packed).
  Batch NextBatch();
  /// Evaluation: this rank's share of global batch `index` of the samples in
  /// order (no shuffle, no epochs); rows past the last sample are padding
  /// (no labels), so every rank runs the same batches to the end.
  Batch EvalBatch(int64_t index);
  /// Global batches EvalBatch covers: ceil(num_samples / global_batch).
  int64_t eval_batches() const {
    return (num_samples_ + options_.global_batch - 1) / options_.global_batch;
  }
  /// Tokens cut from documents longer than seq_len when packing.
  int64_t truncated_tokens() const { return truncated_tokens_; }
  /// Whether labels can differ from the inputs (a loss mask or packing).
  bool masks_labels() const { return options_.packing || file_->has_loss_mask(); }
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
  void Init();                      // the samples: stream offsets or packed rows
  // Sample `sample` (or padding when it is -1) into row `r` of `batch`.
  void Fill(int64_t sample, int64_t r, Batch& batch);
  // Stream tokens [begin, end) (the chosen documents concatenated).
  void ReadStream(int64_t begin, int64_t end, int64_t* ids, uint8_t* mask) const;
  Batch MakeBatch(const std::vector<int64_t>& samples);

  std::shared_ptr<TokenFile> file_;
  DataLoaderOptions options_;
  int64_t num_samples_ = 0;
  std::vector<int64_t> stream_starts_;  // documents mode: stream offset of each chosen document
  /// Packed rows: (document, tokens taken) in order.
  std::vector<std::vector<std::pair<int64_t, int64_t>>> rows_;
  int64_t truncated_tokens_ = 0;
  DataPosition position_;
  int64_t permutation_epoch_ = -1;
  std::vector<int64_t> permutation_;
};

}  // namespace weft
