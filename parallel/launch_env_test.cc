#include "parallel/launch_env.h"

#include <map>

#include "gtest/gtest.h"

namespace weft {
namespace {

EnvLookup Env(std::map<std::string, std::string> vars) {
  return [vars](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

TEST(LaunchEnv, SingleProcessWhenNothingIsSet) {
  auto env = DetectLaunchEnv(Env({}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kSingle);
  EXPECT_EQ(env->rank, 0);
  EXPECT_EQ(env->world_size, 1);
}

TEST(LaunchEnv, Torchrun) {
  auto env = DetectLaunchEnv(Env({{"RANK", "5"},
                                  {"WORLD_SIZE", "8"},
                                  {"LOCAL_RANK", "1"},
                                  {"LOCAL_WORLD_SIZE", "4"},
                                  {"GROUP_RANK", "1"},
                                  {"MASTER_ADDR", "node7"},
                                  {"MASTER_PORT", "1234"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kTorchrun);
  EXPECT_EQ(env->rank, 5);
  EXPECT_EQ(env->world_size, 8);
  EXPECT_EQ(env->local_rank, 1);
  EXPECT_EQ(env->local_world_size, 4);
  EXPECT_EQ(env->node_rank, 1);
  EXPECT_EQ(env->master_addr, "node7");
  EXPECT_EQ(env->master_port, 1234);
}

// PyTorch's torchrun: its agent hosts the store, and each attempt has its own.
TEST(LaunchEnv, TorchrunAgentStore) {
  auto env = DetectLaunchEnv(Env({{"RANK", "0"},
                                  {"WORLD_SIZE", "2"},
                                  {"MASTER_ADDR", "127.0.0.1"},
                                  {"MASTER_PORT", "29500"},
                                  {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                                  {"TORCHELASTIC_RESTART_COUNT", "3"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_TRUE(env->agent_store);
  EXPECT_EQ(env->restart_count, 3);
  auto weftrun = DetectLaunchEnv(Env({{"RANK", "0"},
                                      {"WORLD_SIZE", "2"},
                                      {"MASTER_ADDR", "127.0.0.1"},
                                      {"MASTER_PORT", "29500"},
                                      {"TORCHELASTIC_USE_AGENT_STORE", "False"}}));
  ASSERT_TRUE(weftrun.ok()) << weftrun.status();
  EXPECT_FALSE(weftrun->agent_store);  // rank 0 hosts the store
}

TEST(LaunchEnv, TorchrunErrorsNameVariableFoundAndExpected) {
  auto check = [](std::map<std::string, std::string> vars, const std::string& message) {
    auto env = DetectLaunchEnv(Env(vars));
    ASSERT_FALSE(env.ok());
    EXPECT_EQ(env.status().message(), message);
  };
  std::map<std::string, std::string> master = {{"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}};
  auto with = [&](std::map<std::string, std::string> v) {
    v.insert(master.begin(), master.end());
    return v;
  };
  check(with({{"RANK", "4"}, {"WORLD_SIZE", "4"}}),
        "RANK=4 is out of range for WORLD_SIZE=4 (expected 0 <= RANK < 4)");
  check(with({{"RANK", "-1"}, {"WORLD_SIZE", "4"}}),
        "RANK=-1 is out of range for WORLD_SIZE=4 (expected 0 <= RANK < 4)");
  check(with({{"RANK", "x1"}, {"WORLD_SIZE", "4"}}),
        "RANK=x1 is not an integer (expected a decimal number)");
  check(with({{"WORLD_SIZE", "4"}}), "RANK is not set (expected an integer)");
  check(with({{"RANK", "0"}, {"WORLD_SIZE", "0"}}),
        "WORLD_SIZE=0 is not a world size (expected >= 1)");
  check(with({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_WORLD_SIZE", "3"}}),
        "LOCAL_WORLD_SIZE=3 is inconsistent with WORLD_SIZE=2 (expected 1..2)");
  check(with({{"RANK", "0"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "2"}, {"LOCAL_WORLD_SIZE", "2"}}),
        "LOCAL_RANK=2 is out of range for LOCAL_WORLD_SIZE=2 (expected 0 <= LOCAL_RANK < 2)");
  check({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "1"}},
        "MASTER_ADDR is not set (expected with RANK=0 WORLD_SIZE=2: the address of the store "
        "that rank 0 hosts)");
  check({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}},
        "MASTER_PORT=70000 is not a port (expected 1..65535)");
}

TEST(LaunchEnv, OpenMpi) {
  auto env = DetectLaunchEnv(Env({{"OMPI_COMM_WORLD_RANK", "3"},
                                  {"OMPI_COMM_WORLD_SIZE", "4"},
                                  {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                  {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kMpirun);
  EXPECT_EQ(env->rank, 3);
  EXPECT_EQ(env->local_rank, 1);
  EXPECT_EQ(env->node_rank, 1);
  EXPECT_FALSE(env->master_known);  // Agreed through MPI at init.

  auto given = DetectLaunchEnv(Env({{"OMPI_COMM_WORLD_RANK", "0"},
                                    {"OMPI_COMM_WORLD_SIZE", "2"},
                                    {"MASTER_ADDR", "10.0.0.1"},
                                    {"MASTER_PORT", "4000"}}));
  ASSERT_TRUE(given.ok()) << given.status();
  EXPECT_TRUE(given->master_known);
  EXPECT_EQ(given->master_addr, "10.0.0.1");

  auto bad = DetectLaunchEnv(Env({{"OMPI_COMM_WORLD_RANK", "2"}, {"OMPI_COMM_WORLD_SIZE", "2"}}));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(),
            "OMPI_COMM_WORLD_RANK=2 is out of range for OMPI_COMM_WORLD_SIZE=2 (expected 0 <= "
            "OMPI_COMM_WORLD_RANK < 2)");
}

TEST(LaunchEnv, Slurm) {
  auto env = DetectLaunchEnv(Env({{"SLURM_PROCID", "6"},
                                  {"SLURM_NTASKS", "8"},
                                  {"SLURM_LOCALID", "2"},
                                  {"SLURM_TASKS_PER_NODE", "4(x2)"},
                                  {"SLURM_NODEID", "1"},
                                  {"SLURM_JOB_ID", "123456"},
                                  {"SLURM_JOB_NODELIST", "gpu[07-08]"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kSlurm);
  EXPECT_EQ(env->rank, 6);
  EXPECT_EQ(env->world_size, 8);
  EXPECT_EQ(env->local_rank, 2);
  EXPECT_EQ(env->local_world_size, 4);
  EXPECT_EQ(env->node_rank, 1);
  EXPECT_EQ(env->master_addr, "gpu07");
  EXPECT_EQ(env->master_port, 20000 + 123456 % 20000);

  auto overridden = DetectLaunchEnv(Env({{"SLURM_PROCID", "0"},
                                         {"SLURM_NTASKS", "2"},
                                         {"SLURM_JOB_NODELIST", "a,b"},
                                         {"MASTER_ADDR", "c"},
                                         {"MASTER_PORT", "999"}}));
  ASSERT_TRUE(overridden.ok()) << overridden.status();
  EXPECT_EQ(overridden->master_addr, "c");
  EXPECT_EQ(overridden->master_port, 999);

  auto no_list = DetectLaunchEnv(Env({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}}));
  ASSERT_FALSE(no_list.ok());
  EXPECT_EQ(no_list.status().message(),
            "SLURM_JOB_NODELIST is not set (expected under srun, or set MASTER_ADDR)");
}

TEST(LaunchEnv, TorchrunWinsOverSlurm) {
  // srun starting weftrun per node: weftrun's RANK/WORLD_SIZE describe the workers.
  auto env = DetectLaunchEnv(Env({{"RANK", "1"},
                                  {"WORLD_SIZE", "2"},
                                  {"MASTER_ADDR", "h"},
                                  {"MASTER_PORT", "5"},
                                  {"SLURM_PROCID", "0"},
                                  {"SLURM_NTASKS", "1"}}));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->launcher, Launcher::kTorchrun);
  EXPECT_EQ(env->rank, 1);
}

TEST(SlurmNodelist, Expands) {
  using V = std::vector<std::string>;
  EXPECT_EQ(*ExpandSlurmNodelist("node01"), V({"node01"}));
  EXPECT_EQ(*ExpandSlurmNodelist("node[01-04]"), V({"node01", "node02", "node03", "node04"}));
  EXPECT_EQ(*ExpandSlurmNodelist("node[1,3-4],gpu5"), V({"node1", "node3", "node4", "gpu5"}));
  EXPECT_EQ(*ExpandSlurmNodelist("n[8-10]"), V({"n8", "n9", "n10"}));
  EXPECT_EQ(*ExpandSlurmNodelist("rack[1-2]-n[01-02]"),
            V({"rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"}));
  EXPECT_EQ(*ExpandSlurmNodelist("a[098-100].x"), V({"a098.x", "a099.x", "a100.x"}));
}

TEST(SlurmNodelist, RejectsMalformed) {
  EXPECT_EQ(ExpandSlurmNodelist("node[01-04").status().message(),
            "SLURM nodelist 'node[01-04' has an unmatched '[' in 'node[01-04'");
  EXPECT_EQ(ExpandSlurmNodelist("node[4-1]").status().message(),
            "SLURM nodelist 'node[4-1]' has a bad range '4-1' (expected N or N-M with N <= M)");
  EXPECT_EQ(ExpandSlurmNodelist("a,,b").status().message(),
            "SLURM nodelist 'a,,b' has an empty entry");
}

}  // namespace
}  // namespace weft
