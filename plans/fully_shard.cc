#include "plans/fully_shard.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/StorageImpl.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/nn/modules/container/modulelist.h>

#include <algorithm>
#include <deque>
#include <map>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/slice.h"
#include "base/status.h"

namespace weft {

// The units' reduce-scatters in flight, in the order they started.
struct ReduceQueue {
  struct Pending {
    FullyShardedModel::Unit* unit;
    ProcessGroup::PendingReduceScatter work;
  };
  std::deque<Pending> in_flight;
  bool callback_queued = false;  // FinishAll runs when the backward pass ends
  /// Waits for each and accumulates the unit's pieces' gradients.
  void FinishAll();
};

struct FullyShardedModel::Unit {
  std::string name;
  std::vector<size_t> params;  // indices into FullyShardedModel::params_
  /// Where each gathered tensor goes: (module, local name); a tied weight has two.
  std::vector<std::vector<std::pair<Module*, std::string>>> slots;
  std::vector<at::Tensor> placeholders;  // meta, one per param
  std::shared_ptr<const ProcessGroup> group;
  const std::vector<Param>* all = nullptr;
  std::vector<std::function<at::Tensor(const at::Tensor&, int64_t)>> grad_hooks;  // or empty
  at::ScalarType reduce_dtype = at::kFloat;
  std::shared_ptr<ReduceQueue> reduces;  // shared by the model's units
  bool reshard_after_forward = false;  // decoder layers: free after forward, regather for backward
  std::vector<at::Tensor> gathered;    // the whole tensors of the forward running now
  std::vector<at::Tensor> Pieces() const;
  /// One coalesced all-gather of the pieces into whole tensors (a prefetched
  /// one if Prefetch started it).
  std::vector<at::Tensor> AllGather();
  /// Starts this unit's all-gather now (the previous layer computes meanwhile).
  void Prefetch();
  ProcessGroup::PendingAllGather StartGather() const;
  ProcessGroup::PendingAllGather prefetched;
  Unit* next = nullptr;      // the next decoder layer in forward order
  Unit* previous = nullptr;  // the one before (the next in backward)
  /// Frees `tensors`' memory (autograd keeps the tensors, not the bytes).
  static void Free(const std::vector<at::Tensor>& tensors);
  /// Gathers again into the same tensors (before their backward).
  void Regather(const std::vector<at::Tensor>& tensors);
};

namespace {

using Unit = FullyShardedModel::Unit;

// One coalesced all-gather of a unit's pieces; backward reduce-scatters the
// whole gradients back into the pieces' (averaged over the group).
class GatherFunction : public torch::autograd::Function<GatherFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                at::TensorList pieces, Unit* unit) {
    ctx->saved_data["unit"] = reinterpret_cast<int64_t>(unit);
    torch::autograd::variable_list whole = unit->AllGather();
    // Aliases of the outputs' storage (no autograd history, so no cycle):
    // backward frees this call's memory, whichever micro-batch runs next.
    c10::List<at::Tensor> aliases;
    for (const at::Tensor& t : whole) {
      at::Tensor alias = at::empty({0}, t.options());
      alias.set_(t.storage(), t.storage_offset(), t.sizes(), t.strides());
      aliases.push_back(alias);
    }
    ctx->saved_data["aliases"] = aliases;
    // Frozen parameters (LoRA's base) get no gradient: nothing to reduce.
    torch::autograd::variable_list frozen;
    for (size_t k = 0; k < unit->params.size(); ++k) {
      if (!(*unit->all)[unit->params[k]].piece.requires_grad()) frozen.push_back(whole[k]);
    }
    if (!frozen.empty()) ctx->mark_non_differentiable(frozen);
    return whole;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    Unit* unit = reinterpret_cast<Unit*>(ctx->saved_data["unit"].toInt());
    const ProcessGroup& group = *unit->group;
    // One reduce-scatter for the unit: row r of an [n, L] buffer holds rank
    // r's rows of every gradient (zero-padded to the longest row), so the
    // collective's dim-0 chunk r is rank r's pieces, in order.
    const int n = group.size();
    std::vector<at::Tensor> whole;
    std::vector<int64_t> length(n, 0);
    for (size_t k = 0; k < unit->params.size(); ++k) {
      const FullyShardedModel::Param& p = (*unit->all)[unit->params[k]];
      if (!p.piece.requires_grad()) continue;  // frozen
      at::Tensor grad = grads[k].defined() ? grads[k] : at::zeros(p.full_shape, p.piece.options());
      whole.push_back(grad.to(unit->reduce_dtype).contiguous());
      for (int r = 0; r < n; ++r) {
        length[r] += ChunkOf(p.full_shape[0], n, r).length * (grad.numel() / p.full_shape[0]);
      }
    }
    const int64_t row = *std::max_element(length.begin(), length.end());
    at::Tensor buffer =
        at::zeros({n, row}, whole.empty() ? at::TensorOptions() : whole[0].options());
    for (int r = 0; r < n; ++r) {
      int64_t offset = 0;
      for (size_t k = 0; k < whole.size(); ++k) {
        const ChunkSpan span = ChunkOf(whole[k].size(0), n, r);
        at::Tensor part = whole[k].narrow(0, span.offset, span.length).reshape({-1});
        buffer[r].narrow(0, offset, part.numel()).copy_(part);
        offset += part.numel();
      }
    }
    // The reduce-scatter runs while the layers before this one compute their
    // backward: the one in flight finishes when the next starts, and the last
    // when this backward pass ends. The pieces' gradients are accumulated
    // then, so autograd gets none from here.
    ReduceQueue& queue = *unit->reduces;
    queue.FinishAll();
    queue.in_flight.push_back({unit, group.ReduceScatterStart(buffer.view({-1}), 0)});
    if (!queue.callback_queued) {
      queue.callback_queued = true;
      torch::autograd::Engine::get_default_engine().queue_callback([q = unit->reduces] {
        q->callback_queued = false;
        q->FinishAll();
      });
    }
    // This call's backward of the unit is done.
    Unit::Free(ctx->saved_data["aliases"].toTensorVector());
    return torch::autograd::variable_list(unit->params.size() + 1);  // + the unit pointer
  }
};

}  // namespace

void ReduceQueue::FinishAll() {
  while (!in_flight.empty()) {
    Unit* unit = in_flight.front().unit;
    at::Tensor mine = in_flight.front().work.Finish();  // [row]
    in_flight.pop_front();
    const double n = unit->group->size();
    int64_t offset = 0;
    for (size_t k = 0; k < unit->params.size(); ++k) {
      const FullyShardedModel::Param& p = (*unit->all)[unit->params[k]];
      if (!p.piece.requires_grad()) continue;  // frozen: not in the reduce-scatter
      at::Tensor piece = mine.narrow(0, offset, p.piece.numel()).view(p.piece.sizes());
      offset += p.piece.numel();
      piece = (piece / n).to(p.piece.scalar_type());
      // The tensor-parallel sums the engine registered on the parameter.
      if (unit->grad_hooks[k]) piece = unit->grad_hooks[k](piece, p.offset);
      at::Tensor& grad = const_cast<at::Tensor&>(p.piece).mutable_grad();
      if (grad.defined()) {
        grad.add_(piece);
      } else {
        grad = piece;  // a fresh tensor (the division made it)
      }
    }
  }
}

std::vector<at::Tensor> Unit::Pieces() const {
  std::vector<at::Tensor> pieces;
  for (size_t i : params) pieces.push_back((*all)[i].piece.detach());
  return pieces;
}

ProcessGroup::PendingAllGather Unit::StartGather() const {
  const int n = group->size();
  std::vector<at::Tensor> flat;
  for (const at::Tensor& p : Pieces()) flat.push_back(p.reshape({-1}));
  at::Tensor local = at::cat(flat);
  std::vector<int64_t> sizes(n, 0);  // every rank's flat length
  for (size_t i : params) {
    const FullyShardedModel::Param& p = (*all)[i];
    int64_t row = 1;
    for (size_t d = 1; d < p.full_shape.size(); ++d) row *= p.full_shape[d];
    for (int r = 0; r < n; ++r) sizes[r] += ChunkOf(p.full_shape[0], n, r).length * row;
  }
  return group->AllGatherStart(local, 0, sizes);
}

void Unit::Prefetch() {
  if (!prefetched.valid()) prefetched = StartGather();
}

std::vector<at::Tensor> Unit::AllGather() {
  const int n = group->size();
  ProcessGroup::PendingAllGather pending =
      prefetched.valid() ? std::move(prefetched) : StartGather();
  prefetched = ProcessGroup::PendingAllGather();
  at::Tensor everything = pending.Finish();
  // Rank r's buffer holds its piece of every parameter, in order.
  std::vector<std::vector<at::Tensor>> parts(params.size());
  int64_t offset = 0;
  for (int r = 0; r < n; ++r) {
    for (size_t k = 0; k < params.size(); ++k) {
      const FullyShardedModel::Param& p = (*all)[params[k]];
      std::vector<int64_t> shape = p.full_shape;
      shape[0] = ChunkOf(p.full_shape[0], n, r).length;
      int64_t numel = 1;
      for (int64_t d : shape) numel *= d;
      parts[k].push_back(everything.narrow(0, offset, numel).view(shape));
      offset += numel;
    }
  }
  std::vector<at::Tensor> out;
  for (auto& p : parts) out.push_back(at::cat(p, 0));
  return out;
}

void Unit::Free(const std::vector<at::Tensor>& tensors) {
  for (const at::Tensor& t : tensors) {
    if (t.defined()) t.storage().unsafeGetStorageImpl()->reset();
  }
}

void Unit::Regather(const std::vector<at::Tensor>& tensors) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> fresh = AllGather();
  for (size_t k = 0; k < tensors.size(); ++k) {
    const at::Tensor& t = tensors[k];
    c10::StorageImpl* storage = t.storage().unsafeGetStorageImpl();
    const size_t bytes = static_cast<size_t>(t.numel()) * t.element_size();
    if (storage->nbytes() < bytes) {
      storage->set_data_ptr_noswap(storage->allocator()->allocate(bytes));
      storage->set_nbytes(bytes);
    }
    // Through an alias with its own version counter: autograd saved these
    // tensors and must not see a modification.
    at::Tensor alias = at::empty({0}, t.options());
    alias.set_(t.storage(), t.storage_offset(), t.sizes(), t.strides());
    alias.copy_(fresh[k]);
  }
}

namespace {

// Sets each of the unit's parameters in its module(s) to `tensors`.
void Place(Unit& unit, const std::vector<at::Tensor>& tensors) {
  for (size_t k = 0; k < unit.params.size(); ++k) {
    for (auto& [module, local] : unit.slots[k]) {
      module->ReplaceParameter(local, tensors[k], /*allow_new_shape=*/true);
    }
  }
}

bool IsLayerList(const std::string& name, torch::nn::Module& module) {
  if (name.empty()) return false;
  int64_t index = 0;
  auto children = module.named_children();
  if (children.is_empty()) return false;
  for (const auto& child : children) {
    if (!absl::SimpleAtoi(child.key(), &index)) return false;
  }
  return true;
}

}  // namespace

FullyShardedModel::~FullyShardedModel() = default;

absl::StatusOr<std::shared_ptr<FullyShardedModel>> FullyShard(
    CausalLM& model, std::shared_ptr<const ProcessGroup> group, const FullyShardOptions& options) {
  auto out = std::shared_ptr<FullyShardedModel>(new FullyShardedModel());
  out->group_ = group;
  const int n = group->size(), rank = group->rank();
  // The units: each child of a layer list (the decoder layers), and every
  // other module that holds parameters itself (embedding, norm, head).
  std::map<std::string, Module*> weft_modules;
  for (auto& [name, module] : NamedWeftModules(model)) weft_modules[name] = module;
  std::vector<std::pair<std::string, Module*>> units;
  std::set<std::string> layer_units;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    if (!IsLayerList(item.key(), *item.value())) continue;
    for (const auto& child : item.value()->named_children()) {
      const std::string name = item.key() + "." + child.key();
      auto it = weft_modules.find(name);
      if (it == weft_modules.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("fully_shard: layer ", name, " is not a weft module"));
      }
      units.emplace_back(name, it->second);
      layer_units.insert(name);
    }
  }
  auto unit_of = [&](const std::string& param) -> std::string {
    for (const std::string& layer : layer_units) {
      if (param.compare(0, layer.size() + 1, layer + ".") == 0) return layer;
    }
    return param.substr(0, param.rfind('.'));  // its own module
  };
  std::map<std::string, size_t> unit_index;
  for (size_t i = 0; i < units.size(); ++i) unit_index[units[i].first] = i;
  std::vector<std::shared_ptr<Unit>> made(units.size());
  std::map<const void*, std::pair<size_t, size_t>> seen;  // tensor -> (unit, k)
  auto reduces = std::make_shared<ReduceQueue>();
  for (const auto& item : model.named_parameters()) {
    const std::string& name = item.key();
    auto given = options.pieces.piece.find(name);
    const bool read = given != options.pieces.piece.end();
    if (item.value().is_meta() && !read) continue;  // another pipeline stage's
    const std::string module_name = name.substr(0, name.rfind('.'));
    const std::string local = name.substr(name.rfind('.') + 1);
    auto module = weft_modules.find(module_name);
    if (module == weft_modules.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("fully_shard: parameter ", name, " is not held by a weft module"));
    }
    // A tied weight is one tensor (in the model, or among the pieces read).
    const void* impl =
        read ? given->second.unsafeGetTensorImpl() : item.value().unsafeGetTensorImpl();
    if (auto tied = seen.find(impl); tied != seen.end()) {  // a tied weight: one piece
      made[tied->second.first]->slots[tied->second.second].emplace_back(module->second, local);
      continue;
    }
    const std::string unit_name = unit_of(name);
    if (!unit_index.count(unit_name)) {
      auto owner = weft_modules.find(unit_name);
      units.emplace_back(unit_name, owner->second);
      unit_index[unit_name] = units.size() - 1;
      made.emplace_back();
    }
    const size_t u = unit_index[unit_name];
    if (!made[u]) {
      made[u] = std::make_shared<Unit>();
      made[u]->name = unit_name;
      made[u]->group = group;
      made[u]->reduce_dtype = options.reduce_dtype;
      made[u]->reduces = reduces;
      made[u]->all = &out->params_;
    }
    const at::Tensor whole = item.value().detach();
    const bool whole_grad = item.value().requires_grad();  // false: frozen (LoRA's base)
    FullyShardedModel::Param p;
    p.name = name;
    p.full_shape = whole.sizes().vec();
    if (read) {
      auto shape = options.pieces.full_shape.find(name);
      if (shape != options.pieces.full_shape.end()) p.full_shape = shape->second;
    }
    const ChunkSpan span = ChunkOf(p.full_shape.at(0), n, rank);
    p.rows = span.length;
    p.offset = span.offset;
    at::TensorOptions placeholder = whole.options().device(at::kMeta);
    if (read) {
      const at::Tensor& piece = given->second;
      if (piece.dim() != static_cast<int64_t>(p.full_shape.size()) || piece.size(0) != p.rows) {
        return absl::InvalidArgumentError(
            absl::StrCat("fully_shard: the piece read for ", name, " has shape [",
                         absl::StrJoin(piece.sizes(), ", "), "] (expected ", p.rows, " rows of [",
                         absl::StrJoin(p.full_shape, ", "), "] for rank ", rank, " of ", n, ")"));
      }
      p.piece = piece.detach().requires_grad_(item.value().requires_grad());
      placeholder = placeholder.dtype(piece.scalar_type());
    } else {
      p.piece = whole.narrow(0, span.offset, span.length).clone().requires_grad_(whole_grad);
    }
    out->params_.push_back(std::move(p));
    Unit& unit = *made[u];
    unit.params.push_back(out->params_.size() - 1);
    unit.slots.push_back({{module->second, local}});
    unit.placeholders.push_back(at::empty(out->params_.back().full_shape, placeholder));
    auto hook = model.gradient_hooks.find(name);
    unit.grad_hooks.push_back(hook == model.gradient_hooks.end() ? nullptr : hook->second);
    seen[impl] = {u, unit.params.size() - 1};
  }
  for (size_t u = 0; u < units.size(); ++u) {
    if (!made[u]) continue;  // a layer without parameters
    std::shared_ptr<Unit> unit = made[u];
    out->units_.push_back(unit);
    Place(*unit, unit->placeholders);
    units[u].second->AddPreHook([unit, out_raw = out.get()](Module&, Module::Tensors&) {
      std::vector<at::Tensor> pieces;
      for (size_t i : unit->params) pieces.push_back(out_raw->params_[i].piece);
      torch::autograd::variable_list whole =
          GatherFunction::apply(at::TensorList(pieces), unit.get());
      unit->gathered = whole;
      Place(*unit, whole);
      // The next layer's gather runs while this one computes.
      if (unit->next != nullptr) unit->next->Prefetch();
    });
    unit->reshard_after_forward =
        options.reshard_after_forward && layer_units.count(unit->name) > 0;
    if (unit->reshard_after_forward) {
      units[u].second->AddPostHook([unit](Module&, const Module::Tensors&, at::Tensor& output) {
        if (!at::GradMode::is_enabled() || !output.requires_grad()) return;
        // Before this unit's backward (its output's gradient is ready): gather again.
        // This forward's tensors (a pipeline runs several micro-batches'
        // forwards before their backwards).
        std::vector<at::Tensor> tensors = unit->gathered;
        output.register_hook([unit, tensors](at::Tensor grad) {
          unit->Regather(tensors);
          // The layer before runs its backward next: gather it meanwhile.
          if (unit->previous != nullptr) unit->previous->Prefetch();
          return grad;
        });
        Unit::Free(tensors);
      });
    }
  }
  // Decoder layers in forward order: each prefetches the next one's gather.
  Unit* previous = nullptr;
  for (auto& unit : out->units_) {
    if (!layer_units.count(unit->name)) continue;
    if (previous != nullptr) previous->next = unit.get();
    unit->previous = previous;
    previous = unit.get();
  }
  return out;
}

void FullyShardedModel::Reshard() {
  for (auto& unit : units_) {
    Place(*unit, unit->placeholders);
    // A prefetch holds the pieces as they were: finish it and drop it.
    if (unit->prefetched.valid()) unit->prefetched.Finish();
    unit->prefetched = ProcessGroup::PendingAllGather();
  }
}

at::Tensor FullyShardedModel::Gather(size_t index, const at::Tensor& piece) const {
  const Param& p = params_.at(index);
  std::vector<int64_t> rows;
  for (int r = 0; r < group_->size(); ++r) {
    rows.push_back(ChunkOf(p.full_shape[0], group_->size(), r).length);
  }
  return group_->AllGather(piece.detach().contiguous(), 0, rows);
}

at::Tensor FullyShardedModel::PieceOf(size_t index, const at::Tensor& whole) const {
  const Param& p = params_.at(index);
  return whole.narrow(0, p.offset, p.rows).contiguous();
}

Slice NarrowRows(const Slice& slice, const std::vector<int64_t>& shape, int64_t offset,
                 int64_t length) {
  Slice out = slice.empty() ? Slice(shape.size()) : slice;
  if (out.empty()) return out;
  const std::vector<Range> rows = out[0].empty() ? std::vector<Range>{{0, shape.at(0)}} : out[0];
  std::vector<Range> taken;
  int64_t seen = 0;  // rows selected by the ranges before this one
  for (const Range& r : rows) {
    const int64_t begin = std::max(offset, seen);
    const int64_t end = std::min(offset + length, seen + r.end - r.start);
    if (begin < end) taken.push_back({r.start + begin - seen, r.start + end - seen});
    seen += r.end - r.start;
  }
  if (taken.empty()) taken.push_back({rows.front().start, rows.front().start});
  out[0] = std::move(taken);
  return out;
}

absl::StatusOr<ShardedPieces> ReadPieces(const PieceSource& source, int parts, int index) {
  ShardedPieces out;
  std::map<std::string, Slice> slices;
  {
    ModelConfig config = source.config;
    if (!source.dir.empty()) {
      ASSIGN_OR_RETURN(config, LoadModelConfig(source.dir));
    }
    ASSIGN_OR_RETURN(std::shared_ptr<CausalLM> meta, CreateCausalLM(config, source.model_options));
    for (const auto& item : meta->named_parameters()) {
      const std::vector<int64_t> global = item.value().sizes().vec();
      auto shard = source.tp_shards.find(item.key());
      const bool sharded = shard != source.tp_shards.end();
      const std::vector<int64_t> local = sharded ? shard->second.local_shape : global;
      if (local.empty()) continue;  // a scalar: no dim 0 to cut (not in any model today)
      const ChunkSpan span = ChunkOf(local[0], parts, index);
      slices[item.key()] =
          NarrowRows(sharded ? shard->second.slice : Slice{}, global, span.offset, span.length);
      out.full_shape[item.key()] = local;
    }
  }
  auto slice_of = [&slices](const std::string& name) {
    auto it = slices.find(name);
    return it == slices.end() ? Slice{} : it->second;
  };
  std::shared_ptr<CausalLM> holder;
  if (!source.dir.empty()) {
    LoadHooks hooks;
    hooks.slice_of = slice_of;
    hooks.keep = source.keep;
    ASSIGN_OR_RETURN(holder, FromPretrained(source.dir, source.pretrained, hooks));
  } else {
    ASSIGN_OR_RETURN(holder, CreateCausalLM(source.config, source.model_options));
    InitOptions init = source.init;
    init.slice_of = slice_of;
    init.keep = source.keep;
    RETURN_IF_ERROR(InitializeWeights(*holder, init));
  }
  // A tied weight stays one tensor under both names (FullyShard ties by identity).
  std::map<const void*, at::Tensor> detached;
  for (const auto& item : holder->named_parameters()) {
    if (item.value().is_meta()) continue;
    auto it = detached.find(item.value().unsafeGetTensorImpl());
    if (it == detached.end()) {
      it = detached.emplace(item.value().unsafeGetTensorImpl(), item.value().detach()).first;
    }
    out.piece[item.key()] = it->second;
  }
  return out;
}

}  // namespace weft
