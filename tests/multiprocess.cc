#include "tests/multiprocess.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "base/text_file.h"
#include "gtest/gtest.h"
#include "parallel/rendezvous.h"
#include "parallel/runtime.h"

extern char** environ;

namespace weft::testing {
namespace {

constexpr char kChildVar[] = "WEFT_TEST_RANK_CHILD";

std::string ReadFile(const std::string& path) { return ReadTextFile(path).value_or(""); }

}  // namespace

std::unique_ptr<Runtime> InitCpuRuntime() {
  RuntimeOptions options;
  options.device = "cpu";
  options.timeout = std::chrono::seconds(60);
  options.collective_timeout = std::chrono::seconds(60);
  auto runtime = Runtime::Init(options);
  if (!runtime.ok()) {
    ADD_FAILURE() << runtime.status();
    std::_Exit(3);
  }
  return std::move(runtime).value();
}

bool IsRankChild() { return std::getenv(kChildVar) != nullptr; }

bool RankResults::AllSucceeded() const {
  if (timed_out) return false;
  for (int code : exit_codes) {
    if (code != 0) return false;
  }
  return true;
}

std::string RankResults::Describe() const {
  std::ostringstream out;
  if (timed_out) out << "(timed out; every rank was killed)\n";
  for (size_t r = 0; r < exit_codes.size(); ++r) {
    out << "---- rank " << r << " exit " << exit_codes[r] << " ----\n" << output[r] << "\n";
  }
  return out.str();
}

RankResults RunRanks(int world, const std::function<void()>& body, const RunOptions& options) {
  if (IsRankChild()) {
    body();
    bool failed = ::testing::Test::HasFailure();
    std::fflush(stdout);
    std::fflush(stderr);
    std::_Exit(failed ? 1 : 0);
  }
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string filter =
      std::string("--gtest_filter=") +
      (options.test.empty() ? std::string(info->test_suite_name()) + "." + info->name()
                            : options.test);
  int port = PickFreePort();
  int processes = options.processes < 0 ? world : options.processes;
  std::string tmp = std::getenv("TEST_TMPDIR") ? std::getenv("TEST_TMPDIR") : "/tmp";

  RankResults results;
  std::vector<pid_t> pids;
  std::vector<std::string> logs;
  for (int rank = 0; rank < processes; ++rank) {
    std::map<std::string, std::string> env;
    for (char** e = environ; *e; ++e) {
      std::string kv = *e;
      size_t eq = kv.find('=');
      env[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    // Children must not write the parent's test report or premature-exit file.
    for (const char* var : {"XML_OUTPUT_FILE", "GTEST_OUTPUT", "TEST_PREMATURE_EXIT_FILE",
                            "GTEST_SHARD_INDEX", "GTEST_TOTAL_SHARDS", "TEST_SHARD_STATUS_FILE"}) {
      env.erase(var);
    }
    env[kChildVar] = "1";
    env["RANK"] = std::to_string(rank);
    env["LOCAL_RANK"] = std::to_string(rank);
    env["WORLD_SIZE"] = std::to_string(world);
    env["LOCAL_WORLD_SIZE"] = std::to_string(world);
    env["MASTER_ADDR"] = "127.0.0.1";
    env["MASTER_PORT"] = std::to_string(port);
    env["OMP_NUM_THREADS"] = "1";
    auto apply = [&env](const std::map<std::string, std::string>& overrides) {
      for (const auto& [k, v] : overrides) {
        if (v.empty()) {
          env.erase(k);
        } else {
          env[k] = v;
        }
      }
    };
    apply(options.env);
    if (auto it = options.rank_env.find(rank); it != options.rank_env.end()) apply(it->second);
    for (auto& [k, v] : env) {
      if (v == "{port}") v = std::to_string(port);
    }

    std::vector<std::string> env_strings;
    for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
    std::vector<char*> envp;
    for (auto& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::string exe = "/proc/self/exe";
    std::vector<std::string> args = {exe, filter};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);

    std::string log = tmp + "/rank" + std::to_string(rank) + "_" + std::to_string(port) + ".log";
    logs.push_back(log);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    pid_t pid = -1;
    int rc = posix_spawn(&pid, exe.c_str(), &actions, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      ADD_FAILURE() << "posix_spawn of rank " << rank << " failed: " << rc;
      pid = -1;
    }
    pids.push_back(pid);
  }

  results.exit_codes.assign(processes, -1);
  std::vector<bool> done(processes, false);
  auto deadline = std::chrono::steady_clock::now() + options.timeout;
  int remaining = processes;
  for (int i = 0; i < processes; ++i) {
    if (pids[i] < 0) done[i] = true, --remaining;
  }
  while (remaining > 0) {
    for (int i = 0; i < processes; ++i) {
      if (done[i]) continue;
      int status = 0;
      if (waitpid(pids[i], &status, WNOHANG) == pids[i]) {
        done[i] = true;
        --remaining;
        results.exit_codes[i] = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
      }
    }
    if (remaining == 0) break;
    if (std::chrono::steady_clock::now() > deadline) {
      results.timed_out = true;
      for (int i = 0; i < processes; ++i) {
        if (!done[i]) kill(pids[i], SIGKILL);
      }
      for (int i = 0; i < processes; ++i) {
        int status = 0;
        if (!done[i] && waitpid(pids[i], &status, 0) == pids[i]) {
          results.exit_codes[i] = -WTERMSIG(status);
        }
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (const std::string& log : logs) {
    results.output.push_back(ReadFile(log));
    std::remove(log.c_str());
  }
  return results;
}

}  // namespace weft::testing
