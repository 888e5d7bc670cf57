#include "plans/engine.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/slice.h"
#include "base/status.h"
#include "parallel/autograd_collectives.h"

namespace weft {
namespace {

using Shard = ShardSpec;

std::string ModuleOf(const std::string& param) {
  size_t dot = param.rfind('.');
  return dot == std::string::npos ? "" : param.substr(0, dot);
}
std::string LocalName(const std::string& param) { return param.substr(param.rfind('.') + 1); }
bool Under(const std::string& name, const std::string& module) {
  return absl::StartsWith(name, module + ".");
}
bool IsNumber(absl::string_view s) {
  return !s.empty() &&
         std::all_of(s.begin(), s.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
}

absl::Status NotDivisible(const std::string& param, int dim, int64_t size, int tp) {
  return absl::InvalidArgumentError(absl::StrCat("module ", ModuleOf(param), " parameter ",
                                                 LocalName(param), " dim ", dim, " has size ", size,
                                                 ", not divisible by tp ", tp));
}

// Modules whose rows or columns are attention heads: their shards must hold
// whole heads, so these dims must divide by tp.
bool HasHeads(const std::string& module) {
  for (const char* suffix : {"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj"}) {
    if (absl::EndsWith(module, suffix)) return true;
  }
  return false;
}

// torch.chunk of [begin, begin + size) into `tp` parts: part `rank`.
std::vector<Range> ChunkPart(int64_t begin, int64_t size, int tp, int rank) {
  ChunkSpan span = ChunkOf(size, tp, rank);
  return {{begin + span.offset, begin + span.offset + span.length}};
}

// Expert parallelism: "...experts.<e>..." -> the experts list and e.
bool ExpertOf(const std::string& name, std::string* list, int64_t* expert) {
  std::vector<std::string> parts = absl::StrSplit(name, '.');
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    if (parts[i] == "experts" && IsNumber(parts[i + 1])) {
      *list = absl::StrJoin(parts.begin(), parts.begin() + i + 1, ".");
      *expert = static_cast<int64_t>(std::stoll(parts[i + 1]));
      return true;
    }
  }
  return false;
}

absl::StatusOr<Shard> PlanShard(const std::string& name, const std::vector<int64_t>& shape,
                                const ResolvedStyle& resolved, const ModelConfig& c, int tp,
                                int rank, const std::map<std::string, int64_t>& expert_counts) {
  Shard shard{resolved.style, resolved.key, {}, {}};
  const std::string module = ModuleOf(name);
  const bool is_weight = LocalName(name) == "weight";
  const int64_t d = c.head_dim;
  switch (resolved.style) {
    case Style::kColwise:
    case Style::kLocalColwise:
    case Style::kColwiseGatherOutput: {
      const int64_t rows = shape[0];
      const bool kv = absl::EndsWith(module, "k_proj") || absl::EndsWith(module, "v_proj");
      if (kv && c.num_key_value_heads < tp && rows == c.num_key_value_heads * d) {
        if (tp % c.num_key_value_heads != 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              "tp ", tp, " is larger than num_key_value_heads ", c.num_key_value_heads,
              " and not a multiple of it (expected tp to divide or be a multiple of it)"));
        }
        // Rank r's query heads use KV head r / (tp / kv_heads): replicate it.
        shard.kv_heads = c.num_key_value_heads;
        shard.kv_head = rank / (tp / c.num_key_value_heads);
        shard.slice.push_back({{shard.kv_head * d, (shard.kv_head + 1) * d}});
      } else {
        if (HasHeads(module) && rows % tp != 0) return NotDivisible(name, 0, rows, tp);
        shard.slice.push_back(ChunkPart(0, rows, tp, rank));
      }
      if (is_weight) shard.slice.push_back({});
      return shard;
    }
    case Style::kPackedColwise:
    case Style::kPackedRowwise: {
      const bool rowwise = resolved.style == Style::kPackedRowwise;
      if (rowwise && !is_weight) return shard;  // bias: replicated, added once
      const int dim = rowwise ? 1 : 0;
      if (static_cast<int>(shape.size()) <= dim) {
        return absl::InvalidArgumentError(
            absl::StrCat("module ", module, " parameter ", LocalName(name), " has ", shape.size(),
                         " dims (expected a Linear weight [out, in])"));
      }
      std::vector<int64_t> parts;
      if (!rowwise && absl::EndsWith(module, "qkv_proj")) {
        parts = {c.num_attention_heads * d, c.num_key_value_heads * d, c.num_key_value_heads * d};
        if (c.num_key_value_heads % tp != 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              "module ", module, ": num_key_value_heads ", c.num_key_value_heads,
              " is not divisible by tp ", tp, " (packed q | k | v cannot replicate KV heads)"));
        }
      } else {
        if (shape[dim] % 2 != 0) return NotDivisible(name, dim, shape[dim], 2);
        parts = {shape[dim] / 2, shape[dim] / 2};
      }
      std::vector<Range> ranges;
      int64_t begin = 0;
      for (int64_t part : parts) {
        if (part % tp != 0) return NotDivisible(name, dim, part, tp);
        ranges.push_back(ChunkPart(begin, part, tp, rank)[0]);
        begin += part;
      }
      if (rowwise) {
        shard.slice = {{}, ranges};
      } else {
        shard.slice.push_back(ranges);
        if (is_weight) shard.slice.push_back({});
      }
      return shard;
    }
    case Style::kEmbeddingRowwise:  // vocab-parallel: rows of the table
      shard.slice = {ChunkPart(0, shape[0], tp, rank), {}};
      return shard;
    case Style::kEmbeddingColwise:  // the embedding dim
      shard.slice = {{}, ChunkPart(0, shape[1], tp, rank)};
      return shard;
    case Style::kRowwise:
    case Style::kRowwiseSplitInput:
    case Style::kLocalRowwise:
      if (!is_weight) return shard;  // bias: replicated, added once (see hooks)
      if (HasHeads(module) && shape[1] % tp != 0) return NotDivisible(name, 1, shape[1], tp);
      shard.slice = {{}, ChunkPart(0, shape[1], tp, rank)};
      return shard;
    case Style::kSequenceParallel:
      if (shape.size() != 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            "module ", module, " parameter ", LocalName(name), " has shape [",
            absl::StrJoin(shape, ", "), "] (sequence_parallel expects a norm's 1-D weight)"));
      }
      return shard;
    case Style::kGroupedGemm: {
      std::string list;
      int64_t expert = 0;
      if (!ExpertOf(name, &list, &expert) || shape.size() > 2) {
        return absl::InvalidArgumentError(
            absl::StrCat("module ", module, " parameter ", LocalName(name),
                         ": grouped_gemm expects an expert's Linear (a name with experts.<e>)"));
      }
      const int64_t experts = expert_counts.at(list);
      if (experts % tp != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("module ", list, " has ", experts, " experts, not divisible by tp ", tp));
      }
      const int64_t per_rank = experts / tp;
      shard.dtensor.expert = expert;
      shard.dtensor.owner = static_cast<int>(expert / per_rank);
      if (shard.dtensor.owner == rank) return shard;  // the whole expert
      // Other ranks' experts become empty on the intermediate dim, so the
      // expert computes zeros: input projections ([I, H]) lose their rows,
      // the output projection ([H, I]) its columns.
      const int64_t h = c.hidden_size;
      const std::vector<int64_t>& w = shape.size() == 2 ? shape : std::vector<int64_t>{shape[0], 0};
      bool output_projection = w[0] == h && w[1] != h;
      if (w[0] == h && w[1] == h) {
        output_projection = absl::EndsWith(module, "w2") || absl::EndsWith(module, "down_proj");
      }
      if (output_projection && !is_weight) {
        return absl::InvalidArgumentError(absl::StrCat(
            "module ", module, " parameter ", LocalName(name),
            ": grouped_gemm does not support a bias on an expert's output projection"));
      }
      if (output_projection) {
        shard.slice = {{}, {{0, 0}}};
      } else {
        shard.slice.push_back({{0, 0}});
        if (is_weight) shard.slice.push_back({});
      }
      return shard;
    }
    case Style::kEpRouter:
    case Style::kReplicatedWithGradAllreduce:
    case Style::kAllReduce:
    case Style::kLocal:
      return shard;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("plan key '", resolved.key, "': style ", StyleName(resolved.style),
                       " names a module (a region), not parameter ", name));
  }
}

// Styles that name a module rather than its parameters.
bool IsRegionStyle(Style s) { return s == Style::kGather || s == Style::kMoeTpExperts; }

bool GradIsPartial(const Shard& s) {
  return s.style == Style::kReplicatedWithGradAllreduce || s.style == Style::kSequenceParallel ||
         s.style == Style::kEpRouter || s.kv_head >= 0;
}

void FillDTensor(Shard& s, int n, int rank) {
  DTensorSpec& t = s.dtensor;
  t.mesh_size = n;
  t.mesh_rank = rank;
  t.global_shape = s.global_shape;
  t.local_shape = s.local_shape;
  t.ranges = s.slice;
  t.ranges.resize(s.global_shape.size());
  t.offsets.assign(s.global_shape.size(), 0);
  Placement p = Placement::Replicate();
  for (size_t d = 0; d < t.ranges.size(); ++d) {
    if (t.ranges[d].empty()) continue;
    t.offsets[d] = t.ranges[d][0].start;
    if (p.kind == Placement::Kind::kReplicate) p = Placement::Shard(static_cast<int64_t>(d));
  }
  if (s.style == Style::kGroupedGemm) p = Placement::Shard(0);  // of the stacked experts
  t.placements = {p};
  t.grad = GradIsPartial(s) ? Placement::Partial() : p;
}

struct PlacementRecord {
  std::weak_ptr<torch::nn::Module> owner;
  bool owned = false;
  std::map<std::string, DTensorSpec> specs;
};
std::mutex& RegistryMutex() {
  static auto* mu = new std::mutex;
  return *mu;
}
std::map<const CausalLM*, PlacementRecord>& Registry() {
  static auto* registry = new std::map<const CausalLM*, PlacementRecord>;
  return *registry;
}

}  // namespace

std::string Placement::ToString() const {
  switch (kind) {
    case Kind::kShard:
      return absl::StrCat("Shard(", dim, ")");
    case Kind::kPartial:
      return "Partial(sum)";
    default:
      return "Replicate()";
  }
}

std::string DTensorSpec::ToString() const {
  std::vector<std::string> p;
  for (const Placement& x : placements) p.push_back(x.ToString());
  std::string out =
      absl::StrCat(absl::StrJoin(p, ", "), " [", absl::StrJoin(global_shape, ", "), "] -> [",
                   absl::StrJoin(local_shape, ", "), "] at [", absl::StrJoin(offsets, ", "), "]");
  if (expert >= 0) absl::StrAppend(&out, " expert ", expert, " on rank ", owner);
  if (grad == Placement::Partial()) absl::StrAppend(&out, ", grad summed");
  return out;
}

const DTensorSpec* ParameterPlacement(const CausalLM& model, const std::string& name) {
  std::lock_guard<std::mutex> lock(RegistryMutex());
  auto it = Registry().find(&model);
  if (it == Registry().end()) return nullptr;
  if (it->second.owned && it->second.owner.expired()) {
    Registry().erase(it);
    return nullptr;
  }
  auto spec = it->second.specs.find(name);
  return spec == it->second.specs.end() ? nullptr : &spec->second;
}

absl::StatusOr<std::map<std::string, ShardSpec>> PlanShards(CausalLM& model, const Plan& plan,
                                                            int n, int rank,
                                                            const ResolveOptions& resolve) {
  const ModelConfig& c = model.config;
  std::vector<std::string> names;
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& item : model.named_parameters()) {
    names.push_back(item.key());
    shapes[item.key()] = item.value().sizes().vec();
  }
  std::set<std::string> weft_modules;
  for (auto& [name, module] : NamedWeftModules(model)) weft_modules.insert(name);
  std::vector<std::string> all_modules;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    all_modules.push_back(item.key());
  }
  // Region styles (gather, moe_tp_experts) name modules; `local` may name a
  // module without parameters of its own (a marker: it adds nothing).
  Plan param_plan;
  std::vector<std::pair<const PlanEntry*, std::string>> regions;  // entry, hooked module
  for (const PlanEntry& e : plan.tp) {
    auto matches_param = [&] {
      for (const std::string& p : names) {
        if (MatchPattern(e.pattern, p) || MatchPattern(e.pattern, ModuleOf(p))) return true;
      }
      return false;
    };
    if (!IsRegionStyle(e.style) && (e.style != Style::kLocal || matches_param())) {
      param_plan.tp.push_back(e);
      continue;
    }
    bool used = false;
    for (const std::string& m : all_modules) {
      if (!MatchPattern(e.pattern, m)) continue;
      used = true;
      if (!IsRegionStyle(e.style)) continue;
      // moe_tp_experts names the experts list; its MoE block combines them.
      std::string hooked = weft_modules.count(m) ? m : ModuleOf(m);
      if (!weft_modules.count(hooked)) {
        return absl::InvalidArgumentError(absl::StrCat("plan key '", e.pattern, "' (",
                                                       StyleName(e.style), "): module ", m,
                                                       " has no weft module to hook"));
      }
      regions.push_back({&e, hooked});
    }
    if (!used && !resolve.allow_unmatched) {
      return absl::InvalidArgumentError(
          absl::StrCat("plan key '", e.pattern, "' (", StyleName(e.style),
                       ") matches no module or parameter of the model"));
    }
  }
  ASSIGN_OR_RETURN(auto styles, ResolvePlan(param_plan, names, resolve));
  bool heads_sharded = false;
  for (const auto& [name, style] : styles) heads_sharded |= HasHeads(ModuleOf(name));
  if (heads_sharded && c.num_attention_heads % n != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_attention_heads ", c.num_attention_heads, " is not divisible by tp ", n));
  }
  if (c.tie_word_embeddings && styles.count("lm_head.weight")) {
    return absl::UnimplementedError(
        "tie_word_embeddings with a sharded lm_head is not supported yet (remove lm_head from "
        "the plan)");
  }
  std::map<std::string, int64_t> expert_counts;  // experts list -> number of experts
  for (const std::string& name : names) {
    std::string list;
    int64_t e = 0;
    if (ExpertOf(name, &list, &e)) expert_counts[list] = std::max(expert_counts[list], e + 1);
  }
  std::map<std::string, ShardSpec> shards;
  for (const auto& [name, style] : styles) {
    ASSIGN_OR_RETURN(Shard shard, PlanShard(name, shapes[name], style, c, n, rank, expert_counts));
    shard.global_shape = shapes[name];
    shard.local_shape = shapes[name];
    for (size_t d = 0; d < shard.slice.size(); ++d) {
      if (shard.slice[d].empty()) continue;
      int64_t length = 0;
      for (const Range& r : shard.slice[d]) length += r.end - r.start;
      shard.local_shape[d] = length;
    }
    if (style.style == Style::kGroupedGemm) {
      std::string list;
      int64_t e = 0;
      ExpertOf(name, &list, &e);
      regions.push_back({nullptr, ModuleOf(list)});  // the MoE block
    } else if (style.style == Style::kEpRouter) {
      regions.push_back({nullptr, ModuleOf(ModuleOf(name))});
    }
    shards.emplace(name, std::move(shard));
  }
  // Regions: the hooked module's output is all-reduced; its replicated
  // parameters (a router) get partial gradients, summed over tp.
  for (const auto& [entry, hooked] : regions) {
    bool sharded_inside = false;
    for (const auto& [name, shard] : shards) sharded_inside |= Under(name, hooked);
    if (entry != nullptr && !sharded_inside) {
      return absl::InvalidArgumentError(
          absl::StrCat("plan key '", entry->pattern, "' (", StyleName(entry->style), "): module ",
                       hooked, " holds no sharded parameter (expected sharded layers inside it)"));
    }
  }
  for (const auto& [entry, hooked] : regions) {
    for (const std::string& name : names) {
      if (!Under(name, hooked)) continue;
      auto it = shards.find(name);
      if (it == shards.end()) {
        Shard implied{Style::kReplicatedWithGradAllreduce,
                      entry ? entry->pattern : hooked,
                      {},
                      shapes[name],
                      shapes[name]};
        it = shards.emplace(name, std::move(implied)).first;
      }
      if (!it->second.region.empty() && it->second.region != hooked) {
        return absl::InvalidArgumentError(absl::StrCat("parameter ", name, " is in two regions, ",
                                                       it->second.region, " and ", hooked,
                                                       " (expected one)"));
      }
      it->second.region = hooked;
    }
  }
  for (auto& [name, shard] : shards) FillDTensor(shard, n, rank);
  return shards;
}

at::Tensor VocabParallelCausalLMLoss(const at::Tensor& logits, const at::Tensor& labels,
                                     const ProcessGroup& group) {
  const int64_t t = logits.size(1), v_local = logits.size(2);
  const int64_t start = group.rank() * v_local;
  at::Tensor x = logits.narrow(1, 0, t - 1).to(at::kFloat).reshape({-1, v_local});
  at::Tensor target = labels.narrow(1, 1, t - 1).reshape({-1}).to(x.device());
  at::Tensor counted = target != -100;
  // Global max for stability (a constant for autograd).
  at::Tensor max = std::get<0>(x.detach().max(-1));
  group.AllReduce(max, ReduceOp::kMax);
  at::Tensor shifted = x - max.unsqueeze(-1);
  at::Tensor sum_exp = ReduceFromGroup(shifted.exp().sum(-1), group);
  // The target's logit lives on one rank; the others contribute 0.
  at::Tensor local = target - start;
  at::Tensor mine = (local >= 0).logical_and(local < v_local).logical_and(counted);
  at::Tensor picked = shifted.gather(1, local.clamp(0, v_local - 1).unsqueeze(1)).squeeze(1);
  at::Tensor target_logit = ReduceFromGroup(picked * mine.to(picked.scalar_type()), group);
  at::Tensor per_token = (sum_exp.log() - target_logit) * counted.to(at::kFloat);
  return per_token.sum() / counted.sum().clamp_min(1);
}

absl::StatusOr<std::shared_ptr<CausalLM>> FromPretrainedTensorParallel(
    const std::string& dir, const PretrainedOptions& options, const Plan& plan,
    const ProcessGroup& tp, const TensorParallelOptions& tp_options) {
  const int n = tp.size(), rank = tp.rank();
  std::map<std::string, Shard> shards;
  LoadHooks hooks;
  hooks.before_load = [&](CausalLM& model) -> absl::Status {
    ASSIGN_OR_RETURN(shards, PlanShards(model, plan, n, rank, tp_options.resolve));
    return absl::OkStatus();
  };
  hooks.slice_of = [&](const std::string& name) {
    auto it = shards.find(name);
    return it == shards.end() ? Slice{} : it->second.slice;
  };
  ASSIGN_OR_RETURN(std::shared_ptr<CausalLM> model, FromPretrained(dir, options, hooks));
  RETURN_IF_ERROR(ApplyTensorParallel(*model, shards, tp, tp_options));
  return model;
}

absl::Status ApplyTensorParallel(CausalLM& model_ref,
                                 const std::map<std::string, ShardSpec>& shards,
                                 const ProcessGroup& tp, const TensorParallelOptions& tp_options) {
  CausalLM* model = &model_ref;
  const int n = tp.size(), rank = tp.rank();
  for (const auto& [name, shard] : shards) {
    at::Tensor* p = model->named_parameters().find(name);
    if (p == nullptr)
      return absl::NotFoundError(absl::StrCat("the model has no parameter '", name, "'"));
    if (p->sizes().vec() != shard.local_shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          "parameter '", name, "' has shape [", absl::StrJoin(p->sizes(), ", "),
          "] but its shard for rank ", rank, " is [", absl::StrJoin(shard.local_shape, ", "), "]"));
    }
  }
  std::map<std::string, Module*> modules;
  for (auto& [name, module] : NamedWeftModules(*model)) modules[name] = module;
  struct Wiring {
    Style style;
    bool bias = false;
    std::string region;
  };
  std::map<std::string, Wiring> wired;  // module -> its style
  std::set<std::string> regions;
  for (const auto& [name, shard] : shards) {
    Wiring& w = wired[ModuleOf(name)];
    w.style = shard.style;
    w.bias = w.bias || LocalName(name) == "bias";
    w.region = shard.region;
    if (!shard.region.empty()) regions.insert(shard.region);
  }
  const ProcessGroup* group = &tp;
  if (tp_options.loss_parallel) {
    auto head = wired.find("lm_head");
    if (head == wired.end() || (head->second.style != Style::kColwise &&
                                head->second.style != Style::kColwiseGatherOutput)) {
      return absl::InvalidArgumentError(
          "loss_parallel needs lm_head in the plan as colwise or colwise_gather_output");
    }
    const int64_t vocab = shards.at("lm_head.weight").global_shape[0];
    if (vocab % n != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("loss_parallel needs lm_head's vocab ", vocab, " divisible by tp ", n,
                       " (uneven vocab shards are supported without loss_parallel)"));
    }
    head->second.style = Style::kColwise;  // keep the logits sharded
    model->loss_function = [group](const at::Tensor& logits, const at::Tensor& labels) {
      return VocabParallelCausalLMLoss(logits, labels, *group);
    };
  }

  // Sequence parallelism: the decoder layers holding sequence_parallel norms
  // carry their residual stream as Shard(1). Entering the first such layer
  // scatters it; leaving the last gathers it (unless a sequence-parallel
  // final norm takes the shards). Each norm runs on its shard and all-gathers
  // its output; the row-parallel layer that ends a block reduce-scatters
  // instead of all-reducing, and any other block output is split.
  std::set<std::string> sp_norms;
  for (const auto& [module, w] : wired) {
    if (w.style == Style::kSequenceParallel) sp_norms.insert(module);
  }
  std::map<std::string, std::set<int64_t>> sp_layers;  // layer list -> indices
  std::vector<std::string> final_norms;
  for (const std::string& norm : sp_norms) {
    const std::string parent = ModuleOf(norm);
    if (IsNumber(LocalName(parent)) && parent.find('.') != std::string::npos) {
      sp_layers[ModuleOf(parent)].insert(static_cast<int64_t>(std::stoll(LocalName(parent))));
    } else {
      final_norms.push_back(norm);
    }
  }
  std::map<std::string, std::shared_ptr<at::Tensor>> sp_rowwise;  // module -> block's slot
  std::vector<std::pair<std::string, std::shared_ptr<at::Tensor>>> sp_blocks;
  std::set<std::string> final_norm_parents;
  for (const std::string& norm : final_norms) final_norm_parents.insert(ModuleOf(norm));
  for (const auto& [list, indices] : sp_layers) {
    int64_t layers = 0;
    for (const auto& [name, m] : modules) {
      if (ModuleOf(name) == list && IsNumber(LocalName(name))) {
        layers = std::max(layers, static_cast<int64_t>(std::stoll(LocalName(name))) + 1);
      }
    }
    const bool final_norm_takes_shards = final_norm_parents.count(ModuleOf(list)) > 0;
    for (int64_t i : indices) {
      const std::string layer = absl::StrCat(list, ".", i);
      Module* m = modules.at(layer);
      if (!indices.count(i - 1)) {
        m->AddPreHook(
            [group](Module&, Module::Tensors& in) { in[0] = ScatterToGroup(in[0], *group, 1); });
      }
      if (!indices.count(i + 1) && !(i == layers - 1 && final_norm_takes_shards)) {
        m->AddPostHook([group](Module&, const Module::Tensors&, at::Tensor& out) {
          out = GatherFromGroup(out, *group, 1);
        });
      }
      // The layer's blocks (children with parameters, norms aside) add to
      // the residual stream: their outputs must be sequence shards.
      for (const auto& [name, child] : modules) {
        if (ModuleOf(name) != layer || sp_norms.count(name)) continue;
        if (child->parameters().empty()) continue;
        auto slot = std::make_shared<at::Tensor>();
        sp_blocks.push_back({name, slot});
        for (const auto& [inner, w] : wired) {
          if (ModuleOf(inner) == name && w.region.empty() &&
              (w.style == Style::kRowwise || w.style == Style::kPackedRowwise)) {
            sp_rowwise[inner] = slot;
          }
        }
      }
    }
    if (indices.count(layers - 1) == 0 && final_norm_takes_shards) {
      for (const std::string& norm : final_norms) {
        if (ModuleOf(norm) != ModuleOf(list)) continue;
        modules.at(norm)->AddPreHook(
            [group](Module&, Module::Tensors& in) { in[0] = ScatterToGroup(in[0], *group, 1); });
      }
    }
  }
  for (const std::string& norm : final_norms) {
    bool fed_by_layers = false;
    for (const auto& [list, indices] : sp_layers) fed_by_layers |= ModuleOf(list) == ModuleOf(norm);
    if (!fed_by_layers) {
      modules.at(norm)->AddPreHook(
          [group](Module&, Module::Tensors& in) { in[0] = ScatterToGroup(in[0], *group, 1); });
    }
  }

  // Regions: one all-reduce of the hooked module's output; the input's
  // gradient is summed (each rank's share of it is partial).
  for (const std::string& region : regions) {
    Module* m = modules.at(region);
    m->AddPreHook([group](Module&, Module::Tensors& in) { in[0] = CopyToGroup(in[0], *group); });
    m->AddPostHook([group](Module&, const Module::Tensors&, at::Tensor& out) {
      out = ReduceFromGroup(out, *group);
    });
  }

  for (const auto& [module_name, w] : wired) {
    Module* m = modules.at(module_name);
    const Style style = w.style;
    at::Tensor bias = w.bias ? m->named_parameters(false)["bias"] : at::Tensor();
    if (!w.region.empty()) {
      // Inside a region the region's all-reduce communicates; a replicated
      // bias of a row-parallel layer is kept by rank 0 only.
      const bool rowwise = style == Style::kRowwise || style == Style::kPackedRowwise ||
                           style == Style::kLocalRowwise || style == Style::kRowwiseSplitInput;
      if (style == Style::kRowwiseSplitInput) {
        m->AddPreHook(
            [group](Module&, Module::Tensors& in) { in[0] = LocalChunk(in[0], *group, -1); });
      }
      if (rowwise && bias.defined() && rank != 0) {
        m->AddPostHook(
            [bias](Module&, const Module::Tensors&, at::Tensor& out) { out = out - bias; });
      }
      continue;
    }
    if (style == Style::kColwise || style == Style::kPackedColwise ||
        style == Style::kColwiseGatherOutput) {
      m->AddPreHook([group](Module&, Module::Tensors& in) { in[0] = CopyToGroup(in[0], *group); });
    }
    if (style == Style::kColwiseGatherOutput) {
      m->AddPostHook([group](Module&, const Module::Tensors&, at::Tensor& out) {
        out = GatherFromGroup(out, *group, -1);
      });
    }
    if (style == Style::kRowwiseSplitInput) {
      m->AddPreHook(
          [group](Module&, Module::Tensors& in) { in[0] = ScatterToGroup(in[0], *group, -1); });
    }
    if (style == Style::kRowwise || style == Style::kRowwiseSplitInput ||
        style == Style::kPackedRowwise) {
      auto slot = sp_rowwise.count(module_name) ? sp_rowwise.at(module_name) : nullptr;
      m->AddPostHook([group, bias, slot](Module&, const Module::Tensors&, at::Tensor& out) {
        // Every rank added the bias to its partial sum: take it out before
        // the reduction and add it once after.
        at::Tensor partial = bias.defined() ? out - bias : out;
        at::Tensor reduced =
            slot ? ReduceScatterToGroup(partial, *group, 1) : ReduceFromGroup(partial, *group);
        out = bias.defined() ? reduced + bias : reduced;
        if (slot) *slot = out;
      });
    }
    if (style == Style::kSequenceParallel) {
      m->AddPostHook([group](Module&, const Module::Tensors&, at::Tensor& out) {
        out = GatherFromGroup(out, *group, 1);
      });
    }
    if (style == Style::kAllReduce) {
      m->AddPostHook([group](Module&, const Module::Tensors&, at::Tensor& out) {
        out = ReduceFromGroup(out, *group);
      });
    }
    if (style == Style::kEmbeddingColwise) {
      m->AddPostHook([group](Module&, const Module::Tensors&, at::Tensor& out) {
        out = GatherFromGroup(out, *group, -1);
      });
    }
    if (style == Style::kEmbeddingRowwise) {
      // Ids outside this rank's vocab rows look up row 0, their rows are
      // zeroed, and the all-reduce adds the one rank that owns each id.
      const Shard& shard = shards.at(module_name + ".weight");
      const int64_t start = shard.slice[0][0].start, rows = shard.slice[0][0].end - start;
      auto outside = std::make_shared<at::Tensor>();
      m->AddPreHook([start, rows, outside](Module&, Module::Tensors& in) {
        at::Tensor local = in[0] - start;
        *outside = (local < 0).logical_or(local >= rows);
        in[0] = local.masked_fill(*outside, 0);
      });
      m->AddPostHook([group, outside](Module&, const Module::Tensors&, at::Tensor& out) {
        out = ReduceFromGroup(out.masked_fill(outside->unsqueeze(-1), 0), *group);
        outside->reset();
      });
    }
  }
  // Blocks of sequence-parallel layers: after their own hooks (a region's
  // all-reduce included), hand the residual stream its sequence shard.
  for (const auto& [block, slot] : sp_blocks) {
    modules.at(block)->AddPostHook(
        [group, slot, block](Module&, const Module::Tensors&, at::Tensor& out) {
          const bool scattered = slot->defined() && out.is_same(*slot);
          TORCH_CHECK(scattered || !slot->defined(), "sequence_parallel: ", block,
                      " does not return the reduce-scattered output of its row-parallel layer");
          if (!scattered) out = ScatterToGroup(out, *group, 1);
          slot->reset();
        });
  }
  // Gradients that must be summed over tp: replicated parameters used on
  // sharded activations or inside a region, and KV heads replicated over
  // several ranks.
  for (auto& item : model->named_parameters()) {
    auto it = shards.find(item.key());
    if (it == shards.end()) continue;
    const Shard& shard = it->second;
    const bool region_bias =
        !shard.region.empty() && LocalName(item.key()) == "bias" &&
        (shard.style == Style::kRowwise || shard.style == Style::kLocalRowwise ||
         shard.style == Style::kPackedRowwise || shard.style == Style::kRowwiseSplitInput);
    if (shard.style == Style::kReplicatedWithGradAllreduce ||
        shard.style == Style::kSequenceParallel || shard.style == Style::kEpRouter || region_bias) {
      item.value().register_hook([group](at::Tensor grad) {
        at::Tensor sum = grad.clone();
        group->AllReduce(sum);
        return sum;
      });
    } else if (shard.kv_head >= 0) {
      const int64_t head = shard.kv_head, heads = shard.kv_heads;
      item.value().register_hook([group, head, heads](at::Tensor grad) {
        // Each rank's grad covers only its query heads' use of the KV head:
        // sum over the ranks sharing it (slots of a [heads, ...] buffer).
        std::vector<int64_t> shape = grad.sizes().vec();
        shape.insert(shape.begin(), heads);
        at::Tensor buffer = at::zeros(shape, grad.options());
        buffer[head].copy_(grad);
        group->AllReduce(buffer);
        return buffer[head].clone();
      });
    }
  }
  // Record the placements for ParameterPlacement.
  PlacementRecord record;
  record.owner = model->weak_from_this();
  record.owned = !record.owner.expired();
  for (const auto& [name, shard] : shards) {
    DTensorSpec spec = shard.dtensor;
    spec.mesh_axis = tp.name();
    spec.mesh_size = n;
    spec.mesh_rank = rank;
    if (spec.global_shape.empty()) spec.global_shape = shard.global_shape;
    if (spec.local_shape.empty()) spec.local_shape = shard.local_shape;
    record.specs.emplace(name, std::move(spec));
  }
  std::lock_guard<std::mutex> lock(RegistryMutex());
  Registry()[model] = std::move(record);
  return absl::OkStatus();
}

}  // namespace weft
