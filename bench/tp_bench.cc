// Tensor-parallel throughput: forward and forward+backward tokens/s of one
// rank, and the share of time spent in collectives. Run under weftrun; with
// one process it measures the unsharded model.
//
//   bazel-bin/weftrun --standalone --nproc-per-node 2 bazel-bin/bench/tp_bench \
//       --model DIR --plan auto --tokens 512 --steps 5
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "models/pretrained.h"
#include "parallel/runtime.h"
#include "plans/engine.h"
#include "plans/shipped_plans.h"

int main(int argc, char** argv) {
  std::string model_dir, plan_arg = "auto";
  int64_t tokens = 512;
  int steps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--model")
      model_dir = argv[i + 1];
    else if (flag == "--plan")
      plan_arg = argv[i + 1];
    else if (flag == "--tokens")
      tokens = std::atoll(argv[i + 1]);
    else if (flag == "--steps")
      steps = std::atoi(argv[i + 1]);
  }
  weft::RuntimeOptions ro;
  ro.device = "cpu";
  auto rt = weft::Runtime::Init(ro);
  if (!rt.ok()) {
    std::fprintf(stderr, "tp_bench: %s\n", std::string(rt.status().message()).c_str());
    return 2;
  }
  const int world = (*rt)->world_size();
  // Threads per rank = cores / ranks.
  int cores = static_cast<int>(std::thread::hardware_concurrency());
  at::set_num_threads(std::max(1, cores / world));
  weft::PretrainedOptions options;
  options.dtype = at::kFloat;
  options.attn_implementation = "sdpa";
  absl::StatusOr<std::shared_ptr<weft::CausalLM>> model;
  if (world == 1) {
    model = weft::FromPretrained(model_dir, options);
  } else {
    auto plan = weft::ResolvePlanArgument(plan_arg, model_dir);
    if (!plan.ok()) {
      std::fprintf(stderr, "tp_bench: %s\n", std::string(plan.status().message()).c_str());
      return 2;
    }
    model = weft::FromPretrainedTensorParallel(model_dir, options, *plan, (*rt)->world_group());
  }
  if (!model.ok()) {
    std::fprintf(stderr, "tp_bench: %s\n", std::string(model.status().message()).c_str());
    return 2;
  }
  at::Tensor ids =
      at::randint((*model)->config.vocab_size, {1, tokens}, at::TensorOptions().dtype(at::kLong));
  weft::CausalLMInputs inputs;
  inputs.input_ids = ids;
  inputs.labels = ids;
  auto run = [&](bool backward) {
    weft::ProcessGroup::ResetCollectiveSeconds();
    (*rt)->world().Barrier();
    auto start = std::chrono::steady_clock::now();
    for (int s = 0; s < steps; ++s) {
      if (backward) {
        (*model)->zero_grad();
        (*model)->Forward(inputs).loss.backward();
      } else {
        at::NoGradGuard no_grad;
        (*model)->Forward(inputs);
      }
    }
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return std::make_pair(seconds, weft::ProcessGroup::CollectiveSeconds());
  };
  run(false);  // warm up
  auto [fwd, fwd_comm] = run(false);
  auto [step, step_comm] = run(true);
  if ((*rt)->rank() == 0) {
    std::printf(
        "{\"ranks\": %d, \"threads_per_rank\": %d, \"tokens\": %lld, \"steps\": %d, "
        "\"forward_tokens_per_s\": %.1f, \"forward_comm_share\": %.3f, "
        "\"train_tokens_per_s\": %.1f, \"train_comm_share\": %.3f}\n",
        world, at::get_num_threads(), static_cast<long long>(tokens), steps, tokens * steps / fwd,
        fwd_comm / fwd, tokens * steps / step, step_comm / step);
  }
  return 0;
}
