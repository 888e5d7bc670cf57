// Hugging Face checkpoint directories: one safetensors file, or shards with
// a model.safetensors.index.json.
//
//   ASSIGN_OR_RETURN(auto ckpt, Checkpoint::Open("/models/llama"));
//   const Checkpoint::Located* w = ckpt->Find("lm_head.weight");
//   at::Tensor t = w->file->Get(*w->entry);
//
//   WriteCheckpointOptions options;
//   options.max_shard_bytes = 5e9;
//   RETURN_IF_ERROR(WriteCheckpoint("/out", tensors, options));
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/safetensors.h"

namespace weft {

class Checkpoint {
 public:
  struct Located {
    const SafetensorsFile* file;
    const TensorEntry* entry;
  };

  /// `path` is a .safetensors file or a directory holding
  /// model.safetensors.index.json (shards) or model.safetensors. Every file is
  /// mapped and validated; errors name the file and the tensor: a shard the
  /// index names that does not exist, a name the index maps to a file that
  /// lacks it, a name present in two files.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& path);

  /// The files in load order (the index's shard order, i.e. sorted names).
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }
  /// nullptr when the checkpoint has no such tensor.
  const Located* Find(const std::string& name) const;
  /// Every tensor, by name.
  const std::map<std::string, Located>& tensors() const { return tensors_; }
  /// Sum of every tensor's bytes.
  uint64_t total_bytes() const;
  /// The index file, or empty for a single file.
  const std::string& index_path() const { return index_path_; }

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, Located> tensors_;
  std::string index_path_;
};

struct WriteCheckpointOptions {
  /// Largest shard in bytes (tensor bytes); one tensor larger than this gets
  /// a shard of its own. 0: everything in one model.safetensors.
  uint64_t max_shard_bytes = 5'000'000'000;
  std::vector<std::pair<std::string, std::string>> metadata = {{"format", "pt"}};
};

/// Writes `tensors` into directory `dir` (created if missing) as
/// Hugging Face does: model.safetensors when one shard suffices, else
/// model-0000i-of-0000N.safetensors plus model.safetensors.index.json
/// ({"metadata": {"total_size": N}, "weight_map": {name: file}}). Shards are
/// filled greedily in the given order. Every file is written atomically.
absl::Status WriteCheckpoint(const std::string& dir,
                             const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                             const WriteCheckpointOptions& options = {});

/// The same directory written one tensor at a time (SafetensorsStreamWriter
/// per shard): the shards and the index come from the declarations, and
/// Append takes the tensors in declaration order, so the caller never holds
/// more than one (the Hugging Face export of a model larger than memory).
///
///   ASSIGN_OR_RETURN(auto w, CheckpointStreamWriter::Create(dir, decls));
///   for (...) RETURN_IF_ERROR(w->Append(name, whole));
///   RETURN_IF_ERROR(w->Commit());
class CheckpointStreamWriter {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointStreamWriter>> Create(
      const std::string& dir, std::vector<TensorDecl> tensors,
      const WriteCheckpointOptions& options = {});
  absl::Status Append(const std::string& name, const at::Tensor& tensor);
  absl::Status Commit();

 private:
  CheckpointStreamWriter() = default;
  std::string dir_;
  WriteCheckpointOptions options_;
  std::vector<std::vector<TensorDecl>> shards_;
  std::vector<std::string> names_;  // file of each shard
  size_t shard_ = 0, in_shard_ = 0;
  std::unique_ptr<SafetensorsStreamWriter> writer_;
  uint64_t total_ = 0;
};

}  // namespace weft
