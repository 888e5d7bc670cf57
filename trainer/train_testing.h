// Test helpers for the trainer's multi-process tests: a tiny byte-level
// Llama, a configuration for it, and jobs of N ranks that train it
// (TrainerJob.Run, linked into every test binary that uses these).
//
//   TrainConfig c = train_testing::Tiny("tp2");
//   c.tp = 2;
//   std::vector<double> losses = train_testing::RunAndGetLosses(2, c);
#pragma once

#include <string>
#include <vector>

#include "tests/multiprocess.h"
#include "trainer/train_config.h"

namespace weft::train_testing {

std::string TempDir();

/// A directory with a tiny Llama's config.json (2 layers; `layers` more
/// makes another) and a text whose bytes are easy to learn (text.txt).
std::string Fixture(int layers = 2);

/// Writes `config_json` as TempDir()/name/config.json and returns its path
/// (TrainConfig::model_config) for tests of other model shapes.
std::string ModelConfigFile(const std::string& name, const std::string& config_json);

/// 8 steps of a global batch of 8 x 32 bytes on CPU, output under TempDir()/name.
TrainConfig Tiny(const std::string& name, int layers = 2);

/// Runs `config` as a job of `world` ranks (TrainerJob.Run): rank 0 writes
/// log.txt, and losses.txt or error.txt, into the output_dir.
testing::RankResults RunJob(int world, const TrainConfig& config, testing::RunOptions options = {});

/// Every step's loss of rank 0, after RunJob (each rank must succeed).
std::vector<double> RunAndGetLosses(int world, const TrainConfig& config);

/// The one-line error of a job that must fail.
std::string TrainError(int world, const TrainConfig& c);

/// fp32 on CPU: sharded matmuls sum in another order, so the runs agree to
/// rounding, and the agreement must hold over every step.
constexpr double kStepTolerance = 2e-5;

/// Both runs made `steps` steps and their losses agree within `tolerance`
/// (0: bit for bit).
void ExpectSameLosses(const std::vector<double>& a, const std::vector<double>& b, size_t steps,
                      double tolerance);

}  // namespace weft::train_testing
