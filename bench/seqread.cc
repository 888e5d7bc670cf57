// The physical limits for loading, read with a plain read() loop:
//   default: every file sequentially into one reused 16 MiB buffer (the
//            page cache's read rate, the "sequential-read limit");
//   --fresh: into one freshly mapped buffer of the files' total size (that
//            rate plus the cost of first-touching new memory, which any
//            loader that materialises the weights must pay);
//   --populate: reads nothing; only backs a fresh mapping of the files' total
//            size with memory (MADV_POPULATE_WRITE, 4 MiB at a time, on every
//            core): the floor of materialising that many bytes in new memory.
//
//   bazel-bin/bench/seqread [--fresh|--populate] FILE...
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
  bool fresh = argc > 1 && std::string(argv[1]) == "--fresh";
  bool populate = argc > 1 && std::string(argv[1]) == "--populate";
  int first = fresh || populate ? 2 : 1;
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
  if (populate) {
    void* addr = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (addr == MAP_FAILED) return 2;
    const unsigned long long chunk = 4 << 20;
    std::atomic<unsigned long long> next{0};
    auto worker = [&] {
      for (unsigned long long off; (off = next.fetch_add(chunk)) < size;) {
        if (::madvise(static_cast<char*>(addr) + off, std::min(chunk, size - off),
                      MADV_POPULATE_WRITE) != 0) {
          std::perror("seqread: madvise(MADV_POPULATE_WRITE)");
          std::exit(2);
        }
      }
    };
    std::vector<std::thread> pool;
    for (unsigned t = 1; t < std::max(1u, std::thread::hardware_concurrency()); ++t)
      pool.emplace_back(worker);
    worker();
    for (std::thread& t : pool) t.join();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("{\"bytes\": %llu, \"seconds\": %.4f, \"gb_per_s\": %.3f}\n", size, s,
                size / s / 1e9);
    return 0;
  }
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
