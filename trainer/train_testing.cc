#include "trainer/train_testing.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/text_file.h"
#include "gtest/gtest.h"
#include "trainer/trainer.h"

namespace weft::train_testing {
namespace fs = std::filesystem;

std::string TempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  return base ? base : "/tmp";
}

std::string ModelConfigFile(const std::string& name, const std::string& config_json) {
  const std::string dir = TempDir() + "/" + name;
  fs::create_directories(dir);
  std::ofstream(dir + "/config.json") << config_json;
  return dir + "/config.json";
}

std::string Fixture(int layers) {
  std::string d = TempDir() + (layers == 2 ? std::string("/trainer_fixture")
                                           : absl::StrCat("/trainer_fixture_", layers));
  if (fs::exists(d + "/text.txt")) return d;
  fs::create_directories(d);
  std::ofstream(d + "/config.json") << absl::StrFormat(R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256,
  "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": %d,
  "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
  "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": "float32"})",
                                                       layers);
  std::ofstream text(d + "/text.txt");
  for (int i = 0; i < 120; ++i) {
    text << "The quick brown fox " << i % 7 << " jumps over the lazy dog.\n";
    if (i % 10 == 9) text << "\n";
  }
  return d;
}

TrainConfig Tiny(const std::string& name, int layers) {
  TrainConfig c;
  c.model_config = Fixture(layers) + "/config.json";
  c.data_text = Fixture(layers) + "/text.txt";
  c.seq_len = 32;
  c.global_batch = 8;
  c.steps = 8;
  c.lr = 3e-3;
  c.warmup_steps = 2;
  c.log_every = 100;
  c.device = "cpu";
  c.attn_implementation = "eager";
  c.output_dir = TempDir() + "/" + name;
  return c;
}

// The job every multi-rank run of these tests starts: TrainerJob.Run
// trains the configuration in WEFT_TEST_TRAIN_CONFIG (a resolved YAML) and
// rank 0 writes its losses (%.17g) to <output_dir>/losses.txt, or the error
// to <output_dir>/error.txt.
TEST(TrainerJob, Run) {
  const char* path = std::getenv("WEFT_TEST_TRAIN_CONFIG");
  if (path == nullptr || !testing::IsRankChild()) GTEST_SKIP() << "the job of the other tests";
  testing::RunRanks(0, [&] {
    auto config = LoadTrainConfig(path);
    ASSERT_TRUE(config.ok()) << config.status();
    std::ostringstream log;
    auto result = Train(*config, log);
    const bool lead = std::string(std::getenv("RANK")) == "0";
    if (lead) std::ofstream(config->output_dir + "/log.txt") << log.str();
    if (!result.ok()) {
      if (lead) std::ofstream(config->output_dir + "/error.txt") << result.status().message();
      return;
    }
    if (lead) {
      std::ofstream out(config->output_dir + "/losses.txt");
      for (const auto& [step, loss] : result->losses) {
        out << step << " " << absl::StrFormat("%.17g", loss) << "\n";
      }
    }
  });
}

testing::RankResults RunJob(int world, const TrainConfig& config, testing::RunOptions options) {
  fs::create_directories(config.output_dir);
  fs::remove(config.output_dir + "/losses.txt");
  fs::remove(config.output_dir + "/error.txt");
  const std::string path = config.output_dir + "/job.yaml";
  std::ofstream(path) << config.ToYaml();
  options.test = "TrainerJob.Run";
  options.env["WEFT_TEST_TRAIN_CONFIG"] = path;
  return testing::RunRanks(
      world, [] {}, options);
}

std::vector<double> RunAndGetLosses(int world, const TrainConfig& config) {
  testing::RankResults r = RunJob(world, config);
  EXPECT_TRUE(r.AllSucceeded()) << r.Describe();
  std::vector<double> losses;
  std::ifstream in(config.output_dir + "/losses.txt");
  int64_t step;
  double loss;
  while (in >> step >> loss) losses.push_back(loss);
  if (losses.empty()) {
    ADD_FAILURE() << config.output_dir << ": "
                  << ReadTextFile(config.output_dir + "/error.txt").value_or("no error.txt");
  }
  return losses;
}

std::string TrainError(int world, const TrainConfig& c) {
  testing::RankResults r = RunJob(world, c);
  EXPECT_TRUE(r.AllSucceeded()) << r.Describe();
  return ReadTextFile(c.output_dir + "/error.txt").value_or("");
}

void ExpectSameLosses(const std::vector<double>& a, const std::vector<double>& b, size_t steps,
                      double tolerance) {
  ASSERT_EQ(a.size(), steps);
  ASSERT_EQ(b.size(), steps);
  for (size_t i = 0; i < steps; ++i) {
    if (tolerance == 0) {
      EXPECT_EQ(a[i], b[i]) << "step " << i + 1;
    } else {
      EXPECT_NEAR(a[i], b[i], tolerance) << "step " << i + 1;
    }
  }
}

}  // namespace weft::train_testing
