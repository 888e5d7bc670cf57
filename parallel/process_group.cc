#include "parallel/process_group.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>

#include "base/slice.h"
#include "parallel/backends.h"

namespace weft {

struct P2PWork::Impl {
  c10::intrusive_ptr<c10d::Work> work;
  at::Tensor tensor;  // kept alive until the transfer is done
};

namespace {

std::atomic<int64_t> g_collective_ns{0};

thread_local int t_collective_depth = 0;

// Adds the lifetime of the outermost such scope to the process-wide
// collective time (collectives built from other collectives count once).
class CollectiveTimer {
 public:
  CollectiveTimer() : start_(std::chrono::steady_clock::now()) { ++t_collective_depth; }
  ~CollectiveTimer() {
    if (--t_collective_depth > 0) return;
    g_collective_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(
                           std::chrono::steady_clock::now() - start_)
                           .count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

c10d::ReduceOp ToC10d(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return c10d::ReduceOp::SUM;
    case ReduceOp::kAvg:
      return c10d::ReduceOp::AVG;
    case ReduceOp::kMax:
      return c10d::ReduceOp::MAX;
    case ReduceOp::kMin:
      return c10d::ReduceOp::MIN;
    case ReduceOp::kProduct:
      return c10d::ReduceOp::PRODUCT;
  }
  TORCH_CHECK(false, "unknown ReduceOp");
}

// Moves `dim` to the front and pads it with zeros to `rows`, contiguous.
at::Tensor FrontPadded(const at::Tensor& t, int64_t dim, int64_t rows) {
  at::Tensor front = t.movedim(dim, 0);
  int64_t have = front.size(0);
  if (have == rows) return front.contiguous();
  std::vector<int64_t> shape = front.sizes().vec();
  shape[0] = rows;
  at::Tensor out = at::zeros(shape, front.options());
  out.narrow(0, 0, have).copy_(front);
  return out;
}

int64_t NormalizeDim(const at::Tensor& t, int64_t dim) {
  int64_t rank = t.dim();
  TORCH_CHECK(rank > 0, "collective along dim ", dim, " of a 0-d tensor");
  TORCH_CHECK(dim >= -rank && dim < rank, "dim ", dim, " out of range for a ", rank, "-d tensor");
  return dim < 0 ? dim + rank : dim;
}

// Waits for a collective; a failure (a dead peer, a timeout) names the
// operation and the group before the backend's own first line.
void WaitOn(const c10::intrusive_ptr<c10d::Work>& work, const ProcessGroup& group, const char* op) {
  try {
    work->wait();
  } catch (const std::exception& e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    std::string ranks;
    for (int r : group.ranks()) ranks += (ranks.empty() ? "" : ",") + std::to_string(r);
    throw std::runtime_error("collective " + std::string(op) + " on group '" + group.name() +
                             "' (global ranks " + ranks + ") failed: " + what +
                             " (a member died or stopped; its own error says why)");
  }
}

}  // namespace

ProcessGroup::ProcessGroup(std::string name, std::vector<int> ranks, int group_rank,
                           std::unique_ptr<Backends> backends)
    : name_(std::move(name)),
      ranks_(std::move(ranks)),
      group_rank_(group_rank),
      backends_(std::move(backends)) {}

ProcessGroup::~ProcessGroup() = default;

c10d::Backend& ProcessGroup::BackendFor(const at::Tensor& tensor) const {
  if (tensor.is_cuda()) {
    TORCH_CHECK(backends_->nccl, "group ", name_,
                " has no NCCL backend for a CUDA tensor (start the runtime with device cuda)");
    return *backends_->nccl;
  }
  TORCH_CHECK(tensor.is_cpu(), "group ", name_, ": unsupported device ", tensor.device());
  return *backends_->gloo;
}

void ProcessGroup::CheckPeer(int peer, const char* what) const {
  TORCH_CHECK(peer >= 0 && peer < size(), what, " peer ", peer, " is not a rank of group ", name_,
              " (expected 0 <= peer < ", size(), ")");
}

void ProcessGroup::AllReduce(const at::Tensor& tensor, ReduceOp op) const {
  CollectiveTimer timer;
  c10d::Backend& backend = BackendFor(tensor);
  bool emulate_avg = op == ReduceOp::kAvg && !tensor.is_cuda();  // Gloo has no AVG.
  c10d::AllreduceOptions options;
  options.reduceOp = ToC10d(emulate_avg ? ReduceOp::kSum : op);
  std::vector<at::Tensor> buffers{tensor.is_contiguous() ? tensor : tensor.contiguous()};
  WaitOn(backend.allreduce(buffers, options), *this, "all-reduce");
  if (emulate_avg) {
    TORCH_CHECK(at::isFloatingType(tensor.scalar_type()), "ReduceOp::kAvg needs a floating ",
                "tensor, got ", tensor.scalar_type());
    buffers[0].div_(size());
  }
  if (!buffers[0].is_same(tensor)) tensor.copy_(buffers[0]);
}

at::Tensor ProcessGroup::AllGather(const at::Tensor& local, int64_t dim) const {
  CollectiveTimer timer;
  dim = NormalizeDim(local, dim);
  if (size() == 1) return local.clone();
  at::Tensor mine = at::full({1}, local.size(dim), local.options().dtype(at::kLong));
  at::Tensor all = at::empty({size()}, mine.options());
  WaitOn(BackendFor(local)._allgather_base(all, mine), *this, "all-gather");
  all = all.cpu();
  std::vector<int64_t> sizes(all.data_ptr<int64_t>(), all.data_ptr<int64_t>() + size());
  return AllGather(local, dim, sizes);
}

at::Tensor ProcessGroup::AllGather(const at::Tensor& local, int64_t dim,
                                   const std::vector<int64_t>& sizes) const {
  CollectiveTimer timer;
  return AllGatherStart(local, dim, sizes).Finish();
}

ProcessGroup::PendingAllGather ProcessGroup::AllGatherStart(
    const at::Tensor& local, int64_t dim, const std::vector<int64_t>& sizes) const {
  dim = NormalizeDim(local, dim);
  TORCH_CHECK(static_cast<int>(sizes.size()) == size(), "AllGather on group ", name_, ": ",
              sizes.size(), " sizes for ", size(), " members");
  TORCH_CHECK(sizes[rank()] == local.size(dim), "AllGather on group ", name_, ": this member's ",
              "size along dim ", dim, " is ", local.size(dim), ", sizes[", rank(), "] says ",
              sizes[rank()]);
  PendingAllGather pending;
  pending.group_ = this;
  pending.sizes_ = sizes;
  pending.dim_ = dim;
  pending.rows_ = *std::max_element(sizes.begin(), sizes.end());
  at::Tensor input = FrontPadded(local, dim, pending.rows_);
  std::vector<int64_t> shape = input.sizes().vec();
  shape[0] = pending.rows_ * size();
  pending.gathered_ = at::empty(shape, input.options());
  auto impl = std::make_shared<P2PWork::Impl>();
  impl->tensor = input;  // kept alive until the collective is done
  if (pending.rows_ > 0) {
    impl->work = BackendFor(local)._allgather_base(pending.gathered_, input);
    pending.work_ = P2PWork(std::move(impl));
  }
  return pending;
}

at::Tensor ProcessGroup::PendingAllGather::Finish() {
  TORCH_CHECK(group_ != nullptr, "PendingAllGather::Finish without a started gather");
  CollectiveTimer timer;
  if (work_.valid()) WaitOn(work_.impl()->work, *group_, "all-gather");
  const int n = group_->size();
  at::Tensor gathered = gathered_;
  bool even = std::all_of(sizes_.begin(), sizes_.end(), [&](int64_t s) { return s == rows_; });
  if (!even) {
    std::vector<at::Tensor> parts;
    for (int i = 0; i < n; ++i) parts.push_back(gathered.narrow(0, i * rows_, sizes_[i]));
    gathered = at::cat(parts, 0);
  }
  group_ = nullptr;
  return dim_ == 0 ? gathered : gathered.movedim(0, dim_).contiguous();
}

at::Tensor ProcessGroup::ReduceScatter(const at::Tensor& input, int64_t dim, ReduceOp op) const {
  return ReduceScatterStart(input, dim, op).Finish();
}

ProcessGroup::PendingReduceScatter ProcessGroup::ReduceScatterStart(const at::Tensor& input,
                                                                    int64_t dim,
                                                                    ReduceOp op) const {
  PendingReduceScatter pending;
  pending.group_ = this;
  pending.dim_ = dim = NormalizeDim(input, dim);
  const int64_t n = input.size(dim);
  pending.length_ = ChunkOf(n, size(), rank()).length;
  if (size() == 1) {
    pending.out_ = input.movedim(dim, 0).clone();
    return pending;
  }
  const int64_t cap = ChunkCapacity(n, size());
  at::Tensor padded = FrontPadded(input, dim, cap * size());
  std::vector<int64_t> shape = padded.sizes().vec();
  shape[0] = cap;
  pending.out_ = at::empty(shape, padded.options());
  pending.divide_ = op == ReduceOp::kAvg && !input.is_cuda();
  c10d::ReduceScatterOptions options;
  options.reduceOp = ToC10d(pending.divide_ ? ReduceOp::kSum : op);
  if (cap > 0) {
    auto impl = std::make_shared<P2PWork::Impl>();
    impl->tensor = padded;  // kept alive until the collective is done
    impl->work = BackendFor(input)._reduce_scatter_base(pending.out_, padded, options);
    pending.work_ = P2PWork(std::move(impl));
  }
  return pending;
}

at::Tensor ProcessGroup::PendingReduceScatter::Finish() {
  TORCH_CHECK(group_ != nullptr, "PendingReduceScatter::Finish without a started reduce-scatter");
  CollectiveTimer timer;
  if (work_.valid()) WaitOn(work_.impl()->work, *group_, "reduce-scatter");
  at::Tensor out = out_;
  if (divide_) out.div_(group_->size());
  out = out.narrow(0, 0, length_);
  group_ = nullptr;
  return dim_ == 0 ? out.contiguous() : out.movedim(0, dim_).contiguous();
}

void ProcessGroup::Broadcast(const at::Tensor& tensor, int src) const {
  CollectiveTimer timer;
  CheckPeer(src, "Broadcast");
  c10d::BroadcastOptions options;
  options.rootRank = src;
  std::vector<at::Tensor> buffers{tensor.is_contiguous() ? tensor : tensor.contiguous()};
  WaitOn(BackendFor(tensor).broadcast(buffers, options), *this, "broadcast");
  if (!buffers[0].is_same(tensor)) tensor.copy_(buffers[0]);
}

void ProcessGroup::Send(const at::Tensor& tensor, int peer, int tag) const {
  CollectiveTimer timer;
  CheckPeer(peer, "Send");
  TORCH_CHECK(peer != rank(), "Send to self on group ", name_);
  std::vector<at::Tensor> buffers{tensor.contiguous()};
  WaitOn(BackendFor(tensor).send(buffers, peer, tag), *this, "send");
}

void ProcessGroup::Recv(const at::Tensor& tensor, int peer, int tag) const {
  CollectiveTimer timer;
  CheckPeer(peer, "Recv");
  TORCH_CHECK(peer != rank(), "Recv from self on group ", name_);
  std::vector<at::Tensor> buffers{tensor.is_contiguous() ? tensor : tensor.contiguous()};
  WaitOn(BackendFor(tensor).recv(buffers, peer, tag), *this, "recv");
  if (!buffers[0].is_same(tensor)) tensor.copy_(buffers[0]);
}

bool P2PWork::Wait(std::chrono::milliseconds timeout) const {
  TORCH_CHECK(impl_ != nullptr, "P2PWork::Wait on an empty work");
  CollectiveTimer timer;
  try {
    return impl_->work->wait(timeout);
  } catch (const std::exception& e) {
    // Gloo reports a timeout as an exception; anything else is a failure.
    const std::string what = e.what();
    if (what.find("imed out") != std::string::npos || what.find("imeout") != std::string::npos) {
      return false;
    }
    throw;
  }
}

P2PWork ProcessGroup::ISend(const at::Tensor& tensor, int peer, int tag) const {
  CheckPeer(peer, "ISend");
  TORCH_CHECK(peer != rank(), "ISend to self on group ", name_);
  TORCH_CHECK(tensor.is_contiguous(), "ISend of a non-contiguous tensor on group ", name_);
  std::vector<at::Tensor> buffers{tensor};
  auto impl = std::make_shared<P2PWork::Impl>();
  impl->work = BackendFor(tensor).send(buffers, peer, tag);
  impl->tensor = tensor;
  return P2PWork(std::move(impl));
}

P2PWork ProcessGroup::IRecv(const at::Tensor& tensor, int peer, int tag) const {
  CheckPeer(peer, "IRecv");
  TORCH_CHECK(peer != rank(), "IRecv from self on group ", name_);
  TORCH_CHECK(tensor.is_contiguous(), "IRecv into a non-contiguous tensor on group ", name_);
  std::vector<at::Tensor> buffers{tensor};
  auto impl = std::make_shared<P2PWork::Impl>();
  impl->work = BackendFor(tensor).recv(buffers, peer, tag);
  impl->tensor = tensor;
  return P2PWork(std::move(impl));
}

void ProcessGroup::Barrier() const {
  CollectiveTimer timer;
  if (size() == 1) return;
  WaitOn(backends_->gloo->barrier(c10d::BarrierOptions()), *this, "barrier");
}

double ProcessGroup::CollectiveSeconds() { return g_collective_ns.load() / 1e9; }

void ProcessGroup::ResetCollectiveSeconds() { g_collective_ns = 0; }

}  // namespace weft
