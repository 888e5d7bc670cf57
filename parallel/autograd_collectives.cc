#include "parallel/autograd_collectives.h"

#include <torch/autograd.h>

#include "base/slice.h"

namespace weft {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// The group travels through the autograd context as an address: groups
// outlive every graph built over them (they live as long as the Runtime).
int64_t Key(const ProcessGroup& group) { return reinterpret_cast<int64_t>(&group); }
const ProcessGroup& GroupOf(AutogradContext* ctx) {
  return *reinterpret_cast<const ProcessGroup*>(ctx->saved_data["group"].toInt());
}

at::Tensor AllReduced(const at::Tensor& t, const ProcessGroup& group) {
  at::Tensor out = t.clone(at::MemoryFormat::Contiguous);
  group.AllReduce(out);
  return out;
}

struct CopyToGroupFn : torch::autograd::Function<CopyToGroupFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t group) {
    ctx->saved_data["group"] = group;
    return x.view_as(x);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    return {AllReduced(grads[0], GroupOf(ctx)), at::Tensor()};
  }
};

struct ReduceFromGroupFn : torch::autograd::Function<ReduceFromGroupFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t group) {
    return AllReduced(x, *reinterpret_cast<const ProcessGroup*>(group));
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    return {grads[0], at::Tensor()};
  }
};

struct GatherFromGroupFn : torch::autograd::Function<GatherFromGroupFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t group, int64_t dim) {
    ctx->saved_data["group"] = group;
    ctx->saved_data["dim"] = dim;
    return reinterpret_cast<const ProcessGroup*>(group)->AllGather(x, dim);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    return {LocalChunk(grads[0], GroupOf(ctx), ctx->saved_data["dim"].toInt()), at::Tensor(),
            at::Tensor()};
  }
};

struct ScatterToGroupFn : torch::autograd::Function<ScatterToGroupFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t group, int64_t dim) {
    ctx->saved_data["group"] = group;
    ctx->saved_data["dim"] = dim;
    return LocalChunk(x, *reinterpret_cast<const ProcessGroup*>(group), dim).clone();
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    return {GroupOf(ctx).AllGather(grads[0], ctx->saved_data["dim"].toInt()), at::Tensor(),
            at::Tensor()};
  }
};

struct ReduceScatterToGroupFn : torch::autograd::Function<ReduceScatterToGroupFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t group, int64_t dim) {
    ctx->saved_data["group"] = group;
    ctx->saved_data["dim"] = dim;
    return reinterpret_cast<const ProcessGroup*>(group)->ReduceScatter(x, dim);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    return {GroupOf(ctx).AllGather(grads[0], ctx->saved_data["dim"].toInt()), at::Tensor(),
            at::Tensor()};
  }
};

}  // namespace

at::Tensor LocalChunk(const at::Tensor& input, const ProcessGroup& group, int64_t dim) {
  if (dim < 0) dim += input.dim();
  ChunkSpan span = ChunkOf(input.size(dim), group.size(), group.rank());
  return input.narrow(dim, span.offset, span.length);
}

at::Tensor CopyToGroup(const at::Tensor& input, const ProcessGroup& group) {
  return CopyToGroupFn::apply(input, Key(group));
}

at::Tensor ReduceFromGroup(const at::Tensor& input, const ProcessGroup& group) {
  return ReduceFromGroupFn::apply(input, Key(group));
}

at::Tensor GatherFromGroup(const at::Tensor& input, const ProcessGroup& group, int64_t dim) {
  return GatherFromGroupFn::apply(input, Key(group), dim);
}

at::Tensor ScatterToGroup(const at::Tensor& input, const ProcessGroup& group, int64_t dim) {
  return ScatterToGroupFn::apply(input, Key(group), dim);
}

at::Tensor ReduceScatterToGroup(const at::Tensor& input, const ProcessGroup& group, int64_t dim) {
  return ReduceScatterToGroupFn::apply(input, Key(group), dim);
}

}  // namespace weft
