// -----------------------------------------------------------------------------
// File: trainer/lora.h
// -----------------------------------------------------------------------------
//
// LoRA (Hu et al.), as PEFT does it: every targeted Linear gets two factors,
// lora_A [r, in] and lora_B [out, r], and computes
//   y = x W^T + b + scale * B A dropout(x),  scale = alpha / r (alpha / sqrt(r) with rsLoRA);
// A is initialised like a torch Linear (kaiming-uniform), B with zeros, so
// training starts from the base model. Every other parameter is frozen: no
// gradient, no optimizer state, no fp32 master copy.
//
// Applied after tensor parallelism, the factors follow the base weight's
// placement the way torchtitan and PEFT lay them out: a column-parallel
// base (colwise, colwise_gather_output, packed_colwise; Shard(0)) keeps A
// replicated and shards B's rows exactly as the weight's rows (packed parts
// and replicated KV heads included); a row-parallel base (rowwise,
// packed_rowwise; Shard(1)) shards A's columns as the weight's and keeps B
// replicated, its partial output added before the base's one reduction. The
// replicated factor's gradient is partial on each rank and is summed over tp
// (a gradient hook, recorded in CausalLM::gradient_hooks).
//
// On disk, PEFT's format: adapter_config.json and adapter_model.safetensors
// with names "base_model.model.<module>.lora_A.weight" (full tensors).
//
//   LoraOptions o;
//   o.r = 16;  o.alpha = 32;  o.target_modules = {"q_proj", "v_proj"};
//   ASSIGN_OR_RETURN(LoraSummary s, ApplyLora(*model, o, tp_group));
//   ...train...
//   RETURN_IF_ERROR(WritePeftAdapter("run/adapter", o, "base/dir", s, full_tensors));
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/causal_lm.h"
#include "parallel/process_group.h"

namespace weft {

struct LoraOptions {
  int64_t r = 8;
  double alpha = 8;
  double dropout = 0;
  /// PEFT's names (a module whose name is, or ends with "." and, one of
  /// them: "q_proj", "self_attn.o_proj"), weft's glob patterns (with '*':
  /// "model.layers.*.mlp.down_proj"), or "all-linear" (every Linear but the
  /// output layer). `target_regex`, when set, replaces them (PEFT's
  /// target_modules given as one string: a full-match regular expression).
  std::vector<std::string> target_modules;
  std::string target_regex;
  bool use_rslora = false;
  /// Seeds A's initialisation (the same on every rank).
  uint64_t seed = 0;
  /// Where to make the adapters of a base weight that is on meta (dp_shard
  /// builds the model on meta and shards it afterwards); `keep` says which
  /// bases are this rank's (a pipeline stage's; unset: all). Unset: the
  /// adapters take the base weight's device.
  std::optional<at::Device> device;
  std::function<bool(const std::string& weight)> keep;
  /// Sum the replicated factor's partial gradients over tp (always, in
  /// training); false leaves each rank its partial sum, the dropped
  /// collective a test shows the comparison with one process catches.
  bool sum_over_tp = true;
  double scale() const;
};

/// What ApplyLora attached.
struct LoraSummary {
  std::vector<std::string> modules;  // the adapted Linear modules, in model order
  int64_t trainable = 0;             // adapter elements on this rank
  int64_t frozen = 0;                // base elements on this rank
};

/// The adapter parameters' names end with these.
bool IsLoraParameter(const std::string& name);

/// Attaches adapters to the targeted Linear modules of `model` (whole, or
/// already sharded by the plan engine over `tp`; null or size 1: whole) and
/// freezes every other parameter. Errors, one line each: a target matching
/// no Linear, r < 1, a base whose placement has no LoRA layout (a region's
/// replicated weight, experts).
absl::StatusOr<LoraSummary> ApplyLora(CausalLM& model, const LoraOptions& options,
                                      std::shared_ptr<const ProcessGroup> tp);

/// PEFT's adapter_config.json for `options` (target_modules as given when
/// they are PEFT names, else a regex of exactly the adapted modules).
std::string PeftAdapterConfig(const LoraOptions& options, const std::string& base_model,
                              const LoraSummary& summary);

/// Writes `dir`/adapter_config.json and `dir`/adapter_model.safetensors from
/// the adapters' full tensors (weft names) in PEFT's names.
absl::Status WritePeftAdapter(const std::string& dir, const LoraOptions& options,
                              const std::string& base_model, const LoraSummary& summary,
                              const std::vector<std::pair<std::string, at::Tensor>>& tensors);

/// Reads a PEFT LoRA adapter's adapter_config.json; refuses what weft does
/// not implement (DoRA, biases, rank/alpha patterns, modules_to_save, ...).
absl::StatusOr<LoraOptions> ReadPeftAdapterConfig(const std::string& dir);

/// Copies `dir`/adapter_model.safetensors into the adapters ApplyLora made
/// (each rank its slice); every adapter needs its tensor and every tensor
/// an adapter.
absl::Status LoadPeftAdapterWeights(CausalLM& model, const std::string& dir);

/// ReadPeftAdapterConfig + ApplyLora + LoadPeftAdapterWeights.
absl::StatusOr<LoraSummary> LoadPeftAdapter(CausalLM& model, const std::string& dir,
                                            std::shared_ptr<const ProcessGroup> tp);

}  // namespace weft
