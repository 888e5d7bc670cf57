// ProcessGroup: a set of ranks and the collectives weft runs over them.
//
// One group wraps a c10d Gloo backend (CPU tensors) and, when LibTorch has
// CUDA and the runtime runs on GPUs, a c10d NCCL backend (CUDA tensors); each
// call picks the backend from the tensor's device. Calls are blocking and
// collective: every member must make the same calls in the same order.
// Groups are made by Runtime (runtime.h) and DeviceMesh (device_mesh.h).
//
// Shapes follow torch.chunk along the given dim (chunk.h), so shards may be
// uneven; where Gloo lacks a primitive, it is emulated exactly.
//
//   ProcessGroup& tp = mesh["tp"];
//   at::Tensor full = tp.AllGather(local_shard, /*dim=*/0);
//   tp.AllReduce(partial_sums);  // in place, like torch.distributed
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace c10d {
class Backend;
class Store;
}  // namespace c10d

namespace weft {

enum class ReduceOp { kSum, kAvg, kMax, kMin, kProduct };

/// An outstanding asynchronous send or receive (ProcessGroup::ISend/IRecv).
class P2PWork {
 public:
  struct Impl;
  P2PWork() = default;
  explicit P2PWork(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  /// Blocks until the transfer is done; false when `timeout` passed first
  /// (the transfer stays outstanding). A receive's tensor holds the data once
  /// Wait returned true. Throws when the peer's connection failed.
  bool Wait(std::chrono::milliseconds timeout) const;
  bool valid() const { return impl_ != nullptr; }
  const std::shared_ptr<Impl>& impl() const { return impl_; }

 private:
  std::shared_ptr<Impl> impl_;
};

class ProcessGroup {
 public:
  struct Backends;  // The c10d backends (defined in process_group.cc).

  /// Built by Runtime; `ranks` are global ranks in group order.
  ProcessGroup(std::string name, std::vector<int> ranks, int group_rank,
               std::unique_ptr<Backends> backends);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  const std::string& name() const { return name_; }
  /// This process's rank inside the group.
  int rank() const { return group_rank_; }
  int size() const { return static_cast<int>(ranks_.size()); }
  /// Global ranks of the members, in group-rank order.
  const std::vector<int>& ranks() const { return ranks_; }

  /// In place: every member ends with the reduction of all members' tensors.
  void AllReduce(const at::Tensor& tensor, ReduceOp op = ReduceOp::kSum) const;

  /// Concatenates every member's `local` along `dim` in group-rank order.
  /// Sizes along `dim` may differ (torch.chunk shards, empty ones included);
  /// all other dims must match.
  at::Tensor AllGather(const at::Tensor& local, int64_t dim = 0) const;

  /// Like AllGather when the caller knows every member's size along `dim`
  /// (skips the size exchange). `sizes[i]` is member i's size.
  at::Tensor AllGather(const at::Tensor& local, int64_t dim,
                       const std::vector<int64_t>& sizes) const;

  /// AllGather with known sizes, split in two: Start issues the collective
  /// and returns at once (on Gloo it runs on the backend's thread, so the
  /// caller computes meanwhile); Finish waits and returns the result. Every
  /// member must Start its gathers in the same order.
  class PendingAllGather {
   public:
    at::Tensor Finish();
    bool valid() const { return work_.valid(); }

   private:
    friend class ProcessGroup;
    const ProcessGroup* group_ = nullptr;
    P2PWork work_;
    at::Tensor gathered_;
    std::vector<int64_t> sizes_;
    int64_t rows_ = 0, dim_ = 0;
  };
  PendingAllGather AllGatherStart(const at::Tensor& local, int64_t dim,
                                  const std::vector<int64_t>& sizes) const;

  /// Reduces `input` (the same shape on every member) and returns this
  /// member's torch.chunk of the result along `dim`.
  at::Tensor ReduceScatter(const at::Tensor& input, int64_t dim = 0,
                           ReduceOp op = ReduceOp::kSum) const;

  /// ReduceScatter split in two like AllGatherStart: Start issues it and
  /// returns at once, Finish waits and returns this member's chunk. Every
  /// member must Start its collectives in the same order.
  class PendingReduceScatter {
   public:
    at::Tensor Finish();
    bool valid() const { return group_ != nullptr; }

   private:
    friend class ProcessGroup;
    const ProcessGroup* group_ = nullptr;
    P2PWork work_;
    at::Tensor out_;
    int64_t length_ = 0, dim_ = 0;
    bool divide_ = false;
  };
  PendingReduceScatter ReduceScatterStart(const at::Tensor& input, int64_t dim = 0,
                                          ReduceOp op = ReduceOp::kSum) const;

  /// In place: every member ends with `src`'s tensor (`src` is a group rank).
  void Broadcast(const at::Tensor& tensor, int src) const;

  /// Point to point; `peer` is a group rank. Recv fills `tensor` in place.
  void Send(const at::Tensor& tensor, int peer, int tag = 0) const;
  void Recv(const at::Tensor& tensor, int peer, int tag = 0) const;

  /// Asynchronous point to point: returns at once; the transfer matches the
  /// peer's call with the same `tag` (in any order between tags). The tensor
  /// must stay alive and unchanged (a send) or unread (a receive) until the
  /// work's Wait returns true. `tensor` must be contiguous.
  P2PWork ISend(const at::Tensor& tensor, int peer, int tag) const;
  P2PWork IRecv(const at::Tensor& tensor, int peer, int tag) const;

  /// Returns when every member has called Barrier.
  void Barrier() const;

  /// Wall time this process has spent inside collectives of any group (for
  /// benchmarks: the share of a step spent communicating).
  static double CollectiveSeconds();
  static void ResetCollectiveSeconds();

 private:
  c10d::Backend& BackendFor(const at::Tensor& tensor) const;
  void CheckPeer(int peer, const char* what) const;

  std::string name_;
  std::vector<int> ranks_;
  int group_rank_;
  std::unique_ptr<Backends> backends_;
};

}  // namespace weft
