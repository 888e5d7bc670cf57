// The physical limit for loading: read every file of a checkpoint
// sequentially with read() into one 16 MiB buffer, and report the rate.
//
//   bazel-bin/bench/seqread FILE...
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

int main(int argc, char** argv) {
  std::vector<char> buffer(16 << 20);
  auto start = std::chrono::steady_clock::now();
  unsigned long long total = 0;
  for (int i = 1; i < argc; ++i) {
    int fd = ::open(argv[i], O_RDONLY);
    if (fd < 0) {
      std::fprintf(stderr, "seqread: open(%s): %s\n", argv[i], std::strerror(errno));
      return 2;
    }
    ssize_t n;
    while ((n = ::read(fd, buffer.data(), buffer.size())) > 0) total += n;
    ::close(fd);
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("{\"bytes\": %llu, \"seconds\": %.4f, \"gb_per_s\": %.3f}\n", total, s,
              total / s / 1e9);
  return 0;
}
