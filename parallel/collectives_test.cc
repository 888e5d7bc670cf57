// Every collective and every autograd collective, on 2 and 4 ranks over
// loopback, checked against the same math done in one process. Shapes are
// chosen so shards are uneven (and, on 4 ranks, one shard is empty).
#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "base/slice.h"
#include "gtest/gtest.h"
#include "parallel/autograd_collectives.h"
#include "parallel/device_mesh.h"
#include "parallel/runtime.h"
#include "tests/multiprocess.h"

namespace weft {
namespace {

using testing::RankResults;
using testing::RunRanks;

// A deterministic tensor every rank can build alone: the "global" value.
at::Tensor Global(std::vector<int64_t> shape, double seed) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return (at::arange(n, at::kDouble) * 0.37 + seed).sin().reshape(shape);
}

at::Tensor Chunk(const at::Tensor& t, int64_t dim, int parts, int index) {
  ChunkSpan span = ChunkOf(t.size(dim), parts, index);
  return t.narrow(dim, span.offset, span.length);
}

void ExpectClose(const at::Tensor& actual, const at::Tensor& expected, const std::string& what) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  EXPECT_TRUE(at::allclose(actual, expected, 1e-12, 1e-12)) << what << "\nactual:\n"
                                                            << actual << "\nexpected:\n"
                                                            << expected;
}

void PlainCollectives() {
  auto rt = testing::InitCpuRuntime();
  const ProcessGroup& g = rt->world();
  const int w = g.size();
  const int r = g.rank();
  ASSERT_EQ(w, rt->world_size());
  ASSERT_EQ(r, rt->rank());

  // all_reduce: sum, avg, max, min, product.
  at::Tensor base = Global({3, 5}, 1.0);
  at::Tensor sum = at::zeros_like(base), prod = at::ones_like(base);
  at::Tensor mx = base * 1, mn = base * 1;
  for (int i = 0; i < w; ++i) {
    at::Tensor v = base * (i + 1) - i;
    sum += v;
    prod *= v;
    mx = at::maximum(mx, v);
    mn = at::minimum(mn, v);
  }
  at::Tensor mine = base * (r + 1) - r;
  at::Tensor t = mine.clone();
  g.AllReduce(t);
  ExpectClose(t, sum, "all_reduce sum");
  t = mine.clone();
  g.AllReduce(t, ReduceOp::kAvg);
  ExpectClose(t, sum / w, "all_reduce avg");
  t = mine.clone();
  g.AllReduce(t, ReduceOp::kMax);
  ExpectClose(t, mx, "all_reduce max");
  t = mine.clone();
  g.AllReduce(t, ReduceOp::kMin);
  ExpectClose(t, mn, "all_reduce min");
  t = mine.clone();
  g.AllReduce(t, ReduceOp::kProduct);
  ExpectClose(t, prod, "all_reduce product");
  // A non-contiguous tensor is reduced in place too.
  at::Tensor nc = mine.clone().t();
  g.AllReduce(nc);
  ExpectClose(nc, sum.t(), "all_reduce non-contiguous");

  // all_gather, even and uneven, along dim 0, 1 and -1.
  for (auto [shape, dim] : std::vector<std::pair<std::vector<int64_t>, int64_t>>{
           {{8, 3}, 0}, {{7, 3}, 0}, {{3, 5}, 0}, {{2, 7, 3}, 1}, {{4, 5}, -1}, {{w, 2}, 0}}) {
    at::Tensor global = Global(shape, 2.0);
    int64_t d = dim < 0 ? dim + global.dim() : dim;
    at::Tensor local = Chunk(global, d, w, r).contiguous();
    ExpectClose(g.AllGather(local, dim), global,
                "all_gather dim " + std::to_string(dim) + " of " + std::to_string(shape[0]));
    std::vector<int64_t> sizes;
    for (int i = 0; i < w; ++i) sizes.push_back(ChunkOf(global.size(d), w, i).length);
    ExpectClose(g.AllGather(local, dim, sizes), global, "all_gather with known sizes");
  }

  // reduce_scatter, even and uneven, along dim 0 and 1.
  for (auto [shape, dim] : std::vector<std::pair<std::vector<int64_t>, int64_t>>{
           {{8, 2}, 0}, {{7, 2}, 0}, {{3, 2}, 0}, {{2, 5}, 1}}) {
    at::Tensor global = Global(shape, 3.0);
    at::Tensor total = at::zeros_like(global);
    for (int i = 0; i < w; ++i) total += global * (i + 1);
    at::Tensor out = g.ReduceScatter(global * (r + 1), dim);
    ExpectClose(out, Chunk(total, dim, w, r), "reduce_scatter dim " + std::to_string(dim));
    at::Tensor avg = g.ReduceScatter(global * (r + 1), dim, ReduceOp::kAvg);
    ExpectClose(avg, Chunk(total / w, dim, w, r), "reduce_scatter avg");
  }

  // broadcast from every source.
  for (int src = 0; src < w; ++src) {
    at::Tensor b = r == src ? Global({4}, src) : at::zeros({4}, at::kDouble);
    g.Broadcast(b, src);
    ExpectClose(b, Global({4}, src), "broadcast from " + std::to_string(src));
  }

  // send/recv around the ring, including an integer tensor.
  at::Tensor out_msg = Global({2, 3}, 10 + r);
  at::Tensor in_msg = at::empty({2, 3}, at::kDouble);
  int next = (r + 1) % w, prev = (r + w - 1) % w;
  if (r % 2 == 0) {
    g.Send(out_msg, next);
    g.Recv(in_msg, prev);
  } else {
    g.Recv(in_msg, prev);
    g.Send(out_msg, next);
  }
  ExpectClose(in_msg, Global({2, 3}, 10 + prev), "send/recv ring");
  at::Tensor ints = at::full({3}, r, at::kLong);
  g.AllReduce(ints);
  EXPECT_EQ(ints[0].item<int64_t>(), w * (w - 1) / 2);

  g.Barrier();
}

void AutogradCollectives() {
  auto rt = testing::InitCpuRuntime();
  const ProcessGroup& g = rt->world();
  const int w = g.size();
  const int r = g.rank();
  auto leaf = [](const at::Tensor& t) { return t.clone().requires_grad_(true); };
  // Per-rank upstream gradient weights, so the sums are not trivial.
  auto weight = [](const at::Tensor& like, int rank) {
    return Global(like.sizes().vec(), 5 + rank);
  };

  // CopyToGroup: identity forward; backward sums the ranks' gradients.
  {
    at::Tensor x = leaf(Global({3, 4}, 1));
    at::Tensor y = CopyToGroup(x, g);
    ExpectClose(y, x.detach(), "CopyToGroup forward");
    (y * weight(y, r)).sum().backward();
    at::Tensor expected = at::zeros({3, 4}, at::kDouble);
    for (int i = 0; i < w; ++i) expected += weight(y, i);
    ExpectClose(x.grad(), expected, "CopyToGroup backward");
  }
  // ReduceFromGroup: all-reduce forward; identity backward.
  {
    at::Tensor x = leaf(Global({3, 4}, 1) * (r + 1));
    at::Tensor y = ReduceFromGroup(x, g);
    ExpectClose(y, Global({3, 4}, 1) * (w * (w + 1) / 2), "ReduceFromGroup forward");
    (y * weight(y, r)).sum().backward();
    ExpectClose(x.grad(), weight(y, r), "ReduceFromGroup backward");
  }
  // GatherFromGroup: all-gather forward; backward keeps this rank's chunk.
  for (auto [shape, dim] : std::vector<std::pair<std::vector<int64_t>, int64_t>>{
           {{7, 3}, 0}, {{2, 3}, 1}, {{8, 2}, 0}}) {
    at::Tensor global = Global(shape, 2);
    at::Tensor x = leaf(Chunk(global, dim, w, r));
    at::Tensor y = GatherFromGroup(x, g, dim);
    ExpectClose(y, global, "GatherFromGroup forward");
    at::Tensor W = weight(global, 0);  // the same on every rank, as for a replicated output
    (y * W).sum().backward();
    ExpectClose(x.grad(), Chunk(W, dim, w, r), "GatherFromGroup backward");
  }
  // ScatterToGroup: split forward; backward all-gathers the chunks' gradients.
  for (auto [shape, dim] :
       std::vector<std::pair<std::vector<int64_t>, int64_t>>{{{7, 3}, 0}, {{2, 3}, 1}}) {
    at::Tensor global = Global(shape, 3);
    at::Tensor W = weight(global, 0);
    at::Tensor x = leaf(global);
    at::Tensor y = ScatterToGroup(x, g, dim);
    ExpectClose(y, Chunk(global, dim, w, r), "ScatterToGroup forward");
    (y * Chunk(W, dim, w, r)).sum().backward();
    ExpectClose(x.grad(), W, "ScatterToGroup backward");
  }
  // ReduceScatterToGroup: reduce-scatter forward; backward all-gathers.
  for (auto [shape, dim] :
       std::vector<std::pair<std::vector<int64_t>, int64_t>>{{{7, 3}, 0}, {{2, 6}, 1}}) {
    at::Tensor global = Global(shape, 4);
    at::Tensor W = weight(global, 0);
    at::Tensor x = leaf(global * (r + 1));
    at::Tensor y = ReduceScatterToGroup(x, g, dim);
    ExpectClose(y, Chunk(global * (w * (w + 1) / 2), dim, w, r), "ReduceScatterToGroup forward");
    (y * Chunk(W, dim, w, r)).sum().backward();
    ExpectClose(x.grad(), W, "ReduceScatterToGroup backward");
  }
  // A tensor-parallel MLP, column- then row-parallel, against the unsharded one:
  // y = relu(x A^T) B^T with A split by rows (colwise) and B by columns (rowwise).
  {
    at::Tensor X = Global({5, 6}, 7), A = Global({10, 6}, 8), B = Global({4, 10}, 9);
    at::Tensor xs = leaf(X), as = leaf(Chunk(A, 0, w, r)), bs = leaf(Chunk(B, 1, w, r));
    at::Tensor h = at::relu(at::matmul(CopyToGroup(xs, g), as.t()));
    at::Tensor y = ReduceFromGroup(at::matmul(h, bs.t()), g);
    at::Tensor Y0 = Global({5, 4}, 11);
    (y * Y0).sum().backward();

    at::Tensor xr = leaf(X), ar = leaf(A), br = leaf(B);
    at::Tensor yr = at::matmul(at::relu(at::matmul(xr, ar.t())), br.t());
    (yr * Y0).sum().backward();
    ExpectClose(y, yr.detach(), "TP MLP forward");
    ExpectClose(xs.grad(), xr.grad(), "TP MLP grad x");
    ExpectClose(as.grad(), Chunk(ar.grad(), 0, w, r), "TP MLP grad A shard");
    ExpectClose(bs.grad(), Chunk(br.grad(), 1, w, r), "TP MLP grad B shard");
  }
}

TEST(Collectives, TwoRanks) {
  RankResults result = RunRanks(2, PlainCollectives);
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
}

TEST(Collectives, FourRanks) {
  RankResults result = RunRanks(4, PlainCollectives);
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
}

TEST(Collectives, SingleProcess) {
  // No launcher variables at all: a world of one, every collective an identity.
  if (!testing::IsRankChild()) {
    for (const char* var : {"RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                            "SLURM_PROCID", "SLURM_NTASKS"}) {
      unsetenv(var);
    }
  }
  auto rt = testing::InitCpuRuntime();
  EXPECT_EQ(rt->world_size(), 1);
  at::Tensor t = Global({3}, 1);
  rt->world().AllReduce(t);
  ExpectClose(t, Global({3}, 1), "all_reduce on one rank");
  ExpectClose(rt->world().AllGather(t, 0), t, "all_gather on one rank");
  ExpectClose(rt->world().ReduceScatter(t, 0), t, "reduce_scatter on one rank");
}

TEST(AutogradCollectives, TwoRanks) {
  RankResults result = RunRanks(2, AutogradCollectives);
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
}

TEST(AutogradCollectives, FourRanks) {
  RankResults result = RunRanks(4, AutogradCollectives);
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
}

TEST(DeviceMesh, SubGroupsOnFourRanks) {
  RankResults result = RunRanks(4, [] {
    auto rt = testing::InitCpuRuntime();
    auto mesh = DeviceMesh::Create(*rt, {{"dp", 2}, {"tp", 2}});
    ASSERT_TRUE(mesh.ok()) << mesh.status();
    const int r = rt->rank();
    // Row-major: rank = dp * 2 + tp.
    EXPECT_EQ(mesh->coordinate("dp"), r / 2);
    EXPECT_EQ(mesh->coordinate("tp"), r % 2);
    ProcessGroup& tp = (*mesh)["tp"];
    ProcessGroup& dp = (*mesh)["dp"];
    EXPECT_EQ(tp.ranks(), (std::vector<int>{r / 2 * 2, r / 2 * 2 + 1}));
    EXPECT_EQ(dp.ranks(), (std::vector<int>{r % 2, r % 2 + 2}));
    EXPECT_EQ(tp.rank(), r % 2);
    EXPECT_EQ(dp.rank(), r / 2);
    EXPECT_EQ(mesh->RankAt({1, 0}), 2);

    at::Tensor t = at::full({2}, static_cast<double>(r));
    tp.AllReduce(t);
    EXPECT_EQ(t[0].item<double>(), (r / 2 * 2) + (r / 2 * 2 + 1));
    t = at::full({2}, static_cast<double>(r));
    dp.AllReduce(t);
    EXPECT_EQ(t[0].item<double>(), (r % 2) + (r % 2 + 2));
    // Gathers on a sub-group see only that group's shards.
    at::Tensor gathered = tp.AllGather(at::full({1 + tp.rank()}, static_cast<double>(r)), 0);
    EXPECT_EQ(gathered.size(0), 3);
    EXPECT_EQ(gathered[2].item<double>(), r / 2 * 2 + 1);

    // A 3-D mesh with a trivial axis works too.
    auto mesh3 = DeviceMesh::Create(*rt, {{"pp", 1}, {"dp", 2}, {"tp", 2}});
    ASSERT_TRUE(mesh3.ok()) << mesh3.status();
    EXPECT_EQ((*mesh3)["pp"].size(), 1);
    EXPECT_EQ((*mesh3)["tp"].ranks(), tp.ranks());
  });
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
}

}  // namespace
}  // namespace weft
