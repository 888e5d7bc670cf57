// Each misconfiguration at the runtime boundary fails with one line naming
// the thing, the value found and the value expected — and never hangs.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <iostream>
#include <map>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/device_mesh.h"
#include "parallel/rendezvous.h"
#include "parallel/runtime.h"
#include "tests/multiprocess.h"

namespace weft {
namespace {

using ::testing::HasSubstr;
using testing::RankResults;
using testing::RunOptions;
using testing::RunRanks;

EnvLookup Env(std::map<std::string, std::string> vars) {
  return [vars](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

RuntimeOptions Cpu(int timeout_s) {
  RuntimeOptions options;
  options.device = "cpu";
  options.timeout = std::chrono::seconds(timeout_s);
  options.collective_timeout = std::chrono::seconds(timeout_s);
  return options;
}

// Child body: Init must fail; prints the one-line error for the parent.
void ExpectInitFails() {
  auto rt = Runtime::Init(Cpu(3));
  if (rt.ok()) {
    ADD_FAILURE() << "rank " << (*rt)->rank() << ": Init succeeded";
    return;
  }
  std::cout << "ERROR: " << rt.status().message() << std::endl;
  EXPECT_EQ(std::string(rt.status().message()).find('\n'), std::string::npos);
}

TEST(RuntimeErrors, RankThatNeverArrivesIsNamed) {
  RunOptions options;
  options.processes = 2;  // WORLD_SIZE 3: rank 2 never starts.
  options.timeout = std::chrono::seconds(60);
  auto start = std::chrono::steady_clock::now();
  RankResults result = RunRanks(3, ExpectInitFails, options);
  auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
  for (const std::string& out : result.output) {
    EXPECT_THAT(out, HasSubstr("timed out after 3s: 1 of 3 ranks never arrived: 2")) << out;
  }
  EXPECT_LT(elapsed, std::chrono::seconds(30));
}

TEST(RuntimeErrors, RanksDisagreeAboutWorldSize) {
  RunOptions options;
  options.rank_env[1] = {{"WORLD_SIZE", "3"}};
  RankResults result = RunRanks(2, ExpectInitFails, options);
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
  EXPECT_THAT(result.output[1],
              HasSubstr("rank 1 has WORLD_SIZE=3 but rank 0 has WORLD_SIZE=2 (expected every "
                        "rank to agree)"));
  EXPECT_THAT(result.output[0], HasSubstr("rendezvous failed on another rank: rank 1 has"));
}

TEST(RuntimeErrors, RankClaimedTwice) {
  RunOptions options;
  options.processes = 3;
  options.rank_env[2] = {{"RANK", "1"}, {"LOCAL_RANK", "1"}};
  RankResults result = RunRanks(3, ExpectInitFails, options);
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
  std::string all = result.output[0] + result.output[1] + result.output[2];
  EXPECT_THAT(all, HasSubstr("rank 1 was claimed by two processes (expected each RANK in 0..2 "
                             "exactly once)"));
}

TEST(RuntimeErrors, RankOutOfRange) {
  RunOptions options;
  options.processes = 1;
  options.rank_env[0] = {{"RANK", "2"}};
  RankResults result = RunRanks(2, ExpectInitFails, options);
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
  EXPECT_THAT(result.output[0],
              HasSubstr("ERROR: RANK=2 is out of range for WORLD_SIZE=2 (expected 0 <= RANK < 2)"));
}

TEST(RuntimeErrors, StorePortAlreadyInUse) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = 0;
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  std::string port = std::to_string(ntohs(addr.sin_port));

  auto start = std::chrono::steady_clock::now();
  auto rt = Runtime::Init(Cpu(30), Env({{"RANK", "0"},
                                        {"WORLD_SIZE", "2"},
                                        {"MASTER_ADDR", "127.0.0.1"},
                                        {"MASTER_PORT", port}}));
  ::close(fd);
  ASSERT_FALSE(rt.ok());
  EXPECT_EQ(rt.status().message(),
            "store port " + port + " is already in use on this host (rank 0 hosts the store at " +
                "MASTER_ADDR:MASTER_PORT = 127.0.0.1:" + port +
                "; expected a free port: pick another MASTER_PORT)");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST(RuntimeErrors, StoreNeverComesUp) {
  std::string port = std::to_string(PickFreePort());
  auto rt = Runtime::Init(Cpu(2), Env({{"RANK", "1"},
                                       {"WORLD_SIZE", "2"},
                                       {"MASTER_ADDR", "127.0.0.1"},
                                       {"MASTER_PORT", port}}));
  ASSERT_FALSE(rt.ok());
  EXPECT_EQ(rt.status().message(),
            "rank 1 could not reach the store at 127.0.0.1:" + port +
                " within 2s (rank 0 hosts it; expected rank 0 to be running with the same "
                "MASTER_ADDR/MASTER_PORT)");
}

TEST(RuntimeErrors, BadTimeoutAndDevice) {
  auto rt = Runtime::Init(Cpu(2), Env({{"WEFT_RDZV_TIMEOUT", "soon"}}));
  ASSERT_FALSE(rt.ok());
  EXPECT_EQ(rt.status().message(),
            "WEFT_RDZV_TIMEOUT=soon is not an integer (expected a decimal number)");
  RuntimeOptions options = Cpu(2);
  options.device = "tpu";
  rt = Runtime::Init(options, Env({}));
  ASSERT_FALSE(rt.ok());
  EXPECT_EQ(rt.status().message(),
            "device 'tpu' is not a runtime device (expected cpu, cuda or auto)");
}

TEST(RuntimeErrors, MeshProductIsNotTheWorld) {
  RankResults result = RunRanks(2, [] {
    auto rt = Runtime::Init(Cpu(30));
    ASSERT_TRUE(rt.ok()) << rt.status();
    auto mesh = DeviceMesh::Create(**rt, {{"dp", 2}, {"tp", 3}});
    ASSERT_FALSE(mesh.ok());
    EXPECT_EQ(mesh.status().message(), "mesh dp(2) * tp(3) = 6 != WORLD_SIZE 2");
    // The runtime is still usable after a rejected mesh.
    auto ok = DeviceMesh::Create(**rt, {{"dp", 1}, {"tp", 2}});
    ASSERT_TRUE(ok.ok()) << ok.status();
    EXPECT_EQ((*ok)["tp"].size(), 2);
  });
  EXPECT_TRUE(result.AllSucceeded()) << result.Describe();
}

}  // namespace
}  // namespace weft
