#include "plans/engine.h"

#include <ATen/ATen.h>

#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "parallel/autograd_collectives.h"
#include "parallel/status.h"

namespace weft {
namespace {

using Shard = ShardSpec;

std::string ModuleOf(const std::string& param) { return param.substr(0, param.rfind('.')); }
std::string LocalName(const std::string& param) { return param.substr(param.rfind('.') + 1); }

absl::Status NotDivisible(const std::string& param, int dim, int64_t size, int tp) {
  return absl::InvalidArgumentError(absl::StrCat("module ", ModuleOf(param), " parameter ",
                                                 LocalName(param), " dim ", dim, " has size ", size,
                                                 ", not divisible by tp ", tp));
}

// Even split of [0, size) into `tp` parts: part `rank`.
std::vector<Range> EvenPart(int64_t begin, int64_t size, int tp, int rank) {
  int64_t s = size / tp;
  return {{begin + rank * s, begin + (rank + 1) * s}};
}

absl::StatusOr<Shard> PlanShard(const std::string& name, const std::vector<int64_t>& shape,
                                const ResolvedStyle& resolved, const ModelConfig& c, int tp,
                                int rank) {
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
        if (rows % tp != 0) return NotDivisible(name, 0, rows, tp);
        shard.slice.push_back(EvenPart(0, rows, tp, rank));
      }
      if (is_weight) shard.slice.push_back({});
      return shard;
    }
    case Style::kPackedColwise: {
      std::vector<int64_t> parts;
      if (absl::EndsWith(module, "qkv_proj")) {
        parts = {c.num_attention_heads * d, c.num_key_value_heads * d, c.num_key_value_heads * d};
        if (c.num_key_value_heads % tp != 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              "module ", module, ": num_key_value_heads ", c.num_key_value_heads,
              " is not divisible by tp ", tp, " (packed q | k | v cannot replicate KV heads)"));
        }
      } else {
        if (shape[0] % 2 != 0) return NotDivisible(name, 0, shape[0], 2);
        parts = {shape[0] / 2, shape[0] / 2};
      }
      std::vector<Range> ranges;
      int64_t begin = 0;
      for (int64_t part : parts) {
        if (part % tp != 0) return NotDivisible(name, 0, part, tp);
        ranges.push_back(EvenPart(begin, part, tp, rank)[0]);
        begin += part;
      }
      shard.slice.push_back(ranges);
      if (is_weight) shard.slice.push_back({});
      return shard;
    }
    case Style::kEmbeddingRowwise:  // vocab-parallel: rows of the table
      if (shape[0] % tp != 0) return NotDivisible(name, 0, shape[0], tp);
      shard.slice = {EvenPart(0, shape[0], tp, rank), {}};
      return shard;
    case Style::kEmbeddingColwise:  // the embedding dim
      if (shape[1] % tp != 0) return NotDivisible(name, 1, shape[1], tp);
      shard.slice = {{}, EvenPart(0, shape[1], tp, rank)};
      return shard;
    case Style::kAllReduce:
    case Style::kLocal:
      return shard;
    case Style::kRowwise:
    case Style::kRowwiseSplitInput:
    case Style::kLocalRowwise:
      if (!is_weight) return shard;  // bias: replicated, added once (see hooks)
      if (shape[1] % tp != 0) return NotDivisible(name, 1, shape[1], tp);
      shard.slice = {{}, EvenPart(0, shape[1], tp, rank)};
      return shard;
    case Style::kReplicatedWithGradAllreduce:
      return shard;
    default:
      return absl::UnimplementedError(absl::StrCat("plan key '", resolved.key, "': style ",
                                                   StyleName(resolved.style),
                                                   " is not supported by the plan engine yet"));
  }
}

}  // namespace

absl::StatusOr<std::map<std::string, ShardSpec>> PlanShards(CausalLM& model, const Plan& plan,
                                                            int n, int rank,
                                                            const ResolveOptions& resolve) {
  const ModelConfig& c = model.config;
  if (c.num_attention_heads % n != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_attention_heads ", c.num_attention_heads, " is not divisible by tp ", n));
  }
  std::vector<std::string> names;
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& item : model.named_parameters()) {
    names.push_back(item.key());
    shapes[item.key()] = item.value().sizes().vec();
  }
  ASSIGN_OR_RETURN(auto styles, ResolvePlan(plan, names, resolve));
  if (c.tie_word_embeddings && styles.count("lm_head.weight")) {
    return absl::UnimplementedError(
        "tie_word_embeddings with a sharded lm_head is not supported yet (remove lm_head from "
        "the plan)");
  }
  std::map<std::string, ShardSpec> shards;
  for (const auto& [name, style] : styles) {
    ASSIGN_OR_RETURN(Shard shard, PlanShard(name, shapes[name], style, c, n, rank));
    shard.global_shape = shapes[name];
    shard.local_shape = shapes[name];
    for (size_t d = 0; d < shard.slice.size(); ++d) {
      if (shard.slice[d].empty()) continue;
      int64_t length = 0;
      for (const Range& r : shard.slice[d]) length += r.end - r.start;
      shard.local_shape[d] = length;
    }
    shards.emplace(name, std::move(shard));
  }
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
  for (const auto& [name, shard] : shards) {
    at::Tensor* p = model->named_parameters().find(name);
    if (p == nullptr)
      return absl::NotFoundError(absl::StrCat("the model has no parameter '", name, "'"));
    if (p->sizes().vec() != shard.local_shape) {
      return absl::InvalidArgumentError(
          absl::StrCat("parameter '", name, "' has shape [", absl::StrJoin(p->sizes(), ", "),
                       "] but its shard for rank ", tp.rank(), " is [",
                       absl::StrJoin(shard.local_shape, ", "), "]"));
    }
  }
  // Wire the collectives through hooks, once per module.
  std::map<std::string, Module*> modules;
  for (auto& [name, module] : NamedWeftModules(*model)) modules[name] = module;
  std::map<std::string, std::pair<Style, bool>> wired;  // module -> style, has bias
  for (const auto& [name, shard] : shards) {
    auto& w = wired[ModuleOf(name)];
    w.first = shard.style;
    w.second = w.second || LocalName(name) == "bias";
  }
  const ProcessGroup* group = &tp;
  if (tp_options.loss_parallel) {
    auto head = wired.find("lm_head");
    if (head == wired.end() || (head->second.first != Style::kColwise &&
                                head->second.first != Style::kColwiseGatherOutput)) {
      return absl::InvalidArgumentError(
          "loss_parallel needs lm_head in the plan as colwise or colwise_gather_output");
    }
    head->second.first = Style::kColwise;  // keep the logits sharded
    model->loss_function = [group](const at::Tensor& logits, const at::Tensor& labels) {
      return VocabParallelCausalLMLoss(logits, labels, *group);
    };
  }
  for (const auto& [module_name, style_bias] : wired) {
    Module* m = modules.at(module_name);
    const Style style = style_bias.first;
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
    if (style == Style::kRowwise || style == Style::kRowwiseSplitInput) {
      at::Tensor bias = style_bias.second ? m->named_parameters(false)["bias"] : at::Tensor();
      m->AddPostHook([group, bias](Module&, const Module::Tensors&, at::Tensor& out) {
        // Every rank added the bias to its partial sum: take it out before
        // the all-reduce and add it once after.
        out = bias.defined() ? ReduceFromGroup(out - bias, *group) + bias
                             : ReduceFromGroup(out, *group);
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
  // Gradients that must be summed over tp: replicated parameters used on
  // sharded activations, and KV heads replicated over several ranks.
  for (auto& item : model->named_parameters()) {
    auto it = shards.find(item.key());
    if (it == shards.end()) continue;
    const Shard& shard = it->second;
    if (shard.style == Style::kReplicatedWithGradAllreduce) {
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
  return absl::OkStatus();
}

}  // namespace weft
