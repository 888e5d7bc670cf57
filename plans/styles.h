// -----------------------------------------------------------------------------
// File: plans/styles.h
// -----------------------------------------------------------------------------
//
// Tensor-parallel styles: one record per style, holding everything weft knows
// about it (PyTorch's `ParallelStyle` classes): its transformers string, how
// it slices a parameter for a rank, the collectives it wires around its
// module in forward (and so backward), whether its gradients are summed over
// tp, its line in `weft plan explain` and its row in docs/plan_styles.md.
// The engine (engine.h) only orchestrates: it resolves the plan, asks each
// parameter's rule for its slice, and asks each module's rule to wire it.
//
// Adding a style: an enum value below and a record in styles.cc; the
// docs table is checked against the records (styles_test.cc).
//
//   const StyleRule& rule = RuleOf(Style::kRowwise);
//   rule.name == std::string("rowwise");
//   RETURN_IF_ERROR(rule.slice(input, shard));  // Shard(1) of the weight
//   rule.wire(wire_input);                      // all-reduce of the output
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace weft {

class Module;
class ProcessGroup;
struct ModelConfig;
struct ShardSpec;

/// transformers' tensor-parallel styles (docs/plan_styles.md has the table).
enum class Style {
  kColwise,
  kRowwise,
  kColwiseGatherOutput,  // "colwise_gather_output", alias "colwise_rep"
  kRowwiseSplitInput,    // "rowwise_split_input", alias "rowwise_rep"
  kEmbeddingRowwise,
  kEmbeddingColwise,
  kPackedColwise,
  kPackedRowwise,
  kSequenceParallel,
  kReplicatedWithGradAllreduce,
  kAllReduce,
  kLocalColwise,
  kLocalRowwise,
  kLocal,
  kGather,
  kGroupedGemm,
  kMoeTpExperts,
  kEpRouter,
};

/// What a style's slice rule sees of one parameter.
struct SliceInput {
  std::string name;            // "model.layers.0.self_attn.q_proj.weight"
  std::vector<int64_t> shape;  // the global shape
  const ModelConfig* config = nullptr;
  int tp = 1;
  int rank = 0;
  /// Experts lists of per-expert modules ("model.layers.0.mlp.experts", with
  /// experts.<e> inside) -> experts.
  const std::map<std::string, int64_t>* expert_counts = nullptr;
};

/// What a style's wiring sees of one module.
struct WireInput {
  Module* module = nullptr;
  std::string module_name;
  /// The tp group; hooks hold it, so it lives as long as the model.
  std::shared_ptr<const ProcessGroup> group;
  /// The module's bias when the plan covers it (else undefined).
  at::Tensor bias;
  /// The shard of the module's weight (embedding_rowwise reads its rows).
  const ShardSpec* weight = nullptr;
  /// Sequence parallelism: the slot where a row-parallel layer leaves its
  /// reduce-scattered output for its block (null: all-reduce).
  std::shared_ptr<at::Tensor> sequence_slot;
};

/// Everything about one style (styles.cc fills one per style, by name).
struct StyleRule {
  StyleRule(Style style_value, const char* name_value) : style(style_value), name(name_value) {}
  Style style;
  /// transformers' string, and an older alias (or nullptr).
  const char* name;
  const char* alias = nullptr;
  /// Region styles name a module (gather, moe_tp_experts), not parameters:
  /// the engine all-reduces that module's output once.
  bool names_module = false;
  /// Row-parallel: each rank's output is a partial sum; a replicated bias is
  /// added once (inside a region: by rank 0 only, its gradient summed).
  bool row_parallel = false;
  /// In sequence-parallel layers its all-reduce becomes a reduce-scatter
  /// onto sequence shards.
  bool reduce_scatters_in_sequence_parallel = false;
  /// Its parameters' gradients are partial on each rank (grad Partial) and a
  /// gradient hook sums them over tp.
  bool grad_allreduce = false;
  /// For parameters that make their MoE block a region (grouped_gemm,
  /// ep_router): the block's name; else nullptr.
  std::string (*region_of)(const std::string& parameter) = nullptr;
  /// Fills `shard.slice` (and expert facts) for one parameter; errors name
  /// module, parameter, dim, size and tp. nullptr for region styles.
  absl::Status (*slice)(const SliceInput& input, ShardSpec& shard) = nullptr;
  /// Installs the module's hooks outside a region (nullptr: none).
  void (*wire)(const WireInput& input) = nullptr;
  /// Installs the module's hooks inside a region (nullptr: none).
  void (*wire_in_region)(const WireInput& input) = nullptr;
  /// `weft plan explain`: the collectives per forward and backward outside a
  /// region ("-": none).
  const char* forward = "-";
  const char* backward = "-";
  /// docs/plan_styles.md's row: a note on what it names ("" or "(norms)"),
  /// then weight, bias, input, output, forward, backward.
  std::array<const char*, 7> doc = {};
};

/// Every style's record, canonical names in enum order.
const std::vector<StyleRule>& StyleRules();
/// The record of `style`.
const StyleRule& RuleOf(Style style);
/// The canonical string of a style.
const char* StyleName(Style style);
/// Parses a style string (aliases included); the error lists the valid ones.
absl::StatusOr<Style> ParseStyle(absl::string_view text);
/// docs/plan_styles.md's table of styles, generated from the records.
std::string StyleTableMarkdown();

}  // namespace weft
