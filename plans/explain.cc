#include "plans/explain.h"

#include <c10/core/ScalarType.h>

#include <algorithm>
#include <iomanip>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
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

absl::Status ExplainPlan(const ExplainOptions& c, std::ostream& out) {
  {
    if (c.tp < 1 || c.dp < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tp ", c.tp, " --dp ", c.dp, " (expected both >= 1)"));
    }
    auto config = LoadModelConfig(c.model);
    if (!config.ok()) return config.status();
    ModelOptions options;
    auto dtype = ModelDtype(*config);
    if (!dtype.ok()) return dtype.status();
    options.dtype = *dtype;
    auto model = CreateCausalLM(*config, options);  // meta device: no memory
    if (!model.ok()) return model.status();
    auto ckpt = Checkpoint::Open(c.model);  // maps the files; reads the headers only
    if (!ckpt.ok()) return ckpt.status();
    auto plan = ResolvePlanArgument(c.plan, c.model);
    if (!plan.ok()) return plan.status();
    auto shards = PlanShards(**model, *plan, c.tp, /*rank=*/0);
    if (!shards.ok()) return shards.status();

    std::vector<std::vector<std::string>> rows = {{"parameter", "style", "global", "local",
                                                   "bytes/rank", "forward", "backward",
                                                   "placement"}};
    double full_bytes = 0, local_bytes = 0;
    int forward_collectives = 0, backward_collectives = 0;
    std::map<std::string, bool> module_counted;
    const size_t element = c10::elementSize(options.dtype);
    for (const auto& item : (*model)->named_parameters()) {
      const std::string& name = item.key();
      if ((*ckpt)->Find(name) == nullptr &&
          !(name == "lm_head.weight" && config->tie_word_embeddings)) {
        return absl::InvalidArgumentError(
            absl::StrCat(c.model, ": the checkpoint has no tensor '", name, "'"));
      }
      std::vector<int64_t> global = item.value().sizes().vec();
      int64_t numel = 1;
      for (int64_t d : global) numel *= d;
      full_bytes += static_cast<double>(numel) * element;
      auto it = shards->find(name);
      std::vector<int64_t> local = it == shards->end() ? global : it->second.local_shape;
      int64_t local_numel = 1;
      for (int64_t d : local) local_numel *= d;
      local_bytes += static_cast<double>(local_numel) * element;
      if (it == shards->end()) continue;
      Collectives coll = Of(it->second);
      std::string backward = coll.backward;
      if (it->second.kv_head >= 0) backward += " + all-reduce(param grad, shared KV head)";
      std::string module = name.substr(0, name.rfind('.'));
      const std::string& region = it->second.region;
      if (!region.empty() && !module_counted["region " + region]) {
        module_counted["region " + region] = true;  // all-reduce out, input grad in
        ++forward_collectives;
        ++backward_collectives;
      }
      if (!module_counted[module]) {
        module_counted[module] = true;
        forward_collectives += std::string(coll.forward) != "-";
        backward_collectives += std::string(coll.backward) != "-";
      }
      if (it->second.kv_head >= 0) ++backward_collectives;
      std::string forward = coll.forward;
      if (!region.empty()) forward = absl::StrCat("(", region, ": all-reduce(output))");
      std::string placement = it->second.dtensor.placements.empty()
                                  ? "Replicate()"
                                  : it->second.dtensor.placements[0].ToString();
      if (it->second.dtensor.expert >= 0) {
        absl::StrAppend(&placement, " expert ", it->second.dtensor.expert, " on rank ",
                        it->second.dtensor.owner);
      }
      rows.push_back({name, StyleName(it->second.style), Shape(global), Shape(local),
                      absl::StrCat(local_numel * element), forward, backward, placement});
    }
    std::vector<size_t> width(rows[0].size(), 0);
    for (const auto& row : rows) {
      for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
    }
    for (const auto& row : rows) {
      for (size_t i = 0; i < row.size(); ++i) {
        out << std::left << std::setw(i + 1 < row.size() ? width[i] : 0) << row[i]
            << (i + 1 < row.size() ? "  " : "\n");
      }
    }
    out << "mesh: dp(" << c.dp << ") * tp(" << c.tp << ") = " << c.dp * c.tp << " ranks; "
        << config->architecture << ", " << c10::toString(options.dtype) << "\n";
    out << "per rank: parameters " << Human(local_bytes) << " of " << Human(full_bytes) << " ("
        << absl::StrFormat("%.1f", 100.0 * local_bytes / full_bytes) << "%); "
        << forward_collectives << " collectives per forward, " << backward_collectives
        << " per backward";
    if (c.dp > 1) out << ", plus the dp gradient all-reduce of " << Human(local_bytes);
    out << "\n";
    return absl::OkStatus();
  }
}

}  // namespace weft
