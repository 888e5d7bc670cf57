#include "parallel/cuda_plugin.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <mutex>
#include <vector>

namespace weft {
namespace {

std::string ExecutablePath() {
  char buffer[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buffer, sizeof(buffer) - 1);
  if (n <= 0) return "";
  return std::string(buffer, static_cast<size_t>(n));
}

std::string Dirname(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

struct Loaded {
  const CudaPlugin* plugin = nullptr;
  std::string why;
};

Loaded Load() {
  Loaded loaded;
#if !WEFT_WITH_NCCL
  loaded.why = "this build of weft has no CUDA (its LibTorch or NCCL was not found at build time)";
  return loaded;
#else
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("WEFT_CUDA_PLUGIN")) candidates.push_back(env);
  std::string exe = ExecutablePath();
  std::string dir = Dirname(exe);
  candidates.push_back(dir + "/libweft_cuda.so");
  candidates.push_back(dir + "/parallel/libweft_cuda.so");
  candidates.push_back(exe + ".runfiles/weft/parallel/libweft_cuda.so");
  if (const char* runfiles = std::getenv("RUNFILES_DIR")) {
    candidates.push_back(std::string(runfiles) + "/weft/parallel/libweft_cuda.so");
  }
  std::string errors;
  for (const std::string& path : candidates) {
    if (::access(path.c_str(), R_OK) != 0) continue;
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (handle == nullptr) {
      errors += std::string(errors.empty() ? "" : "; ") + ::dlerror();
      continue;
    }
    auto entry = reinterpret_cast<const CudaPlugin* (*)()>(::dlsym(handle, "weft_cuda_plugin"));
    if (entry == nullptr) {
      errors += "; " + path + " has no weft_cuda_plugin symbol";
      continue;
    }
    loaded.plugin = entry();
    return loaded;
  }
  loaded.why = errors.empty() ? "libweft_cuda.so not found (set WEFT_CUDA_PLUGIN to its path)"
                              : "libweft_cuda.so did not load: " + errors;
  return loaded;
#endif
}

}  // namespace

const CudaPlugin* GetCudaPlugin(std::string* why) {
  static const Loaded* loaded = new Loaded(Load());
  if (loaded->plugin == nullptr && why != nullptr) *why = loaded->why;
  return loaded->plugin;
}

bool MachineHasNvidiaDevices() { return ::access("/dev/nvidiactl", F_OK) == 0; }

DeviceMemory CudaDeviceMemory() {
  DeviceMemory memory;
  memory.check = [](c10::Device) {
    std::string why;
    if (GetCudaPlugin(&why) == nullptr) return absl::FailedPreconditionError(why);
    return absl::OkStatus();
  };
  memory.reserve = [](c10::Device device, uint64_t bytes) {
    return GetCudaPlugin()->reserve(device.index(), bytes);
  };
  return memory;
}

}  // namespace weft
