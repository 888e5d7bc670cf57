#include "checkpoint/loader.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <malloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"

namespace weft {
namespace {

constexpr uint64_t kAlign = 64;
constexpr uint64_t kPreadChunk = 4 << 20;

struct Planned {
  const LoadRequest* request;
  const SafetensorsFile* file;
  const TensorEntry* entry;
  size_t file_index;
  at::ScalarType dtype;
  std::vector<std::vector<Range>> ranges;  // one list per dim, full dims filled in
  std::vector<int64_t> out_shape;
  uint64_t out_bytes;
  const uint8_t* view = nullptr;  // zero_copy: the bytes in the mapping, else null
};

bool ContiguousBlock(const std::vector<Range>& block, const std::vector<int64_t>& shape);
uint64_t FlatOffset(const std::vector<Range>& block, const std::vector<int64_t>& shape);

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<Planned> Plan(const Checkpoint& ckpt, const LoadRequest& r,
                             const std::map<const SafetensorsFile*, size_t>& file_index,
                             const DeviceMemory& device_memory) {
  const Checkpoint::Located* at = ckpt.Find(r.name);
  if (at == nullptr) {
    return absl::NotFoundError(absl::StrCat("checkpoint has no tensor '", r.name, "'"));
  }
  const TensorEntry& e = *at->entry;
  Planned p{&r, at->file, &e, file_index.at(at->file), r.dtype.value_or(e.dtype), {}, {}, 0};
  if (!r.slice.empty() && r.slice.size() != e.shape.size()) {
    return absl::InvalidArgumentError(absl::StrCat("slice of '", r.name, "' has ", r.slice.size(),
                                                   " dims but the tensor has ", e.shape.size(),
                                                   " (shape ", ShapeText(e.shape), ")"));
  }
  for (size_t d = 0; d < e.shape.size(); ++d) {
    std::vector<Range> ranges =
        r.slice.empty() || r.slice[d].empty() ? std::vector<Range>{{0, e.shape[d]}} : r.slice[d];
    int64_t length = 0;
    for (const Range& range : ranges) {
      if (range.start < 0 || range.start > range.end || range.end > e.shape[d]) {
        return absl::OutOfRangeError(absl::StrCat(
            "slice of '", r.name, "' dim ", d, ": range [", range.start, ", ", range.end,
            ") is not inside [0, ", e.shape[d], ") (shape ", ShapeText(e.shape), ")"));
      }
      length += range.end - range.start;
    }
    p.ranges.push_back(std::move(ranges));
    p.out_shape.push_back(length);
  }
  uint64_t numel = 1;
  for (int64_t s : p.out_shape) numel *= static_cast<uint64_t>(s);
  p.out_bytes = numel * c10::elementSize(p.dtype);
  // Zero-copy: one contiguous, aligned run of the file in the requested dtype.
  if (r.zero_copy && r.device.is_cpu() && p.dtype == e.dtype && numel > 0) {
    bool one_run = !e.shape.empty();
    std::vector<Range> block;
    for (const auto& ranges : p.ranges) {
      one_run = one_run && ranges.size() == 1;
      if (one_run) block.push_back(ranges[0]);
    }
    if (one_run && ContiguousBlock(block, e.shape)) {
      const uint64_t element = c10::elementSize(e.dtype);
      const uint8_t* bytes = at->file->mapping()->data() + at->file->header().data_offset +
                             e.begin + FlatOffset(block, e.shape) * element;
      if (reinterpret_cast<uintptr_t>(bytes) % element == 0) p.view = bytes;
    }
  }
  if (!r.device.is_cpu() && !r.device.is_cuda()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", r.name, "' requested on ", r.device.str(), " (expected cpu or cuda)"));
  }
  if (r.device.is_cuda()) {
    absl::Status usable =
        device_memory.check
            ? device_memory.check(r.device)
            : absl::FailedPreconditionError("the loader was given no device memory");
    if (!usable.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("'", r.name, "' requested on ", r.device.str(),
                       ", but CUDA is unavailable: ", usable.message()));
    }
  }
  return p;
}

uint64_t RoundUp(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// The CPU arena: one anonymous mapping, page-aligned, released with munmap.
// (Transparent huge pages were measured slower here: on a VM whose host backs
// guest memory lazily, a 2 MiB first touch stalls longer than 512 small ones.)
at::Tensor CpuArena(uint64_t bytes) {
  if (bytes == 0) return at::empty({0}, at::TensorOptions().dtype(at::kByte));
  void* addr = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TORCH_CHECK(addr != MAP_FAILED, "mmap of a ", bytes,
              "-byte arena failed: ", std::strerror(errno));
  return at::from_blob(
      addr, {static_cast<int64_t>(bytes)}, [bytes](void* p) { ::munmap(p, bytes); },
      at::TensorOptions().dtype(at::kByte));
}

// c10::Device has no ordering; maps key on (type, index).
using DeviceKey = std::pair<int, int>;
DeviceKey Key(c10::Device d) { return {static_cast<int>(d.type()), d.index()}; }

// One pread: `length` bytes at `offset` of `fd` into `dst`.
struct ReadJob {
  int fd;
  uint8_t* dst;
  uint64_t length;
  uint64_t offset;
  const std::string* path;
};

// Splits a contiguous read into jobs of at most kPreadChunk bytes.
void AddReadJobs(std::vector<ReadJob>& jobs, int fd, uint8_t* dst, uint64_t length, uint64_t offset,
                 const std::string* path) {
  for (uint64_t done = 0; done < length; done += kPreadChunk) {
    jobs.push_back({fd, dst + done, std::min(kPreadChunk, length - done), offset + done, path});
  }
}

// Backs [dst, dst + length) of the arena with memory in one call
// (MADV_POPULATE_WRITE, Linux >= 5.14) just before the pread fills it: the
// kernel allocates the pages in one loop instead of taking a page fault per 4
// KiB in the middle of the pread's copy. Backing new memory is most of the
// loader's time (bench/README.md); this way the two halves of each job run at
// full speed on every thread (2.2 GB: 0.46 s instead of 0.55 s on two cores).
// Best effort: on older kernels (EINVAL) the pread faults the pages in as
// before, and any real error surfaces in the pread.
void Populate(uint8_t* dst, uint64_t length) {
#ifdef MADV_POPULATE_WRITE
  static std::atomic<bool> unsupported{false};
  if (length == 0 || unsupported.load(std::memory_order_relaxed)) return;
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  uintptr_t begin = reinterpret_cast<uintptr_t>(dst) / page * page;
  uintptr_t end = (reinterpret_cast<uintptr_t>(dst) + length + page - 1) / page * page;
  if (::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE) != 0 &&
      errno == EINVAL) {
    unsupported.store(true, std::memory_order_relaxed);
  }
#else
  (void)dst;
  (void)length;
#endif
}

// Runs the jobs on `threads` threads (weft is built without OpenMP, so
// at::parallel_for would run serially here).
void RunReadJobs(const std::vector<ReadJob>& jobs, int threads) {
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&] {
    for (size_t j; (j = next.fetch_add(1)) < jobs.size();) {
      const ReadJob& job = jobs[j];
      Populate(job.dst, job.length);
      uint64_t done = 0;
      while (done < job.length) {
        ssize_t n = ::pread(job.fd, job.dst + done, job.length - done,
                            static_cast<off_t>(job.offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (!error) {
            error = std::make_exception_ptr(std::runtime_error(
                absl::StrCat("pread(", *job.path, ") at offset ", job.offset + done, ": ",
                             n == 0 ? "unexpected end of file" : std::strerror(errno))));
          }
          next = jobs.size();
          return;
        }
        done += static_cast<uint64_t>(n);
      }
    }
  };
  std::vector<std::thread> pool;
  int n = std::max(1, std::min<int>(threads, static_cast<int>(jobs.size())));
  for (int t = 1; t < n; ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

// Visits every block of the cartesian product of per-dim ranges, with the
// block's offset in the destination along every dim.
template <typename Fn>
void ForEachBlock(const std::vector<std::vector<Range>>& ranges, Fn&& fn) {
  size_t dims = ranges.size();
  if (dims == 0) return;  // 0-d tensors are copied by the caller
  std::vector<size_t> index(dims, 0);
  std::vector<Range> block(dims);
  std::vector<int64_t> dst_offset(dims, 0);
  while (true) {
    for (size_t d = 0; d < dims; ++d) {
      block[d] = ranges[d][index[d]];
      int64_t off = 0;
      for (size_t k = 0; k < index[d]; ++k) off += ranges[d][k].end - ranges[d][k].start;
      dst_offset[d] = off;
    }
    fn(block, dst_offset);
    size_t d = dims;
    while (d > 0) {
      --d;
      if (++index[d] < ranges[d].size()) break;
      index[d] = 0;
      if (d == 0) return;
    }
  }
}

// True when `block` of a row-major tensor of `shape` is one contiguous run:
// every dim before the last partial one has length 1 (dims after it are
// whole by definition).
bool ContiguousBlock(const std::vector<Range>& block, const std::vector<int64_t>& shape) {
  int last_partial = -1;
  for (size_t d = 0; d < block.size(); ++d) {
    if (block[d].start != 0 || block[d].end != shape[d]) last_partial = static_cast<int>(d);
  }
  for (int d = 0; d < last_partial; ++d) {
    if (block[d].end - block[d].start != 1) return false;
  }
  return true;
}

uint64_t FlatOffset(const std::vector<Range>& block, const std::vector<int64_t>& shape) {
  uint64_t offset = 0;
  for (size_t d = 0; d < block.size(); ++d) offset = offset * shape[d] + block[d].start;
  return offset;
}

}  // namespace

int64_t PeakRssBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}

int64_t CurrentRssBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}

PeakRssMeter::PeakRssMeter() {
  ::malloc_trim(0);
  std::ofstream reset("/proc/self/clear_refs");
  reset << "5";  // resets VmHWM to VmRSS
  reset.flush();
  if (reset) start_ = CurrentRssBytes();
}

int64_t PeakRssMeter::Peak() const {
  if (start_ < 0) return -1;
  const int64_t peak = PeakRssBytes();
  return peak < 0 ? -1 : std::max<int64_t>(0, peak - start_);
}

namespace {

// 1. Validates every request before anything is allocated, and orders the
// plan by file and offset.
absl::StatusOr<std::vector<Planned>> PlanAll(const Checkpoint& checkpoint,
                                             const std::vector<LoadRequest>& requests,
                                             const DeviceMemory& device_memory) {
  std::map<const SafetensorsFile*, size_t> file_index;
  for (size_t i = 0; i < checkpoint.files().size(); ++i) {
    file_index[checkpoint.files()[i].get()] = i;
  }
  std::vector<Planned> plan;
  std::set<std::string> names;
  for (const LoadRequest& r : requests) {
    if (!names.insert(r.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("'", r.name, "' is requested twice"));
    }
    auto p = Plan(checkpoint, r, file_index, device_memory);
    if (!p.ok()) return p.status();
    plan.push_back(std::move(p).value());
  }
  std::sort(plan.begin(), plan.end(), [](const Planned& a, const Planned& b) {
    return a.file_index != b.file_index ? a.file_index < b.file_index
                                        : a.entry->begin < b.entry->begin;
  });
  return plan;
}

// 2. Reserves each device's total at once and makes every destination
// tensor: views of one arena on the CPU, allocations carved from the warmed
// caching allocator on CUDA.
void Allocate(const std::vector<Planned>& plan, const DeviceMemory& device_memory,
              LoadResult& result) {
  std::map<DeviceKey, std::pair<c10::Device, uint64_t>> totals;
  for (const Planned& p : plan) {
    if (p.view != nullptr) continue;  // a view of the file: no memory of its own
    auto it = totals.try_emplace(Key(p.request->device), p.request->device, 0).first;
    it->second.second += RoundUp(p.out_bytes);
  }
  std::map<DeviceKey, at::Tensor> arenas;
  for (const auto& [key, device_total] : totals) {
    const c10::Device device = device_total.first;
    const uint64_t total = device_total.second;
    if (device.is_cpu()) {
      arenas[key] = CpuArena(total);
      result.stats.bytes_reserved += total;
    }
    if (device.is_cuda()) {
      // Warm LibTorch's caching allocator: one block for every parameter,
      // freed at once and then carved up by the allocations below.
      result.stats.bytes_reserved += device_memory.reserve(device, total);
    }
  }
  std::map<DeviceKey, uint64_t> cursor;
  for (const Planned& p : plan) {
    const c10::Device device = p.request->device;
    at::Tensor t;
    if (p.view != nullptr) {
      // The deleter keeps the file mapped as long as the tensor lives.
      std::shared_ptr<MappedFile> mapping = p.file->mapping();
      t = at::from_blob(
          const_cast<uint8_t*>(p.view), p.out_shape, [mapping](void*) {},
          at::TensorOptions().dtype(p.dtype));
      result.stats.bytes_mapped += p.out_bytes;
    } else if (device.is_cpu()) {
      uint64_t& off = cursor[Key(device)];
      t = arenas[Key(device)]
              .narrow(0, static_cast<int64_t>(off), static_cast<int64_t>(p.out_bytes))
              .view(p.dtype)
              .view(p.out_shape);
      off += RoundUp(p.out_bytes);
    } else {
      t = at::empty(p.out_shape, at::TensorOptions().dtype(p.dtype).device(device));
    }
    result.tensors.emplace(p.request->name, t);
    result.stats.bytes_loaded += p.out_bytes;
  }
}

// 3. Copies, file by file, in file order. Contiguous same-dtype blocks
// become pread jobs, run in parallel at the end of each file; the rest is
// copied from the mapping, whose pages are released after each tensor.
void Copy(const std::vector<Planned>& plan, int threads, LoadResult& result) {
  std::vector<ReadJob> jobs;
  for (size_t i = 0; i < plan.size(); ++i) {
    const Planned& p = plan[i];
    const TensorEntry& e = *p.entry;
    const MappedFile& mapping = *p.file->mapping();
    if (p.view != nullptr) {  // zero-copy: nothing to read now (the pages come on first use)
      if (i + 1 == plan.size() || plan[i + 1].file_index != p.file_index) {
        RunReadJobs(jobs, threads);
        jobs.clear();
      }
      continue;
    }
    at::Tensor dst = result.tensors.at(p.request->name);
    const uint64_t src_element = c10::elementSize(e.dtype);
    const uint64_t file_base = p.file->header().data_offset + e.begin;
    at::Tensor src_view;  // the mapping, made only when needed
    bool touched_mapping = false;
    ForEachBlock(
        p.ranges, [&](const std::vector<Range>& block, const std::vector<int64_t>& dst_offset) {
          uint64_t numel = 1;
          for (const Range& r : block) numel *= static_cast<uint64_t>(r.end - r.start);
          if (numel == 0) return;
          result.stats.bytes_read += numel * src_element;
          at::Tensor dst_block = dst;
          for (size_t d = 0; d < block.size(); ++d) {
            dst_block = dst_block.narrow(d, dst_offset[d], block[d].end - block[d].start);
          }
          if (p.dtype == e.dtype && dst.is_cpu() && ContiguousBlock(block, e.shape) &&
              dst_block.is_contiguous()) {
            result.stats.bytes_pread += numel * src_element;
            AddReadJobs(jobs, mapping.fd(), static_cast<uint8_t*>(dst_block.data_ptr()),
                        numel * src_element, file_base + FlatOffset(block, e.shape) * src_element,
                        &mapping.path());
            return;
          }
          if (!src_view.defined()) {
            src_view = at::from_blob(const_cast<uint8_t*>(mapping.data() + file_base), e.shape,
                                     at::TensorOptions().dtype(e.dtype));
          }
          touched_mapping = true;
          at::Tensor src_block = src_view;
          for (size_t d = 0; d < block.size(); ++d) {
            src_block = src_block.narrow(d, block[d].start, block[d].end - block[d].start);
          }
          dst_block.copy_(src_block);
        });
    if (e.shape.empty()) {  // 0-d: one element, no ranges to visit
      result.stats.bytes_read += src_element;
      at::Tensor src = at::from_blob(const_cast<uint8_t*>(mapping.data() + file_base), {},
                                     at::TensorOptions().dtype(e.dtype));
      dst.copy_(src);
      touched_mapping = true;
    }
    if (touched_mapping) mapping.Release(file_base, e.nbytes());
    if (i + 1 == plan.size() || plan[i + 1].file_index != p.file_index) {
      RunReadJobs(jobs, threads);
      jobs.clear();
    }
  }
}

}  // namespace

absl::StatusOr<LoadResult> LoadCheckpoint(const Checkpoint& checkpoint,
                                          const std::vector<LoadRequest>& requests,
                                          const LoadOptions& options) {
  const auto start = std::chrono::steady_clock::now();  // everything the caller waits for
  ASSIGN_OR_RETURN(std::vector<Planned> plan, PlanAll(checkpoint, requests, options.device_memory));
  LoadResult result;
  Allocate(plan, options.device_memory, result);
  try {
    Copy(plan, options.threads > 0 ? options.threads : at::get_num_threads(), result);
  } catch (const std::exception& ex) {
    return absl::UnavailableError(absl::StrCat("loading failed: ", FirstLine(ex.what())));
  }
  result.stats.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.stats.gb_per_s =
      result.stats.seconds > 0 ? result.stats.bytes_read / result.stats.seconds / 1e9 : 0;
  result.stats.peak_rss_bytes = PeakRssBytes();
  return result;
}

}  // namespace weft
