// The physical limits for loading, read with a plain read() loop:
//   default: every file sequentially into one reused 16 MiB buffer (the
//            page cache's read rate, the "sequential-read limit");
//   --fresh: into one freshly mapped buffer of the files' total size (that
//            rate plus the cost of first-touching new memory, which any
//            loader that materialises the weights must pay).
//
//   bazel-bin/bench/seqread [--fresh] FILE...
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  bool fresh = argc > 1 && std::string(argv[1]) == "--fresh";
  int first = fresh ? 2 : 1;
  unsigned long long size = 0;
  for (int i = first; i < argc; ++i) {
    struct stat st {};
    if (::stat(argv[i], &st) != 0) {
      std::fprintf(stderr, "seqread: stat(%s): %s\n", argv[i], std::strerror(errno));
      return 2;
    }
    size += st.st_size;
  }
  std::vector<char> small(16 << 20);
  auto start = std::chrono::steady_clock::now();
  char* buffer = small.data();
  if (fresh) {
    void* addr = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (addr == MAP_FAILED) return 2;
    buffer = static_cast<char*>(addr);
  }
  unsigned long long total = 0;
  for (int i = first; i < argc; ++i) {
    int fd = ::open(argv[i], O_RDONLY);
    if (fd < 0) {
      std::fprintf(stderr, "seqread: open(%s): %s\n", argv[i], std::strerror(errno));
      return 2;
    }
    ssize_t n;
    while ((n = ::read(fd, fresh ? buffer + total : buffer, 16 << 20)) > 0) total += n;
    ::close(fd);
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("{\"bytes\": %llu, \"seconds\": %.4f, \"gb_per_s\": %.3f}\n", total, s,
              total / s / 1e9);
  return 0;
}
