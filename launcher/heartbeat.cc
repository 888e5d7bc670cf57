#include "launcher/heartbeat.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace weft {

struct Heartbeat::State {
  std::string path;
  std::mutex mu;
  std::condition_variable changed;
  int64_t step = -1;
  std::string phase = "starting";
  bool dirty = true;
};

namespace {

constexpr std::chrono::milliseconds kBeatPeriod(500);

// Writes the record next to the file and renames it over: a reader sees the
// old line or the new one, never half of one.
void Write(const std::string& path, int64_t beat, int64_t step, const std::string& phase) {
  const std::string tmp = path + ".tmp";
  if (std::FILE* f = std::fopen(tmp.c_str(), "w")) {
    std::fprintf(f, "%lld %lld %s\n", static_cast<long long>(beat), static_cast<long long>(step),
                 phase.c_str());
    if (std::fclose(f) == 0) std::rename(tmp.c_str(), path.c_str());
  }
}

}  // namespace

Heartbeat& Heartbeat::Get() {
  static Heartbeat* heartbeat = [] {
    auto* h = new Heartbeat();
    const char* path = std::getenv(kHeartbeatFileEnv);
    if (path == nullptr || *path == '\0') return h;
    h->state_ = new State();
    h->state_->path = path;
    std::thread([s = h->state_] {
      for (int64_t beat = 1;; ++beat) {
        int64_t step;
        std::string phase;
        {
          std::unique_lock<std::mutex> lock(s->mu);
          s->changed.wait_for(lock, kBeatPeriod, [s] { return s->dirty; });
          s->dirty = false;
          step = s->step;
          phase = s->phase;
        }
        Write(s->path, beat, step, phase);
      }
    }).detach();
    return h;
  }();
  return *heartbeat;
}

void Heartbeat::Progress(int64_t step, const std::string& phase) {
  if (state_ == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->step == step && state_->phase == phase) return;
    state_->step = step;
    state_->phase = phase;
    state_->dirty = true;
  }
  state_->changed.notify_one();
}

std::optional<HeartbeatRecord> ReadHeartbeat(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return std::nullopt;
  std::istringstream fields(line);
  HeartbeatRecord r;
  if (!(fields >> r.beat >> r.step)) return std::nullopt;
  std::getline(fields >> std::ws, r.phase);
  return r;
}

}  // namespace weft
