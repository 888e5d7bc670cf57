#include "plans/styles.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/slice.h"
#include "models/config.h"
#include "models/module.h"
#include "parallel/autograd_collectives.h"
#include "parallel/process_group.h"
#include "plans/param_names.h"
#include "plans/shard_spec.h"

namespace weft {
namespace {

using plans_internal::ExpertOf;
using plans_internal::HasHeads;
using plans_internal::LocalName;
using plans_internal::ModuleOf;
using Group = std::shared_ptr<const ProcessGroup>;

// ---------------------------------------------------------------------------
// Slice rules: which part of a parameter a rank holds.

absl::Status NotDivisible(const std::string& param, int dim, int64_t size, int tp) {
  return absl::InvalidArgumentError(absl::StrCat("module ", ModuleOf(param), " parameter ",
                                                 LocalName(param), " dim ", dim, " has size ", size,
                                                 ", not divisible by tp ", tp));
}

// A weight, not a bias: named "weight", or fused experts' [E, out, in]
// tensors (transformers 5's gate_up_proj, down_proj).
bool IsWeight(const SliceInput& in) {
  return LocalName(in.name) == "weight" || in.shape.size() >= 3;
}

// torch.chunk of [begin, begin + size) into `tp` parts: part `rank`.
std::vector<Range> ChunkPart(int64_t begin, int64_t size, int tp, int rank) {
  ChunkSpan span = ChunkOf(size, tp, rank);
  return {{begin + span.offset, begin + span.offset + span.length}};
}

// Replicated: the whole parameter on every rank.
absl::Status SliceWhole(const SliceInput&, ShardSpec&) { return absl::OkStatus(); }

// Rows (dim 0) of a Linear: whole heads for attention projections; KV heads
// replicated when tp exceeds num_key_value_heads.
absl::Status SliceRows(const SliceInput& in, ShardSpec& shard) {
  const ModelConfig& c = *in.config;
  const std::string module = ModuleOf(in.name);
  const int64_t d = c.head_dim, rows = in.shape[0];
  const int tp = in.tp;
  const bool kv = absl::EndsWith(module, "k_proj") || absl::EndsWith(module, "v_proj");
  if (kv && c.num_key_value_heads < tp && rows == c.num_key_value_heads * d) {
    if (tp % c.num_key_value_heads != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tp ", tp, " is larger than num_key_value_heads ", c.num_key_value_heads,
                       " and not a multiple of it (expected tp to divide or be a multiple of it)"));
    }
    // Rank r's query heads use KV head r / (tp / kv_heads): replicate it.
    shard.kv_heads = c.num_key_value_heads;
    shard.kv_head = in.rank / (tp / c.num_key_value_heads);
    shard.slice.push_back({{shard.kv_head * d, (shard.kv_head + 1) * d}});
  } else {
    if (HasHeads(module) && rows % tp != 0) return NotDivisible(in.name, 0, rows, tp);
    shard.slice.push_back(ChunkPart(0, rows, tp, in.rank));
  }
  if (IsWeight(in)) shard.slice.push_back({});
  return absl::OkStatus();
}

// Rows of a Linear whose output is gathered again (colwise_gather_output):
// any torch.chunk of the rows works, so heads are neither kept whole nor
// replicated (OLMo 2's k_proj with fewer KV heads than ranks gathers its
// [kv_heads * head_dim] output exactly once).
absl::Status SliceGatheredRows(const SliceInput& in, ShardSpec& shard) {
  shard.slice.push_back(ChunkPart(0, in.shape[0], in.tp, in.rank));
  if (IsWeight(in)) shard.slice.push_back({});
  return absl::OkStatus();
}

// Columns (dim 1) of a Linear weight; the bias is replicated (added once).
absl::Status SliceColumns(const SliceInput& in, ShardSpec& shard) {
  if (!IsWeight(in)) return absl::OkStatus();
  const std::string module = ModuleOf(in.name);
  // The input dim: the last (a Linear's [out, in], fused experts' [E, out, in]).
  const int dim = static_cast<int>(in.shape.size()) - 1;
  if (HasHeads(module) && in.shape[dim] % in.tp != 0) {
    return NotDivisible(in.name, dim, in.shape[dim], in.tp);
  }
  shard.slice = Slice(in.shape.size());
  shard.slice[dim] = ChunkPart(0, in.shape[dim], in.tp, in.rank);
  return absl::OkStatus();
}

// Each packed part (q | k | v, or gate | up halves) split on its own, on
// dim 0 (colwise) or dim 1 (rowwise).
absl::Status SlicePacked(const SliceInput& in, ShardSpec& shard, bool rowwise) {
  const ModelConfig& c = *in.config;
  const std::string module = ModuleOf(in.name);
  if (rowwise && !IsWeight(in)) return absl::OkStatus();  // bias: replicated, added once
  // The output dim for colwise, the input dim for rowwise: dims 0 and 1 of a
  // Linear's [out, in], 1 and 2 of fused experts' [E, out, in].
  const int dims = static_cast<int>(in.shape.size());
  const int dim = rowwise ? dims - 1 : std::max(0, dims - 2);
  if (static_cast<int>(in.shape.size()) <= dim) {
    return absl::InvalidArgumentError(absl::StrCat("module ", module, " parameter ",
                                                   LocalName(in.name), " has ", in.shape.size(),
                                                   " dims (expected a Linear weight [out, in])"));
  }
  const int64_t d = c.head_dim;
  std::vector<int64_t> parts;
  if (!rowwise && absl::EndsWith(module, "qkv_proj")) {
    const int64_t kv = c.num_key_value_heads, q = c.num_attention_heads * d;
    if (in.shape[dim] != q + 2 * kv * d) {
      return absl::InvalidArgumentError(absl::StrCat(
          "module ", module, " parameter ", LocalName(in.name), " has ", in.shape[dim],
          " rows (expected (num_attention_heads + 2 * num_key_value_heads) * head_dim = ",
          q + 2 * kv * d, ")"));
    }
    if (kv < in.tp) {
      // Fewer KV heads than ranks: rank r's query heads use KV head
      // r / (tp / kv), so its k and v rows are that head's (replicated), as
      // SliceRows does for unpacked k_proj and v_proj.
      if (in.tp % kv != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "module ", module, ": tp ", in.tp, " is larger than num_key_value_heads ", kv,
            " and not a multiple of it (expected tp to divide or be a multiple of it)"));
      }
      if (q % in.tp != 0) return NotDivisible(in.name, dim, q, in.tp);
      const int64_t head = in.rank / (in.tp / kv), local_q = q / in.tp;
      shard.kv_heads = kv;
      shard.kv_head = head;
      shard.kv_rows = {{local_q, local_q + 2 * d}};
      shard.slice = Slice(in.shape.size());
      shard.slice[dim] = {ChunkPart(0, q, in.tp, in.rank)[0],
                          {q + head * d, q + (head + 1) * d},
                          {q + kv * d + head * d, q + kv * d + (head + 1) * d}};
      return absl::OkStatus();
    }
    parts = {q, kv * d, kv * d};
  } else {
    if (in.shape[dim] % 2 != 0) return NotDivisible(in.name, dim, in.shape[dim], 2);
    parts = {in.shape[dim] / 2, in.shape[dim] / 2};
  }
  std::vector<Range> ranges;
  int64_t begin = 0;
  for (int64_t part : parts) {
    if (part % in.tp != 0) return NotDivisible(in.name, dim, part, in.tp);
    ranges.push_back(ChunkPart(begin, part, in.tp, in.rank)[0]);
    begin += part;
  }
  shard.slice = Slice(in.shape.size());
  shard.slice[dim] = ranges;
  return absl::OkStatus();
}
absl::Status SlicePackedRows(const SliceInput& in, ShardSpec& shard) {
  return SlicePacked(in, shard, /*rowwise=*/false);
}
absl::Status SlicePackedColumns(const SliceInput& in, ShardSpec& shard) {
  return SlicePacked(in, shard, /*rowwise=*/true);
}

// Vocab-parallel: rows of the table.
absl::Status SliceVocab(const SliceInput& in, ShardSpec& shard) {
  shard.slice = {ChunkPart(0, in.shape[0], in.tp, in.rank), {}};
  return absl::OkStatus();
}

// The embedding dim.
absl::Status SliceEmbeddingDim(const SliceInput& in, ShardSpec& shard) {
  shard.slice = {{}, ChunkPart(0, in.shape[1], in.tp, in.rank)};
  return absl::OkStatus();
}

// A norm's 1-D weight, replicated.
absl::Status SliceNorm(const SliceInput& in, ShardSpec&) {
  if (in.shape.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "module ", ModuleOf(in.name), " parameter ", LocalName(in.name), " has shape [",
        absl::StrJoin(in.shape, ", "), "] (sequence_parallel expects a norm's 1-D weight)"));
  }
  return absl::OkStatus();
}

// Expert parallelism: rank r holds experts [r*E/tp, (r+1)*E/tp) whole; the
// others' become empty on the intermediate dim, so they compute zeros: input
// projections ([I, H]) lose their rows, the output projection ([H, I]) its
// columns.
absl::Status SliceExperts(const SliceInput& in, ShardSpec& shard) {
  const std::string module = ModuleOf(in.name);
  std::string list;
  int64_t expert = 0;
  if (in.shape.size() >= 2 && module.size() > 8 &&
      module.compare(module.size() - 8, 8, ".experts") == 0 && !ExpertOf(in.name, &list, &expert)) {
    // Fused experts ([E, ...], transformers 5): rank r holds its experts'
    // rows of dim 0; the module's router indices are mapped to them
    // (WireLocalExperts).
    const int64_t experts = in.shape[0];
    if (experts % in.tp != 0) {
      return absl::InvalidArgumentError(absl::StrCat("module ", module, " has ", experts,
                                                     " experts, not divisible by tp ", in.tp));
    }
    shard.slice = Slice(in.shape.size());
    shard.slice[0] = ChunkPart(0, experts, in.tp, in.rank);
    return absl::OkStatus();
  }
  if (!ExpertOf(in.name, &list, &expert) || in.shape.size() > 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("module ", module, " parameter ", LocalName(in.name),
                     ": grouped_gemm expects an expert's Linear (a name with experts.<e>)"));
  }
  const int64_t experts = in.expert_counts->at(list);
  if (experts % in.tp != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("module ", list, " has ", experts, " experts, not divisible by tp ", in.tp));
  }
  const int64_t per_rank = experts / in.tp;
  shard.dtensor.expert = expert;
  shard.dtensor.owner = static_cast<int>(expert / per_rank);
  if (shard.dtensor.owner == in.rank) return absl::OkStatus();  // the whole expert
  const int64_t h = in.config->hidden_size;
  const std::vector<int64_t> w =
      in.shape.size() == 2 ? in.shape : std::vector<int64_t>{in.shape[0], 0};
  bool output_projection = w[0] == h && w[1] != h;
  if (w[0] == h && w[1] == h) {
    output_projection = absl::EndsWith(module, "w2") || absl::EndsWith(module, "down_proj");
  }
  if (output_projection && !IsWeight(in)) {
    return absl::InvalidArgumentError(
        absl::StrCat("module ", module, " parameter ", LocalName(in.name),
                     ": grouped_gemm does not support a bias on an expert's output projection"));
  }
  if (output_projection) {
    shard.slice = {{}, {{0, 0}}};
  } else {
    shard.slice.push_back({{0, 0}});
    if (IsWeight(in)) shard.slice.push_back({});
  }
  return absl::OkStatus();
}

std::string ExpertsBlock(const std::string& parameter) {
  std::string list;
  int64_t expert = 0;
  // The MoE block holding the experts list, or the fused experts module.
  if (!ExpertOf(parameter, &list, &expert)) return ModuleOf(ModuleOf(parameter));
  return ModuleOf(list);
}
std::string RouterBlock(const std::string& parameter) { return ModuleOf(ModuleOf(parameter)); }

// ---------------------------------------------------------------------------
// Wiring: the hooks a style installs around its module.

void CopyInput(const WireInput& w) {
  Group group = w.group;
  w.module->AddPreHook(
      [group](Module&, Module::Tensors& in) { in[0] = CopyToGroup(in[0], *group); });
}
void GatherOutput(const WireInput& w, int64_t dim) {
  Group group = w.group;
  w.module->AddPostHook([group, dim](Module&, const Module::Tensors&, at::Tensor& out) {
    out = GatherFromGroup(out, *group, dim);
  });
}
void ReduceOutput(const WireInput& w) {
  Group group = w.group;
  w.module->AddPostHook([group](Module&, const Module::Tensors&, at::Tensor& out) {
    out = ReduceFromGroup(out, *group);
  });
}
// Row-parallel output: every rank added the bias to its partial sum, so take
// it out before the reduction and add it once after; in sequence-parallel
// layers reduce-scatter onto the sequence and hand the block its shard.
void ReduceRowParallelOutput(const WireInput& w) {
  Group group = w.group;
  at::Tensor bias = w.bias;
  std::shared_ptr<at::Tensor> slot = w.sequence_slot;
  w.module->AddPostHook([group, bias, slot](Module&, const Module::Tensors&, at::Tensor& out) {
    at::Tensor partial = bias.defined() ? out - bias : out;
    at::Tensor reduced =
        slot ? ReduceScatterToGroup(partial, *group, 1) : ReduceFromGroup(partial, *group);
    out = bias.defined() ? reduced + bias : reduced;
    if (slot) *slot = out;
  });
}

void WireColwise(const WireInput& w) { CopyInput(w); }
void WireColwiseGatherOutput(const WireInput& w) {
  CopyInput(w);
  GatherOutput(w, -1);
}
void WireRowwise(const WireInput& w) { ReduceRowParallelOutput(w); }
void WireRowwiseSplitInput(const WireInput& w) {
  Group group = w.group;
  w.module->AddPreHook(
      [group](Module&, Module::Tensors& in) { in[0] = ScatterToGroup(in[0], *group, -1); });
  ReduceRowParallelOutput(w);
}
void WireSequenceParallelNorm(const WireInput& w) { GatherOutput(w, 1); }
void WireAllReduce(const WireInput& w) { ReduceOutput(w); }
void WireEmbeddingColwise(const WireInput& w) { GatherOutput(w, -1); }
// Ids outside this rank's vocab rows look up row 0, their rows are zeroed,
// and the all-reduce adds the one rank that owns each id.
void WireEmbeddingRowwise(const WireInput& w) {
  Group group = w.group;
  const int64_t start = w.weight->slice[0][0].start;
  const int64_t rows = w.weight->slice[0][0].end - start;
  auto outside = std::make_shared<at::Tensor>();
  w.module->AddPreHook([start, rows, outside](Module&, Module::Tensors& in) {
    at::Tensor local = in[0] - start;
    *outside = (local < 0).logical_or(local >= rows);
    in[0] = local.masked_fill(*outside, 0);
  });
  w.module->AddPostHook([group, outside](Module&, const Module::Tensors&, at::Tensor& out) {
    out = ReduceFromGroup(out.masked_fill(outside->unsqueeze(-1), 0), *group);
    outside->reset();
  });
}

// Expert parallelism on fused experts: this rank's module holds experts
// [r * E_local, (r + 1) * E_local); (token, expert) pairs routed elsewhere keep
// weight 0 on a local slot, so the block's all-reduce adds only real outputs
// and the router's gradient here is this rank's part (ep_router sums it).
void WireLocalExperts(const WireInput& w) {
  if (w.module->name() != "MoeExperts") return;  // per-expert Linears need no remap
  Module* module = w.module;
  const int rank = w.group->rank();
  module->AddPreHook([module, rank](Module&, Module::Tensors& in) {
    // Read at each call: with dp_shard the module is built on meta with the
    // global shapes and holds the rank's experts only once gathered.
    const int64_t local = module->named_parameters(/*recurse=*/false)[0].value().size(0);
    at::Tensor index = in.at(1) - rank * local;
    const at::Tensor mine = index.ge(0).logical_and(index.lt(local));
    in[1] = index.masked_fill(mine.logical_not(), 0);
    in[2] = in[2] * mine.to(in[2].scalar_type());
  });
}

// Inside a region the region's all-reduce communicates; a replicated bias of
// a row-parallel layer is kept by rank 0 only.
void RowParallelInRegion(const WireInput& w) {
  at::Tensor bias = w.bias;
  if (!bias.defined() || w.group->rank() == 0) return;
  w.module->AddPostHook(
      [bias](Module&, const Module::Tensors&, at::Tensor& out) { out = out - bias; });
}
void RowwiseSplitInputInRegion(const WireInput& w) {
  Group group = w.group;
  w.module->AddPreHook(
      [group](Module&, Module::Tensors& in) { in[0] = LocalChunk(in[0], *group, -1); });
  RowParallelInRegion(w);
}

// ---------------------------------------------------------------------------
// The records.

// One function per style: its record, field by field.

StyleRule Colwise() {
  StyleRule r(Style::kColwise, "colwise");
  r.slice = SliceRows;
  r.wire = WireColwise;
  r.backward = "all-reduce(input grad)";
  r.doc = {"",
           "Shard(0)",
           "Shard(0)",
           "Replicate",
           "Shard(-1)",
           "identity in (CopyToGroup)",
           "all-reduce of the input grad"};
  return r;
}

StyleRule Rowwise() {
  StyleRule r(Style::kRowwise, "rowwise");
  r.row_parallel = true;
  r.reduce_scatters_in_sequence_parallel = true;
  r.slice = SliceColumns;
  r.wire = WireRowwise;
  r.wire_in_region = RowParallelInRegion;
  r.forward = "all-reduce(output)";
  r.doc = {"",          "Shard(1)",  "Replicate (added once)",
           "Shard(-1)", "Replicate", "all-reduce of the output (ReduceFromGroup)",
           "identity"};
  return r;
}

StyleRule ColwiseGatherOutput() {
  StyleRule r(Style::kColwiseGatherOutput, "colwise_gather_output");
  r.alias = "colwise_rep";
  r.slice = SliceGatheredRows;
  r.wire = WireColwiseGatherOutput;
  r.forward = "all-gather(output)";
  r.backward = "all-reduce(input grad)";
  r.doc = {"",
           "Shard(0)",
           "Shard(0)",
           "Replicate",
           "Replicate",
           "all-gather of the output on the last dim",
           "split of the grad + all-reduce of the input grad"};
  return r;
}

StyleRule RowwiseSplitInput() {
  StyleRule r(Style::kRowwiseSplitInput, "rowwise_split_input");
  r.alias = "rowwise_rep";
  r.row_parallel = true;
  r.slice = SliceColumns;
  r.wire = WireRowwiseSplitInput;
  r.wire_in_region = RowwiseSplitInputInRegion;
  r.forward = "all-reduce(output)";
  r.backward = "all-gather(input grad)";
  r.doc = {"",
           "Shard(1)",
           "Replicate",
           "Replicate",
           "Replicate",
           "split the input on the last dim, then all-reduce",
           "all-gather of the input grad"};
  return r;
}

StyleRule EmbeddingRowwise() {
  StyleRule r(Style::kEmbeddingRowwise, "embedding_rowwise");
  r.slice = SliceVocab;
  r.wire = WireEmbeddingRowwise;
  r.forward = "all-reduce(output)";
  r.doc = {"",          "Shard(0) (vocab)",
           "—",         "Replicate ids",
           "Replicate", "ids outside the local vocab range masked to 0, rows zeroed, all-reduce",
           "identity"};
  return r;
}

StyleRule EmbeddingColwise() {
  StyleRule r(Style::kEmbeddingColwise, "embedding_colwise");
  r.slice = SliceEmbeddingDim;
  r.wire = WireEmbeddingColwise;
  r.forward = "all-gather(output)";
  r.doc = {"",     "Shard(1)", "—", "Replicate ids", "Replicate", "all-gather on the last dim",
           "split"};
  return r;
}

StyleRule PackedColwise() {
  StyleRule r(Style::kPackedColwise, "packed_colwise");
  r.slice = SlicePackedRows;
  r.wire = WireColwise;
  r.backward = "all-reduce(input grad)";
  r.doc = {"",          "Shard(0) of each packed part", "same",
           "Replicate", "Shard(-1) per part",           "as colwise",
           "as colwise"};
  return r;
}

StyleRule PackedRowwise() {
  StyleRule r(Style::kPackedRowwise, "packed_rowwise");
  r.row_parallel = true;
  r.reduce_scatters_in_sequence_parallel = true;
  r.slice = SlicePackedColumns;
  r.wire = WireRowwise;
  r.wire_in_region = RowParallelInRegion;
  r.forward = "all-reduce(output)";
  r.doc = {"",
           "Shard(1) of each packed part (2 halves of `in`)",
           "Replicate (added once)",
           "Shard(-1) per part (e.g. from packed_colwise layers)",
           "Replicate",
           "all-reduce of the output",
           "identity"};
  return r;
}

StyleRule SequenceParallel() {
  StyleRule r(Style::kSequenceParallel, "sequence_parallel");
  r.grad_allreduce = true;
  r.slice = SliceNorm;
  r.wire = WireSequenceParallelNorm;
  r.forward = "all-gather(output, seq)";
  r.backward = "all-reduce(param grad)";
  r.doc = {"(norms)",
           "Replicate, grad Partial",
           "—",
           "Shard(1) (sequence)",
           "Shard(1) locally, all-gathered on dim 1 for the block",
           "all-gather of the norm output; o_proj/down_proj reduce-scatter onto Shard(1)",
           "split of the norm output grad (consumers all-reduce theirs); all-gather after "
           "reduce-scatter; all-reduce of the norm weights' grads"};
  return r;
}

StyleRule ReplicatedWithGradAllreduce() {
  StyleRule r(Style::kReplicatedWithGradAllreduce, "replicated_with_grad_allreduce");
  r.grad_allreduce = true;
  r.slice = SliceWhole;
  r.backward = "all-reduce(param grad)";
  r.doc = {"",      "Replicate, grad Partial",          "Replicate", "any", "same",
           "local", "all-reduce of the parameter grads"};
  return r;
}

StyleRule AllReduce() {
  StyleRule r(Style::kAllReduce, "all_reduce");
  r.slice = SliceWhole;
  r.wire = WireAllReduce;
  r.forward = "all-reduce(output)";
  r.doc = {"", "—", "—", "Partial", "Replicate", "all-reduce", "identity"};
  return r;
}

StyleRule LocalColwise() {
  StyleRule r(Style::kLocalColwise, "local_colwise");
  r.slice = SliceRows;
  r.doc = {"",
           "as colwise",
           "as colwise",
           "local tensors",
           "local tensors",
           "none (the module or an enclosing `gather` communicates)",
           "none"};
  return r;
}

StyleRule LocalRowwise() {
  StyleRule r(Style::kLocalRowwise, "local_rowwise");
  r.row_parallel = true;
  r.slice = SliceColumns;
  r.wire_in_region = RowParallelInRegion;
  r.doc = {"",
           "as rowwise",
           "as rowwise",
           "local tensors",
           "local tensors",
           "none (the module or an enclosing `gather` communicates)",
           "none"};
  return r;
}

StyleRule Local() {
  StyleRule r(Style::kLocal, "local");
  r.slice = SliceWhole;
  r.doc = {"",
           "Replicate",
           "Replicate",
           "local tensors",
           "local tensors",
           "none (the module or an enclosing `gather` communicates)",
           "none"};
  return r;
}

StyleRule Gather() {
  StyleRule r(Style::kGather, "gather");
  r.names_module = true;
  r.doc = {"(a module)",
           "its layers' own",
           "",
           "Replicate",
           "Replicate (sum of Partial)",
           "all-reduce of the module's output (transformers' GatherParallel: where local_* results "
           "are gathered)",
           "all-reduce of the input grad; replicated parameters inside: grad Partial"};
  return r;
}

StyleRule GroupedGemm() {
  StyleRule r(Style::kGroupedGemm, "grouped_gemm");
  r.region_of = ExpertsBlock;
  r.slice = SliceExperts;
  r.wire_in_region = WireLocalExperts;
  r.doc = {"(experts' weights)",
           "stacked experts Shard(0): rank r holds experts [r·E/tp, (r+1)·E/tp) whole, others' as "
           "empty shards",
           "",
           "Replicate",
           "Partial (local experts only)",
           "all-reduce of the MoE block's output",
           "all-reduce of the block's input grad"};
  return r;
}

StyleRule MoeTpExperts() {
  StyleRule r(Style::kMoeTpExperts, "moe_tp_experts");
  r.names_module = true;
  r.doc = {"(the experts)",
           "experts' w1/w3 Shard(0), w2 Shard(1) (their colwise/rowwise keys)",
           "",
           "Replicate",
           "Replicate",
           "one all-reduce of the MoE block's output (the experts add no collectives)",
           "all-reduce of the block's input grad; router grad Partial"};
  return r;
}

StyleRule EpRouter() {
  StyleRule r(Style::kEpRouter, "ep_router");
  r.grad_allreduce = true;
  r.region_of = RouterBlock;
  r.slice = SliceWhole;
  r.backward = "all-reduce(param grad)";
  r.doc = {"(the router)",
           "Replicate, grad Partial",
           "",
           "Replicate",
           "Replicate",
           "router on every rank; other ranks' experts contribute zero locally",
           "all-reduce of the router's grads"};
  return r;
}

std::vector<StyleRule> MakeRules() {
  return {Colwise(),
          Rowwise(),
          ColwiseGatherOutput(),
          RowwiseSplitInput(),
          EmbeddingRowwise(),
          EmbeddingColwise(),
          PackedColwise(),
          PackedRowwise(),
          SequenceParallel(),
          ReplicatedWithGradAllreduce(),
          AllReduce(),
          LocalColwise(),
          LocalRowwise(),
          Local(),
          Gather(),
          GroupedGemm(),
          MoeTpExperts(),
          EpRouter()};
}

}  // namespace

const std::vector<StyleRule>& StyleRules() {
  static const auto* rules = new std::vector<StyleRule>(MakeRules());
  return *rules;
}

const StyleRule& RuleOf(Style style) {
  for (const StyleRule& rule : StyleRules()) {
    if (rule.style == style) return rule;
  }
  TORCH_CHECK(false, "style ", static_cast<int>(style), " has no record in plans/styles.cc");
}

const char* StyleName(Style style) { return RuleOf(style).name; }

absl::StatusOr<Style> ParseStyle(absl::string_view text) {
  std::vector<std::string> names;
  for (const StyleRule& rule : StyleRules()) {
    if (text == rule.name || (rule.alias != nullptr && text == rule.alias)) return rule.style;
    names.push_back(rule.name);
  }
  for (const StyleRule& rule : StyleRules()) {
    if (rule.alias != nullptr) names.push_back(rule.alias);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown style '", text, "' (expected one of: ", absl::StrJoin(names, ", "), ")"));
}

std::string StyleTableMarkdown() {
  std::string out =
      "| style | weight | bias | input | output | forward | backward |\n"
      "| --- | --- | --- | --- | --- | --- | --- |\n";
  for (const StyleRule& r : StyleRules()) {
    std::string name = absl::StrCat("`", r.name, "`");
    if (r.alias != nullptr) absl::StrAppend(&name, " (`", r.alias, "`)");
    if (r.doc[0][0] != '\0') absl::StrAppend(&name, " ", r.doc[0]);
    absl::StrAppend(&out, "| ", name);
    for (int i = 1; i < 7; ++i) absl::StrAppend(&out, " | ", r.doc[i]);
    absl::StrAppend(&out, " |\n");
  }
  return out;
}

}  // namespace weft
