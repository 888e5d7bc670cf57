// weft's loader on a checkpoint, as one tensor-parallel rank would load it:
// every 2-D weight sharded along dim 0 over --tp ranks (torch.chunk), 1-D
// weights replicated. Prints one JSON line: seconds from opening the checkpoint
// to the last parameter in memory, and the loader's own figures.
//
//   bazel-bin/bench/load_bench --model DIR --tp 2 --rank 1 [--dtype bf16|keep]
//                              [--zero-copy 1] [--hold SECONDS] [--device cuda --warmup 0|1]
//
// --zero-copy 1 loads as weft forward does (views of the mapped files where
// the bytes fit); --hold touches every parameter (as a forward would read
// it), prints the JSON line and sleeps, so several processes can be measured
// holding the model at once (bench/run_zero_copy_bench.sh). --device cuda
// loads onto the GPU with LibTorch's caching allocator warmed by one
// reservation of every byte first (--warmup 1, the default) or tensor by
// tensor (--warmup 0); the time includes a synchronize.
#include <ATen/ATen.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "base/slice.h"
#include "checkpoint/loader.h"
#include "parallel/cuda_plugin.h"

int main(int argc, char** argv) {
  std::string model;
  int tp = 1, rank = 0, hold = 0;
  bool keep = true, zero_copy = false, cuda = false, warmup = true;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--model")
      model = argv[i + 1];
    else if (flag == "--tp")
      tp = std::atoi(argv[i + 1]);
    else if (flag == "--rank")
      rank = std::atoi(argv[i + 1]);
    else if (flag == "--zero-copy")
      zero_copy = std::atoi(argv[i + 1]) != 0;
    else if (flag == "--device")
      cuda = std::strcmp(argv[i + 1], "cuda") == 0;
    else if (flag == "--warmup")
      warmup = std::atoi(argv[i + 1]) != 0;
    else if (flag == "--hold")
      hold = std::atoi(argv[i + 1]);
    else if (flag == "--dtype")
      keep = std::strcmp(argv[i + 1], "keep") == 0 || std::strcmp(argv[i + 1], "bf16") == 0;
    else {
      std::fprintf(stderr, "load_bench: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  // Timed like the Python peers time load_file/from_pretrained: from opening
  // the checkpoint (headers, mappings) to the last parameter in memory.
  const auto start = std::chrono::steady_clock::now();
  auto ckpt = weft::Checkpoint::Open(model);
  if (!ckpt.ok()) {
    std::fprintf(stderr, "load_bench: %s\n", std::string(ckpt.status().message()).c_str());
    return 2;
  }
  std::vector<weft::LoadRequest> requests;
  for (const auto& [name, at] : (*ckpt)->tensors()) {
    weft::LoadRequest r{name,
                        keep ? c10::nullopt : c10::optional<at::ScalarType>(at::kFloat),
                        cuda ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU),
                        {},
                        zero_copy};
    if (at.entry->shape.size() == 2 && tp > 1) {
      weft::ChunkSpan s = weft::ChunkOf(at.entry->shape[0], tp, rank);
      r.slice = {{{s.offset, s.offset + s.length}}, {}};
    }
    requests.push_back(std::move(r));
  }
  weft::LoadOptions options;
  if (cuda) {
    options.device_memory = weft::CudaDeviceMemory();
    if (!warmup) options.device_memory.reserve = [](c10::Device, uint64_t) { return uint64_t{0}; };
  }
  auto result = weft::LoadCheckpoint(**ckpt, requests, options);
  if (cuda && result.ok() && !result->tensors.empty()) {
    // The copies run in order on one stream: a result read after them waits for all.
    (void)result->tensors.begin()->second.sum().item<double>();
  }
  if (!result.ok()) {
    std::fprintf(stderr, "load_bench: %s\n", std::string(result.status().message()).c_str());
    return 2;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double checksum = 0;
  if (hold > 0) {  // every byte read once, as a forward pass reads the weights
    for (const auto& [name, t] : result->tensors) checksum += t.sum().item<double>();
  }
  const weft::LoadStats& s = result->stats;
  std::printf(
      "{\"tp\": %d, \"rank\": %d, \"bytes_read\": %llu, \"bytes_pread\": %llu, \"bytes_loaded\": "
      "%llu, \"seconds\": %.4f, \"loader_seconds\": %.4f, "
      "\"gb_per_s\": %.3f, \"peak_rss_bytes\": %lld, \"bytes_mapped\": %llu, \"checksum\": %g}\n",
      tp, rank, static_cast<unsigned long long>(s.bytes_read),
      static_cast<unsigned long long>(s.bytes_pread),
      static_cast<unsigned long long>(s.bytes_loaded), seconds, s.seconds,
      s.bytes_read / seconds / 1e9, static_cast<long long>(s.peak_rss_bytes),
      static_cast<unsigned long long>(s.bytes_mapped), checksum);
  std::fflush(stdout);
  if (hold > 0) ::sleep(static_cast<unsigned>(hold));
  return 0;
}
