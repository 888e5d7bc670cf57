// Fused experts, batched vs transformers' loop over experts: forward and
// backward of one MoeExperts layer on random routing, timed in-process
// (bench/README.md, "MoE experts").
//
//   bazel build //bench:moe_bench
//   bazel-bin/bench/moe_bench --batched 1 --experts 32 --hidden 512 \
//       --intermediate 256 --top-k 4 --tokens 2048 --steps 5
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "models/layers.h"

int main(int argc, char** argv) {
  int64_t experts = 32, hidden = 512, intermediate = 256, top_k = 4, tokens = 2048, steps = 5;
  bool batched = true;
  for (int a = 1; a + 1 < argc; a += 2) {
    const std::string flag = argv[a];
    const int64_t v = std::atoll(argv[a + 1]);
    if (flag == "--batched")
      batched = v != 0;
    else if (flag == "--experts")
      experts = v;
    else if (flag == "--hidden")
      hidden = v;
    else if (flag == "--intermediate")
      intermediate = v;
    else if (flag == "--top-k")
      top_k = v;
    else if (flag == "--tokens")
      tokens = v;
    else if (flag == "--steps")
      steps = v;
    else {
      std::fprintf(stderr, "unknown flag %s\n", argv[a]);
      return 2;
    }
  }
  at::manual_seed(0);
  weft::MoeExperts layer(weft::MoeExpertsOptions(experts, hidden, intermediate).batched(batched));
  layer.ReplaceParameter("gate_up_proj",
                         (at::randn({experts, 2 * intermediate, hidden}) * 0.02).requires_grad_());
  layer.ReplaceParameter("down_proj",
                         (at::randn({experts, hidden, intermediate}) * 0.02).requires_grad_());
  const at::Tensor x = at::randn({tokens, hidden}).requires_grad_();
  auto [weights, index] = at::softmax(at::randn({tokens, experts}), -1).topk(top_k, -1);
  double best = 1e30, total = 0;
  for (int64_t s = 0; s <= steps; ++s) {  // step 0 warms up
    const auto start = std::chrono::steady_clock::now();
    layer.forward(x, index, weights).sum().backward();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (s == 0) continue;
    best = std::min(best, seconds);
    total += seconds;
  }
  std::printf(
      "%s experts=%ld hidden=%ld intermediate=%ld top_k=%ld tokens=%ld threads=%d: "
      "forward+backward mean %.4f s, best %.4f s\n",
      batched ? "batched" : "loop", experts, hidden, intermediate, top_k, tokens,
      at::get_num_threads(), total / steps, best);
  return 0;
}
