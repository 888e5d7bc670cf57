#include "cli/train.h"

#include <sstream>

#include "gtest/gtest.h"

namespace weft {
namespace {

// --print-config shows every key, defaults included, with --set applied,
// and trains nothing.
TEST(TrainCommand, PrintConfigShowsEveryResolvedKey) {
  TrainCommand c;
  c.config = "examples/finetune_tiny/pretrain.yaml";
  c.overrides = {"optimizer.lr=0.002"};
  c.print_config = true;
  std::ostringstream out, err;
  ASSERT_EQ(RunTrain(c, out, err), 0) << err.str();
  const std::string yaml = out.str();
  for (const char* key :
       {"lr: 0.002  # default: 0.0003", "grad_clip: 1\n", "warmup_steps:", "precision: fp32\n",
        "seed:", "activation_checkpointing:", "loss_parallel:", "tp: 2  # default: 1"}) {
    EXPECT_NE(yaml.find(key), std::string::npos) << key << " missing from:\n" << yaml;
  }
  EXPECT_EQ(yaml.find("[train] step"), std::string::npos);
}

}  // namespace
}  // namespace weft
