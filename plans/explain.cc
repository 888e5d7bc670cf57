#include "plans/explain.h"

#include <c10/core/ScalarType.h>

#include <algorithm>
#include <iomanip>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/status.h"
#include "checkpoint/checkpoint_dir.h"
#include "models/layers.h"
#include "plans/engine.h"
#include "plans/shipped_plans.h"
#include "plans/styles.h"

namespace weft {
namespace {

struct Collectives {
  const char* forward;
  const char* backward;
};

// The collectives a parameter's module runs, as its style's record says;
// inside a region (gather, moe_tp_experts, grouped_gemm, ep_router) the
// region's module communicates, once, and only partial gradients are summed.
Collectives Of(const ShardSpec& s) {
  const StyleRule& rule = RuleOf(s.style);
  if (!s.region.empty()) return {"-", rule.grad_allreduce ? "all-reduce(param grad)" : "-"};
  return {rule.forward, rule.backward};
}

std::string Shape(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string Human(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (bytes >= 1024 && u < 3) bytes /= 1024, ++u;
  return absl::StrFormat("%.1f %s", bytes, units[u]);
}

}  // namespace

namespace {

// What the dry run reads: config.json, the checkpoint's headers, the plan,
// and rank 0's shards of a model built on the meta device (no memory).
struct Inputs {
  ModelConfig config;
  at::ScalarType dtype = at::kFloat;
  std::shared_ptr<CausalLM> model;
  std::unique_ptr<Checkpoint> checkpoint;
  std::map<std::string, ShardSpec> shards;
};

absl::StatusOr<Inputs> Read(const ExplainOptions& c) {
  if (c.tp < 1 || c.dp < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tp ", c.tp, " --dp ", c.dp, " (expected both >= 1)"));
  }
  Inputs in;
  ASSIGN_OR_RETURN(in.config, LoadModelConfig(c.model));
  ASSIGN_OR_RETURN(in.dtype, ModelDtype(in.config));
  ModelOptions options;
  options.dtype = in.dtype;
  ASSIGN_OR_RETURN(in.model, CreateCausalLM(in.config, options));
  ASSIGN_OR_RETURN(in.checkpoint, Checkpoint::Open(c.model));  // maps; reads the headers only
  ASSIGN_OR_RETURN(Plan plan, ResolvePlanArgument(c.plan, c.model));
  ASSIGN_OR_RETURN(in.shards, PlanShards(*in.model, plan, c.tp, /*rank=*/0));
  return in;
}

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// One row per sharded parameter, and the totals per rank.
struct Table {
  std::vector<std::vector<std::string>> rows = {
      {"parameter", "style", "global", "local", "bytes/rank", "forward", "backward", "placement"}};
  double full_bytes = 0, local_bytes = 0;
  int forward_collectives = 0, backward_collectives = 0;
};

absl::StatusOr<Table> Tabulate(const ExplainOptions& c, const Inputs& in) {
  Table t;
  std::map<std::string, bool> module_counted;
  const size_t element = c10::elementSize(in.dtype);
  for (const auto& item : in.model->named_parameters()) {
    const std::string& name = item.key();
    if (in.checkpoint->Find(name) == nullptr &&
        !(name == "lm_head.weight" && in.config.tie_word_embeddings)) {
      return absl::InvalidArgumentError(
          absl::StrCat(c.model, ": the checkpoint has no tensor '", name, "'"));
    }
    std::vector<int64_t> global = item.value().sizes().vec();
    t.full_bytes += static_cast<double>(Numel(global)) * element;
    auto it = in.shards.find(name);
    std::vector<int64_t> local = it == in.shards.end() ? global : it->second.local_shape;
    const int64_t local_numel = Numel(local);
    t.local_bytes += static_cast<double>(local_numel) * element;
    if (it == in.shards.end()) continue;
    const ShardSpec& shard = it->second;
    Collectives coll = Of(shard);
    std::string backward = coll.backward;
    if (shard.kv_head >= 0) backward += " + all-reduce(param grad, shared KV head)";
    std::string module = name.substr(0, name.rfind('.'));
    const std::string& region = shard.region;
    if (!region.empty() && !module_counted["region " + region]) {
      module_counted["region " + region] = true;  // all-reduce out, input grad in
      ++t.forward_collectives;
      ++t.backward_collectives;
    }
    if (!module_counted[module]) {
      module_counted[module] = true;
      t.forward_collectives += std::string(coll.forward) != "-";
      t.backward_collectives += std::string(coll.backward) != "-";
    }
    if (shard.kv_head >= 0) ++t.backward_collectives;
    std::string forward = coll.forward;
    if (!region.empty()) forward = absl::StrCat("(", region, ": all-reduce(output))");
    std::string placement =
        shard.dtensor.placements.empty() ? "Replicate()" : shard.dtensor.placements[0].ToString();
    if (shard.dtensor.expert >= 0) {
      absl::StrAppend(&placement, " expert ", shard.dtensor.expert, " on rank ",
                      shard.dtensor.owner);
    }
    t.rows.push_back({name, StyleName(shard.style), Shape(global), Shape(local),
                      absl::StrCat(local_numel * element), forward, backward, placement});
  }
  return t;
}

void Print(const ExplainOptions& c, const Inputs& in, const Table& t, std::ostream& out) {
  std::vector<size_t> width(t.rows[0].size(), 0);
  for (const auto& row : t.rows) {
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  for (const auto& row : t.rows) {
    for (size_t i = 0; i < row.size(); ++i) {
      out << std::left << std::setw(i + 1 < row.size() ? width[i] : 0) << row[i]
          << (i + 1 < row.size() ? "  " : "\n");
    }
  }
  out << "mesh: dp(" << c.dp << ") * tp(" << c.tp << ") = " << c.dp * c.tp << " ranks; "
      << in.config.architecture << ", " << c10::toString(in.dtype) << "\n";
  out << "per rank: parameters " << Human(t.local_bytes) << " of " << Human(t.full_bytes) << " ("
      << absl::StrFormat("%.1f", 100.0 * t.local_bytes / t.full_bytes) << "%); "
      << t.forward_collectives << " collectives per forward, " << t.backward_collectives
      << " per backward";
  if (c.dp > 1) out << ", plus the dp gradient all-reduce of " << Human(t.local_bytes);
  out << "\n";
}

}  // namespace

absl::Status ExplainPlan(const ExplainOptions& options, std::ostream& out) {
  ASSIGN_OR_RETURN(Inputs inputs, Read(options));
  ASSIGN_OR_RETURN(Table table, Tabulate(options, inputs));
  Print(options, inputs, table, out);
  return absl::OkStatus();
}

}  // namespace weft
