// The resident memory of a weft process before it does anything: what every
// rank pays for loading LibTorch (bench/README.md quotes it; the loader's
// peak-RSS target leaves 100 MB for it).
//
//   bazel-bin/bench/rss_probe
#include <ATen/ATen.h>

#include <cstdio>

#include "checkpoint/loader.h"

int main() {
  std::printf("base rss %lld\n", static_cast<long long>(weft::PeakRssBytes()));
  at::Tensor t = at::ones({4});
  std::printf("after one op %lld\n", static_cast<long long>(weft::PeakRssBytes()));
  return 0;
}
