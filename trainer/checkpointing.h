// Training checkpoints and the Hugging Face export.
//
// A checkpoint is a directory `<output_dir>/checkpoints/step_00000100/`:
//   model-tp00000-of-00002.safetensors      this tp rank's parameter shards; the
//                                           metadata `weft_shards` gives, per tensor,
//                                           its global shape and this rank's slice
//   optimizer-tp00000-of-00002.safetensors  AdamW state (exp_avg, exp_avg_sq, master)
//   trainer_state.json                      step, data position, RNG, mesh, seed
//   config.yaml                             the resolved training configuration
// Data-parallel replicas hold identical shards, so the ranks of dp index 0
// write them (one file per tp rank). With pipeline stages each pp rank
// writes its stages' tensors under their global names, in
// `model-pp00001-of-00002-tp00000-of-00002.safetensors`. The directory is written as
// `step_00000100.tmp`, every file fsynced, then renamed: a crash mid-save
// leaves the previous checkpoint intact (and the .tmp is ignored and
// removed by the next save). The last `keep` checkpoints are kept.
//
// With dp_shard every rank of dp index 0 writes its pieces
// (`...-shard00001-of-00002.safetensors`), each tensor's global slice in
// `weft_shards`; resuming on another layout reads only the saved slices that
// overlap each rank's own (LoadCheckpointSlices).
//
// The export gathers each parameter (pieces, tp shards, pipeline stages)
// one at a time and streams it into a consolidated Hugging Face directory
// (config.json, safetensors, index) that transformers and `weft forward` load.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "base/placement.h"
#include "models/causal_lm.h"
#include "trainer/data_loader.h"

namespace weft {

class DeviceMesh;
class ProcessGroup;

/// A tp rank's placements by parameter name (CausalLM::placements; empty at
/// tp = 1).
using Placements = std::map<std::string, DTensorSpec>;

struct TrainerState {
  int64_t step = 0;  // optimizer steps done
  DataPosition data;
  int tp = 1;
  int dp = 1;
  int pp = 1;
  int dp_shard = 1;
  int64_t seed = 0;
  std::string rng_state_hex;  // LibTorch's default CPU generator state

  std::string ToJson() const;
  static absl::StatusOr<TrainerState> FromJson(absl::string_view json, const std::string& source);
};

/// `<output_dir>/checkpoints/step_%08d`.
std::string CheckpointDir(const std::string& output_dir, int64_t step);

/// Every `step_NNNNNNNN` directory under `<output_dir>/checkpoints` is a
/// checkpoint weft wrote whole: it has a trainer_state.json naming step N.
/// Otherwise an error names the directory (it is neither used, nor skipped,
/// nor deleted by the keep-K rotation). `.tmp` directories of interrupted
/// saves are not checkpoints and are not checked.
absl::Status CheckCheckpointDirs(const std::string& output_dir);

/// The newest complete checkpoint under `<output_dir>/checkpoints`, if any.
std::optional<std::string> LatestCheckpoint(const std::string& output_dir);

/// A tensor's global shape and the part of it one rank holds (per dim the
/// global ranges, concatenated; an empty list: the whole dim).
struct TensorSlice {
  std::vector<int64_t> global_shape;
  Slice slice;
};

struct SaveRequest {
  std::string output_dir;
  int64_t keep = 2;
  TrainerState state;
  std::string config_yaml;
  /// This rank's parameters and optimizer state (writers only).
  std::vector<std::pair<std::string, at::Tensor>> params;
  std::vector<std::pair<std::string, at::Tensor>> optimizer;
  /// This tp rank's placements (empty or null at tp = 1), for the metadata.
  const Placements* shards = nullptr;
  /// With dp_shard: each tensor's slice as this rank holds it (its piece),
  /// instead of `shards`; every dp_shard rank then writes its own files
  /// (`...-tp00000-of-00002-shard00001-of-00004.safetensors`).
  const std::map<std::string, TensorSlice>* slices = nullptr;
};

/// Collective over the world: every rank calls it. Ranks with dp index 0
/// write their (pp, tp) rank's files; rank 0 writes the state and commits.
absl::Status SaveCheckpoint(const SaveRequest& request, const DeviceMesh& mesh, int world_rank);

struct LoadedCheckpoint {
  TrainerState state;
  std::map<std::string, at::Tensor> params;
  std::map<std::string, at::Tensor> optimizer;
  /// The bytes of the largest whole (global) tensor read from, and of what
  /// this rank got: the bound on resharding's memory is their sum.
  int64_t largest_tensor_bytes = 0;
  int64_t bytes() const;
};

/// Reads `dir` for tp rank `tp_rank` of `tp`. A checkpoint saved with the
/// same tp gives this rank's files as they are. One saved with another tp
/// is resharded, as DCP does: every tensor is assembled from the saved
/// ranks' shards (their slices are in the metadata) and cut to this rank's
/// slice in `shards` (nullptr or absent: the whole tensor). The data-parallel
/// size may change freely (replicas hold the same shards).
/// `wanted` (unset: every tensor) picks the parameters this rank holds, by
/// name (their optimizer state follows): a checkpoint saved at any pp is
/// read from every stage's files, so a model cut another way, or not at
/// all, resumes from it.
absl::StatusOr<LoadedCheckpoint> LoadCheckpointDir(
    const std::string& dir, int tp, int tp_rank, const Placements* shards,
    const std::function<bool(const std::string& name)>& wanted = nullptr);

/// Where a rank's tensors come from when it resumes: its slice of each
/// parameter (`targets`; a parameter absent from it is read whole), and
/// the layout it shares with the files it can take as they are.
struct LoadLayout {
  int tp = 1, tp_rank = 0;
  int dp_shard = 1, dp_shard_rank = 0;
  std::map<std::string, TensorSlice> targets;
  std::function<bool(const std::string& name)> wanted;  // unset: every tensor
};

/// Reads `dir` for `layout`. Files written with the same tp and dp_shard
/// are this rank's as they are; otherwise each wanted tensor is built from
/// the saved slices that overlap this rank's slice, reading only those (no
/// rank assembles a whole tensor it does not hold). Optimizer state
/// (`exp_avg.<name>`) is sliced as its parameter.
absl::StatusOr<LoadedCheckpoint> LoadCheckpointSlices(const std::string& dir,
                                                      const LoadLayout& layout);

/// What every pp rank exports, in file order (each rank's own list is the
/// order of its `params`; one list without stages), with global shapes, and
/// the pp group (null without stages).
struct PipelineExport {
  const ProcessGroup* group = nullptr;
  /// [pp rank]: (name, global shape) of each tensor it exports.
  std::vector<std::vector<std::pair<std::string, std::vector<int64_t>>>> tensors;
};

/// Gathers each parameter over the tp group of `mesh` (and from every
/// pipeline stage, `pipeline`; `whole_local(i)`, when set, gives params[i]'s
/// tp-local tensor from its dp_shard pieces, collectively) one tensor at a
/// time, and world rank 0 streams it into the files (peak memory: the
/// largest tensor, not the model). On world rank 0 it
/// writes `dir` as a Hugging Face checkpoint with `config_json` as its
/// config.json. `all_shards[r]` are tp rank r's placements (empty at
/// tp = 1). Collective over the tp group (ranks of dp index != 0 return at once).
/// A fused parameter with a per-expert `layouts` entry is written as
/// transformers 5's save_pretrained writes it: one tensor per expert and part
/// (dim 1 split equally among the parts).
absl::Status ExportHuggingFace(const std::string& dir, const std::string& config_json,
                               const std::vector<std::pair<std::string, at::Tensor>>& params,
                               const std::vector<Placements>& all_shards, const DeviceMesh& mesh,
                               int world_rank, const PipelineExport* pipeline = nullptr,
                               const std::function<at::Tensor(size_t)>& whole_local = nullptr,
                               const std::vector<StackedExperts>& layouts = {});

}  // namespace weft
