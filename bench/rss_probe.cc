#include <ATen/ATen.h>
#include <cstdio>
#include "checkpoint/loader.h"
int main() {
  std::printf("base rss %lld\n", (long long)weft::PeakRssBytes());
  at::Tensor t = at::ones({4});
  std::printf("after op %lld\n", (long long)weft::PeakRssBytes());
}
