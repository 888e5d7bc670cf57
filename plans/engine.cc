#include "plans/engine.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/slice.h"
#include "base/status.h"
#include "parallel/autograd_collectives.h"
#include "plans/param_names.h"
#include "plans/styles.h"

namespace weft {
namespace {

using plans_internal::ExpertOf;
using plans_internal::HasHeads;
using plans_internal::IsNumber;
using plans_internal::LocalName;
using plans_internal::ModuleOf;
using plans_internal::Under;
using Group = std::shared_ptr<const ProcessGroup>;

// ===========================================================================
// Planning: which part of each parameter each rank holds.

// The names the plan is resolved against.
struct ModelNames {
  std::vector<std::string> parameters;
  std::map<std::string, std::vector<int64_t>> shapes;
  std::set<std::string> weft_modules;    // modules that can carry hooks
  std::set<std::string> fused_experts;   // MoeExperts modules (transformers 5's layout)
  std::vector<std::string> all_modules;  // every submodule (ModuleLists too)
};

ModelNames NamesOf(CausalLM& model) {
  ModelNames n;
  for (const auto& item : model.named_parameters()) {
    n.parameters.push_back(item.key());
    n.shapes[item.key()] = item.value().sizes().vec();
  }
  for (auto& [name, module] : NamedWeftModules(model)) {
    n.weft_modules.insert(name);
    if (module->name() == "MoeExperts") n.fused_experts.insert(name);
  }
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    n.all_modules.push_back(item.key());
  }
  return n;
}

// A region: the module whose output is all-reduced, and the plan entry that
// named it (nullptr when a parameter style implied it).
using Region = std::pair<const PlanEntry*, std::string>;

// Splits off the entries that name modules (region styles; `local` on a
// module without parameters of its own is a marker and adds nothing).
absl::StatusOr<Plan> ParameterPlan(const Plan& plan, const ModelNames& n,
                                   const ResolveOptions& resolve, std::vector<Region>& regions) {
  Plan param_plan;
  for (const PlanEntry& e : plan.tp) {
    const bool names_module = RuleOf(e.style).names_module;
    auto matches_param = [&] {
      for (const std::string& p : n.parameters) {
        if (MatchPattern(e.pattern, p) || MatchPattern(e.pattern, ModuleOf(p))) return true;
      }
      return false;
    };
    if (!names_module && (e.style != Style::kLocal || matches_param())) {
      param_plan.tp.push_back(e);
      continue;
    }
    bool used = false;
    for (const std::string& m : n.all_modules) {
      if (!MatchPattern(e.pattern, m)) continue;
      used = true;
      if (!names_module) continue;
      // moe_tp_experts names the experts (a list, or fused experts); the MoE
      // block holding them and their router combines them.
      const bool experts = e.style == Style::kMoeTpExperts && n.fused_experts.count(m);
      std::string hooked = n.weft_modules.count(m) && !experts ? m : ModuleOf(m);
      if (!n.weft_modules.count(hooked)) {
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
  return param_plan;
}

// Checks that concern the whole model rather than one parameter.
absl::Status CheckModelWide(const std::map<std::string, ResolvedStyle>& styles,
                            const ModelConfig& c, int tp) {
  bool heads_sharded = false;
  for (const auto& [name, style] : styles) heads_sharded |= HasHeads(ModuleOf(name));
  if (heads_sharded && c.num_attention_heads % tp != 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_attention_heads ", c.num_attention_heads,
                                                   " is not divisible by tp ", tp));
  }
  return absl::OkStatus();
}

// Tied embeddings under TP, as Megatron lays them out: the vocab-parallel
// embedding (embedding_rowwise) and the column-parallel head (colwise or
// colwise_gather_output) hold the same [V/tp, H] rows, so the one tensor
// stays one shard and both uses' gradients add up in it. A plan that shards
// one of the two gets the other's matching style; any other pair is refused.
absl::Status TieEmbeddingShards(std::map<std::string, ResolvedStyle>& styles, const ModelConfig& c,
                                const ModelNames& names) {
  if (!c.tie_word_embeddings) return absl::OkStatus();
  const std::string kHead = "lm_head.weight", kEmbed = "model.embed_tokens.weight";
  auto head = styles.find(kHead), embed = styles.find(kEmbed);
  const bool has_head = head != styles.end(), has_embed = embed != styles.end();
  if (!has_head && !has_embed) return absl::OkStatus();
  for (const std::string& name : {kHead, kEmbed}) {
    if (!names.shapes.count(name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tie_word_embeddings: the model has no parameter ", name,
          " (expected lm_head.weight and model.embed_tokens.weight to share one shard)"));
    }
  }
  auto head_ok = [](Style s) { return s == Style::kColwise || s == Style::kColwiseGatherOutput; };
  if (has_head && !has_embed && head_ok(head->second.style)) {
    styles[kEmbed] = {Style::kEmbeddingRowwise, head->second.key + " (tied)"};
    return absl::OkStatus();
  }
  if (has_embed && !has_head && embed->second.style == Style::kEmbeddingRowwise) {
    styles[kHead] = {Style::kColwiseGatherOutput, embed->second.key + " (tied)"};
    return absl::OkStatus();
  }
  if (has_head && has_embed && head_ok(head->second.style) &&
      embed->second.style == Style::kEmbeddingRowwise) {
    return absl::OkStatus();
  }
  auto describe = [&](const std::string& what, bool has, const ResolvedStyle* style) {
    return has ? absl::StrCat(what, " is ", StyleName(style->style), " (plan key '", style->key,
                              "')")
               : absl::StrCat(what, " is replicated");
  };
  return absl::InvalidArgumentError(absl::StrCat(
      "tie_word_embeddings: ", describe("lm_head", has_head, has_head ? &head->second : nullptr),
      " and ", describe("model.embed_tokens", has_embed, has_embed ? &embed->second : nullptr),
      ", but tied they are one tensor (expected lm_head colwise or colwise_gather_output with "
      "model.embed_tokens embedding_rowwise: one [vocab/tp, hidden] shard)"));
}

// A column-parallel layer's output is sharded on its last dim; the layer
// that consumes it must expect that (row-parallel), and a row-parallel layer
// needs column-parallel producers. Checked per block (attention: q/k/v ->
// o_proj; MLP: gate/up -> down), so an inconsistent plan is named at plan
// time instead of failing in a matmul.
absl::Status CheckProducersMeetConsumers(const std::map<std::string, ResolvedStyle>& styles,
                                         const ModelNames& names) {
  static const std::set<std::string> kProducers = {
      "q_proj", "k_proj", "v_proj", "qkv_proj", "gate_proj", "up_proj", "gate_up_proj", "w1", "w3"};
  static const std::set<std::string> kConsumers = {"o_proj", "down_proj", "w2"};
  auto column_parallel = [](Style s) {
    return s == Style::kColwise || s == Style::kPackedColwise || s == Style::kLocalColwise;
  };
  auto row_parallel = [](Style s) {
    return s == Style::kRowwise || s == Style::kPackedRowwise || s == Style::kLocalRowwise;
  };
  std::map<std::string, std::vector<std::string>> producers, consumers;  // parent -> modules
  for (const std::string& p : names.parameters) {
    if (LocalName(p) != "weight") continue;
    const std::string module = ModuleOf(p);
    const std::string kind = LocalName(module);
    if (kProducers.count(kind)) producers[ModuleOf(module)].push_back(module);
    if (kConsumers.count(kind)) consumers[ModuleOf(module)].push_back(module);
  }
  auto style_of = [&](const std::string& module) -> const ResolvedStyle* {
    auto it = styles.find(module + ".weight");
    return it == styles.end() ? nullptr : &it->second;
  };
  for (const auto& [parent, made] : producers) {
    auto used = consumers.find(parent);
    if (used == consumers.end()) continue;
    for (const std::string& producer : made) {
      const ResolvedStyle* p = style_of(producer);
      if (p == nullptr || !column_parallel(p->style)) continue;
      for (const std::string& consumer : used->second) {
        const ResolvedStyle* c = style_of(consumer);
        if (c != nullptr && row_parallel(c->style)) continue;
        return absl::InvalidArgumentError(
            absl::StrCat("plan key '", p->key, "' makes ", producer, " ", StyleName(p->style),
                         " (its output sharded) but its consumer ", consumer, " is ",
                         c == nullptr ? "replicated" : StyleName(c->style),
                         " (expected rowwise, packed_rowwise or local_rowwise)"));
      }
    }
    for (const std::string& consumer : used->second) {
      const ResolvedStyle* c = style_of(consumer);
      if (c == nullptr || !row_parallel(c->style)) continue;
      for (const std::string& producer : made) {
        const ResolvedStyle* p = style_of(producer);
        if (p != nullptr && column_parallel(p->style)) continue;
        return absl::InvalidArgumentError(
            absl::StrCat("plan key '", c->key, "' makes ", consumer, " ", StyleName(c->style),
                         " (it expects sharded input) but ", producer, " is ",
                         p == nullptr ? "replicated" : StyleName(p->style),
                         " (expected colwise, packed_colwise or local_colwise)"));
      }
    }
  }
  return absl::OkStatus();
}

std::map<std::string, int64_t> ExpertCounts(const std::vector<std::string>& parameters) {
  std::map<std::string, int64_t> counts;  // experts list -> number of experts
  for (const std::string& name : parameters) {
    std::string list;
    int64_t e = 0;
    if (ExpertOf(name, &list, &e)) counts[list] = std::max(counts[list], e + 1);
  }
  return counts;
}

// One parameter's shard: its style's slice rule, then the local shape.
absl::StatusOr<ShardSpec> PlanShard(const SliceInput& input, const ResolvedStyle& resolved) {
  ShardSpec shard;
  shard.style = resolved.style;
  shard.key = resolved.key;
  const StyleRule& rule = RuleOf(resolved.style);
  if (rule.slice == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("plan key '", resolved.key, "': style ",
                                                   rule.name, " names a module (a region), not ",
                                                   "parameter ", input.name));
  }
  RETURN_IF_ERROR(rule.slice(input, shard));
  shard.global_shape = input.shape;
  shard.local_shape = input.shape;
  for (size_t d = 0; d < shard.slice.size(); ++d) {
    if (shard.slice[d].empty()) continue;
    int64_t length = 0;
    for (const Range& r : shard.slice[d]) length += r.end - r.start;
    shard.local_shape[d] = length;
  }
  return shard;
}

// Regions: the hooked module's output is all-reduced; its replicated
// parameters (a router) get partial gradients, summed over tp.
absl::Status AssignRegions(const std::vector<Region>& regions, const ModelNames& n,
                           std::map<std::string, ShardSpec>& shards) {
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
    for (const std::string& name : n.parameters) {
      if (!Under(name, hooked)) continue;
      auto it = shards.find(name);
      if (it == shards.end()) {
        ShardSpec implied;
        implied.style = Style::kReplicatedWithGradAllreduce;
        implied.key = entry ? entry->pattern : hooked;
        implied.global_shape = n.shapes.at(name);
        implied.local_shape = n.shapes.at(name);
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
  return absl::OkStatus();
}

// The same facts, DTensor's way.
void FillDTensor(ShardSpec& s, int tp, int rank) {
  DTensorSpec& t = s.dtensor;
  t.mesh_size = tp;
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
  if (t.expert >= 0) p = Placement::Shard(0);  // of the stacked experts
  t.placements = {p};
  t.replicas = p.kind == Placement::Kind::kReplicate ? tp
               : s.kv_head >= 0                      ? tp / static_cast<int>(s.kv_heads)
                                                     : 1;
  if (s.kv_head >= 0) t.replicated_rows = s.kv_rows;
  const bool partial = RuleOf(s.style).grad_allreduce || s.kv_head >= 0;
  t.grad = partial ? Placement::Partial() : p;
}

// ===========================================================================
// Applying: the hooks that make the shards compute what the whole model does.

absl::Status CheckLocalShapes(CausalLM& model, const std::map<std::string, ShardSpec>& shards,
                              int rank) {
  for (const auto& [name, shard] : shards) {
    at::Tensor* p = model.named_parameters().find(name);
    if (p == nullptr) {
      return absl::NotFoundError(absl::StrCat("the model has no parameter '", name, "'"));
    }
    if (p->is_meta()) continue;  // another pipeline stage's
    if (p->sizes().vec() != shard.local_shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          "parameter '", name, "' has shape [", absl::StrJoin(p->sizes(), ", "),
          "] but its shard for rank ", rank, " is [", absl::StrJoin(shard.local_shape, ", "), "]"));
    }
  }
  return absl::OkStatus();
}

// Per sharded module: its style, whether the plan covers its bias, its region.
struct ModuleWiring {
  Style style = Style::kColwise;
  bool bias = false;
  std::string region;
};

std::map<std::string, ModuleWiring> WiringOf(const std::map<std::string, ShardSpec>& shards,
                                             std::set<std::string>& regions) {
  std::map<std::string, ModuleWiring> wired;
  for (const auto& [name, shard] : shards) {
    ModuleWiring& w = wired[ModuleOf(name)];
    w.style = shard.style;
    w.bias = w.bias || LocalName(name) == "bias";
    w.region = shard.region;
    if (!shard.region.empty()) regions.insert(shard.region);
  }
  return wired;
}

// loss_parallel: lm_head stays column-parallel and the loss reads the shards.
absl::Status ApplyLossParallel(CausalLM& model, const std::map<std::string, ShardSpec>& shards,
                               std::map<std::string, ModuleWiring>& wired, const Group& group) {
  auto head = wired.find("lm_head");
  if (head == wired.end() || (head->second.style != Style::kColwise &&
                              head->second.style != Style::kColwiseGatherOutput)) {
    return absl::InvalidArgumentError(
        "loss_parallel needs lm_head in the plan as colwise or colwise_gather_output");
  }
  const int64_t vocab = shards.at("lm_head.weight").global_shape[0];
  if (vocab % group->size() != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("loss_parallel needs lm_head's vocab ", vocab, " divisible by tp ",
                     group->size(), " (uneven vocab shards are supported without loss_parallel)"));
  }
  head->second.style = Style::kColwise;  // keep the logits sharded
  model.loss_function = [group](const at::Tensor& logits, const at::Tensor& labels) {
    return VocabParallelCausalLMLoss(logits, labels, *group);
  };
  return absl::OkStatus();
}

void ScatterInput(Module* m, const Group& group) {
  m->AddPreHook(
      [group](Module&, Module::Tensors& in) { in[0] = ScatterToGroup(in[0], *group, 1); });
}

// Sequence parallelism across layers: where the residual stream is Shard(1).
struct SequenceParallel {
  /// Row-parallel layers that reduce-scatter, and their block's slot.
  std::map<std::string, std::shared_ptr<at::Tensor>> rowwise_slots;
  /// The blocks of sequence-parallel layers (attention, MLP) and their slots.
  std::vector<std::pair<std::string, std::shared_ptr<at::Tensor>>> blocks;
};

// The decoder layers holding sequence_parallel norms carry their residual
// stream as Shard(1). Entering the first such layer scatters it; leaving the
// last gathers it (unless a sequence-parallel final norm takes the shards).
// The row-parallel layer that ends a block reduce-scatters instead of
// all-reducing (rowwise_slots), and any other block output is split (blocks).
SequenceParallel WireSequenceParallel(const std::map<std::string, Module*>& modules,
                                      const std::map<std::string, ModuleWiring>& wired,
                                      const Group& group) {
  SequenceParallel sp;
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
      if (!indices.count(i - 1)) ScatterInput(m, group);
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
        sp.blocks.push_back({name, slot});
        for (const auto& [inner, w] : wired) {
          if (ModuleOf(inner) == name && w.region.empty() &&
              RuleOf(w.style).reduce_scatters_in_sequence_parallel) {
            sp.rowwise_slots[inner] = slot;
          }
        }
      }
    }
    if (indices.count(layers - 1) == 0 && final_norm_takes_shards) {
      for (const std::string& norm : final_norms) {
        if (ModuleOf(norm) == ModuleOf(list)) ScatterInput(modules.at(norm), group);
      }
    }
  }
  for (const std::string& norm : final_norms) {
    bool fed_by_layers = false;
    for (const auto& [list, indices] : sp_layers) fed_by_layers |= ModuleOf(list) == ModuleOf(norm);
    if (!fed_by_layers) ScatterInput(modules.at(norm), group);
  }
  return sp;
}

// After their own hooks (a region's all-reduce included), the blocks of
// sequence-parallel layers hand the residual stream its sequence shard.
void WireSequenceParallelBlocks(const std::map<std::string, Module*>& modules,
                                const SequenceParallel& sp, const Group& group) {
  for (const auto& entry : sp.blocks) {
    const std::string block = entry.first;
    const std::shared_ptr<at::Tensor> slot = entry.second;
    modules.at(block)->AddPostHook(
        [group, slot, block](Module&, const Module::Tensors&, at::Tensor& out) {
          const bool scattered = slot->defined() && out.is_same(*slot);
          TORCH_CHECK(scattered || !slot->defined(), "sequence_parallel: ", block,
                      " does not return the reduce-scattered output of its row-parallel layer");
          if (!scattered) out = ScatterToGroup(out, *group, 1);
          slot->reset();
        });
  }
}

// Regions: one all-reduce of the hooked module's output; the input's
// gradient is summed (each rank's share of it is partial).
void WireRegions(const std::map<std::string, Module*>& modules,
                 const std::set<std::string>& regions, const Group& group) {
  for (const std::string& region : regions) {
    Module* m = modules.at(region);
    m->AddPreHook([group](Module&, Module::Tensors& in) { in[0] = CopyToGroup(in[0], *group); });
    m->AddPostHook([group](Module&, const Module::Tensors&, at::Tensor& out) {
      out = ReduceFromGroup(out, *group);
    });
  }
}

// Each sharded module's own hooks, as its style's record says.
void WireStyles(const std::map<std::string, Module*>& modules,
                const std::map<std::string, ModuleWiring>& wired,
                const std::map<std::string, ShardSpec>& shards, const Group& group,
                const SequenceParallel& sp) {
  for (const auto& [module_name, w] : wired) {
    const StyleRule& rule = RuleOf(w.style);
    WireInput input;
    input.module = modules.at(module_name);
    input.module_name = module_name;
    input.group = group;
    if (w.bias) input.bias = input.module->named_parameters(false)["bias"];
    auto weight = shards.find(module_name + ".weight");
    input.weight = weight == shards.end() ? nullptr : &weight->second;
    auto slot = sp.rowwise_slots.find(module_name);
    if (slot != sp.rowwise_slots.end()) input.sequence_slot = slot->second;
    auto wire = w.region.empty() ? rule.wire : rule.wire_in_region;
    if (wire != nullptr) wire(input);
  }
}

// Gradients that must be summed over tp: replicated parameters used on
// sharded activations or inside a region, and KV heads replicated over
// several ranks.
void RegisterGradHooks(CausalLM& model, const std::map<std::string, ShardSpec>& shards,
                       const Group& group) {
  model.gradient_hooks.clear();
  for (auto& item : model.named_parameters()) {
    auto it = shards.find(item.key());
    if (it == shards.end()) continue;
    const ShardSpec& shard = it->second;
    const StyleRule& rule = RuleOf(shard.style);
    const bool region_bias =
        !shard.region.empty() && LocalName(item.key()) == "bias" && rule.row_parallel;
    std::function<at::Tensor(const at::Tensor&, int64_t)> hook;
    if (rule.grad_allreduce || region_bias) {
      hook = [group](const at::Tensor& grad, int64_t) {
        at::Tensor sum = grad.clone();
        group->AllReduce(sum);
        return sum;
      };
    } else if (shard.kv_head >= 0) {
      const int64_t head = shard.kv_head, heads = shard.kv_heads;
      const std::vector<Range> rows = shard.kv_rows;
      hook = [group, head, heads, rows](const at::Tensor& grad, int64_t first_row) {
        // Each rank's grad covers only its query heads' use of the KV head:
        // sum over the ranks sharing it (slots of a [heads, ...] buffer).
        // A packed q | k | v sums only its k and v rows (the ranks sharing
        // the head hold the same rows at the same places, so the same
        // pieces reach this collective on each).
        auto sum_shared = [&](const at::Tensor& shared) {
          std::vector<int64_t> shape = shared.sizes().vec();
          shape.insert(shape.begin(), heads);
          at::Tensor buffer = at::zeros(shape, shared.options());
          buffer[head].copy_(shared);
          group->AllReduce(buffer);
          return buffer[head];
        };
        if (rows.empty()) return sum_shared(grad).clone();
        at::Tensor out = grad.clone();
        for (const Range& r : rows) {
          const int64_t begin = std::max(r.start, first_row);
          const int64_t end = std::min(r.end, first_row + grad.size(0));
          if (begin >= end) continue;
          at::Tensor part = out.narrow(0, begin - first_row, end - begin);
          part.copy_(sum_shared(part));
        }
        return out;
      };
    }
    if (!hook) continue;
    item.value().register_hook([hook](at::Tensor grad) { return hook(grad, 0); });
    model.gradient_hooks[item.key()] = hook;
  }
}

// The placements travel with the model (DTensor's way: with the parameters).
void RecordPlacements(CausalLM& model, const std::map<std::string, ShardSpec>& shards,
                      const ProcessGroup& tp) {
  model.placements.clear();
  for (const auto& [name, shard] : shards) {
    DTensorSpec spec = shard.dtensor;
    spec.mesh_axis = tp.name();
    spec.mesh_size = tp.size();
    spec.mesh_rank = tp.rank();
    if (spec.global_shape.empty()) spec.global_shape = shard.global_shape;
    if (spec.local_shape.empty()) spec.local_shape = shard.local_shape;
    model.placements.emplace(name, std::move(spec));
  }
}

}  // namespace

const DTensorSpec* ParameterPlacement(const CausalLM& model, const std::string& name) {
  auto it = model.placements.find(name);
  return it == model.placements.end() ? nullptr : &it->second;
}

absl::StatusOr<std::map<std::string, ShardSpec>> PlanShards(CausalLM& model, const Plan& plan,
                                                            int tp, int rank,
                                                            const ResolveOptions& resolve) {
  const ModelNames names = NamesOf(model);
  std::vector<Region> regions;
  ASSIGN_OR_RETURN(Plan param_plan, ParameterPlan(plan, names, resolve, regions));
  ASSIGN_OR_RETURN(auto styles, ResolvePlan(param_plan, names.parameters, resolve));
  RETURN_IF_ERROR(TieEmbeddingShards(styles, model.config, names));
  RETURN_IF_ERROR(CheckModelWide(styles, model.config, tp));
  const std::map<std::string, int64_t> expert_counts = ExpertCounts(names.parameters);
  std::map<std::string, ShardSpec> shards;
  for (const auto& [name, style] : styles) {
    SliceInput input;
    input.name = name;
    input.shape = names.shapes.at(name);
    input.config = &model.config;
    input.tp = tp;
    input.rank = rank;
    input.expert_counts = &expert_counts;
    ASSIGN_OR_RETURN(ShardSpec shard, PlanShard(input, style));
    if (auto region_of = RuleOf(style.style).region_of)
      regions.push_back({nullptr, region_of(name)});
    shards.emplace(name, std::move(shard));
  }
  RETURN_IF_ERROR(CheckProducersMeetConsumers(styles, names));
  RETURN_IF_ERROR(AssignRegions(regions, names, shards));
  for (auto& [name, shard] : shards) FillDTensor(shard, tp, rank);
  return shards;
}

absl::StatusOr<std::vector<std::map<std::string, DTensorSpec>>> PlanPlacements(
    const ModelConfig& config, const ModelOptions& options, const Plan& plan, int tp,
    const ResolveOptions& resolve) {
  ASSIGN_OR_RETURN(std::shared_ptr<CausalLM> meta, CreateCausalLM(config, options));
  std::vector<std::map<std::string, DTensorSpec>> all(tp);
  for (int r = 0; r < tp; ++r) {
    ASSIGN_OR_RETURN(auto shards, PlanShards(*meta, plan, tp, r, resolve));
    for (auto& [name, shard] : shards) all[r].emplace(name, std::move(shard.dtensor));
  }
  return all;
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
    std::shared_ptr<const ProcessGroup> tp, const TensorParallelOptions& tp_options) {
  std::map<std::string, ShardSpec> shards;
  LoadHooks hooks;
  hooks.before_load = [&](CausalLM& model) -> absl::Status {
    ASSIGN_OR_RETURN(shards, PlanShards(model, plan, tp->size(), tp->rank(), tp_options.resolve));
    return absl::OkStatus();
  };
  hooks.slice_of = [&](const std::string& name) {
    auto it = shards.find(name);
    return it == shards.end() ? Slice{} : it->second.slice;
  };
  hooks.keep = tp_options.keep;
  ASSIGN_OR_RETURN(std::shared_ptr<CausalLM> model, FromPretrained(dir, options, hooks));
  RETURN_IF_ERROR(ApplyTensorParallel(*model, shards, std::move(tp), tp_options));
  return model;
}

absl::StatusOr<std::shared_ptr<CausalLM>> InitTensorParallel(
    const ModelConfig& config, const ModelOptions& options, const InitOptions& init,
    const Plan& plan, std::shared_ptr<const ProcessGroup> tp,
    const TensorParallelOptions& tp_options) {
  ASSIGN_OR_RETURN(std::shared_ptr<CausalLM> model, CreateCausalLM(config, options));
  ASSIGN_OR_RETURN(auto shards,
                   PlanShards(*model, plan, tp->size(), tp->rank(), tp_options.resolve));
  InitOptions sliced = init;
  sliced.slice_of = [&shards](const std::string& name) {
    auto it = shards.find(name);
    return it == shards.end() ? Slice{} : it->second.slice;
  };
  sliced.keep = tp_options.keep;
  RETURN_IF_ERROR(InitializeWeights(*model, sliced));
  RETURN_IF_ERROR(ApplyTensorParallel(*model, shards, std::move(tp), tp_options));
  return model;
}

absl::Status ApplyTensorParallel(CausalLM& model, const std::map<std::string, ShardSpec>& shards,
                                 std::shared_ptr<const ProcessGroup> tp,
                                 const TensorParallelOptions& options) {
  RETURN_IF_ERROR(CheckLocalShapes(model, shards, tp->rank()));
  std::map<std::string, Module*> modules;
  for (auto& [name, module] : NamedWeftModules(model)) modules[name] = module;
  std::set<std::string> regions;
  std::map<std::string, ModuleWiring> wired = WiringOf(shards, regions);
  if (options.loss_parallel) RETURN_IF_ERROR(ApplyLossParallel(model, shards, wired, tp));
  const SequenceParallel sp = WireSequenceParallel(modules, wired, tp);
  WireRegions(modules, regions, tp);
  WireStyles(modules, wired, shards, tp, sp);
  WireSequenceParallelBlocks(modules, sp, tp);
  RegisterGradHooks(model, shards, tp);
  RecordPlacements(model, shards, *tp);
  return absl::OkStatus();
}

}  // namespace weft
