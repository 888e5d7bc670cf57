#include "cli/smoke.h"

#include <CLI/CLI.hpp>

#include <ATen/ATen.h>

#include <iostream>
#include <memory>
#include <sstream>

#include "base/slice.h"
#include "base/status.h"
#include "parallel/device_mesh.h"
#include "parallel/runtime.h"

namespace weft {
namespace {

std::string Values(const at::Tensor& t) {
  std::ostringstream out;
  at::Tensor flat = t.to(at::kCPU, at::kDouble).flatten();
  out << "[";
  for (int64_t i = 0; i < flat.numel(); ++i) out << (i ? ", " : "") << flat[i].item<double>();
  out << "]";
  return out.str();
}

// Runs the checks; `*ok` says whether every value was the expected one.
absl::Status SmokeChecks(const SmokeOptions& options, bool* all_ok) {
  RuntimeOptions runtime_options;
  runtime_options.device = options.device;
  ASSIGN_OR_RETURN(std::unique_ptr<Runtime> rt, Runtime::Init(runtime_options));
  const int r = rt->rank();
  const int w = rt->world_size();
  const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat).device(rt->device());
  std::ostringstream report;
  bool ok = true;
  auto check = [&](const char* what, const at::Tensor& got, const at::Tensor& want) {
    bool same = got.sizes() == want.sizes() && at::allclose(got.cpu(), want.cpu());
    ok = ok && same;
    report << " " << what << "=" << Values(got)
           << (same ? "" : " (WRONG, expected " + Values(want) + ")");
  };

  // all_reduce of rank+1: 1 + 2 + ... + w everywhere.
  at::Tensor sum = at::full({2}, r + 1.0, f32);
  rt->world().AllReduce(sum);
  check("all_reduce(rank+1)", sum, at::full({2}, w * (w + 1) / 2.0, f32));

  // all_gather of torch.chunk shards of arange(2w+1): uneven on purpose.
  at::Tensor global = at::arange(2 * w + 1, f32);
  ChunkSpan span = ChunkOf(global.size(0), w, r);
  at::Tensor gathered = rt->world().AllGather(global.narrow(0, span.offset, span.length), 0);
  check("all_gather(chunks of arange)", gathered, global);

  // reduce_scatter of (rank+1) * arange(w): my chunk of the sum.
  at::Tensor scattered = rt->world().ReduceScatter(at::arange(w, f32) * (r + 1), 0);
  check("reduce_scatter", scattered, at::full({1}, r * w * (w + 1) / 2.0, f32));

  // broadcast from the last rank.
  at::Tensor b = at::full({1}, r == w - 1 ? 42.0 : -1.0, f32);
  rt->world().Broadcast(b, w - 1);
  check("broadcast(from last)", b, at::full({1}, 42.0, f32));

  // A dp x tp mesh when the world is even: all_reduce of rank within tp.
  if (w % 2 == 0) {
    ASSIGN_OR_RETURN(DeviceMesh mesh, DeviceMesh::Create(*rt, {{"dp", w / 2}, {"tp", 2}}));
    at::Tensor t = at::full({1}, static_cast<double>(r), f32);
    mesh["tp"].AllReduce(t);
    int base = r / 2 * 2;
    check("tp.all_reduce(rank)", t, at::full({1}, 2.0 * base + 1, f32));
  }
  rt->world().Barrier();
  std::cout << "rank " << r << "/" << w << " (" << LauncherName(rt->launch_env().launcher) << ", "
            << rt->device() << "):" << report.str() << (ok ? " OK" : " FAILED") << std::endl;
  *all_ok = ok;
  return absl::OkStatus();
}

}  // namespace

int RunSmoke(const SmokeOptions& options) {
  bool all_ok = false;
  int code = RunCommand("smoke", std::cerr, [&] { return SmokeChecks(options, &all_ok); });
  if (code != kExitOk) return code;
  return all_ok ? kExitOk : kExitRunFailed;
}

Subcommand AddSmoke(CLI::App& app) {
  auto options = std::make_shared<SmokeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "smoke", "Run every collective on every rank and print what each computed.");
  cmd->add_option("--device", options->device, "cpu, cuda or auto")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  return {cmd, [options] { return RunSmoke(*options); }};
}

}  // namespace weft
