#include "cli/plan_schedule.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "base/text_file.h"

namespace weft {
namespace {

struct Result {
  int code;
  std::string out, err;
};

Result RunIt(const PlanScheduleOptions& o) {
  std::ostringstream out, err;
  int code = RunPlanSchedule(o, out, err);
  return {code, out.str(), err.str()};
}

TEST(PlanSchedule, PrintsTheGridAndTheBubble) {
  PlanScheduleOptions o;
  o.pp = 2;
  o.microbatches = 2;
  Result r = RunIt(o);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out,
            "pipeline schedule 1F1B: 2 ranks x 1 stage(s) per rank x 2 micro-batches (unit-time "
            "model: F 1, B 2, I 1, W 1; communication free)\n"
            "rank 0: 0F0  0F1  .    .    0B0  0B0  .    0B1  0B1\n"
            "rank 1: .    1F0  1B0  1B0  1F1  1B1  1B1  .    .\n"
            "rank 0: busy 6, idle 3, peak activations 2 micro-batch(es) of one stage\n"
            "rank 1: busy 6, idle 3, peak activations 1 micro-batch(es) of one stage\n"
            "bubble 0.5 (idle / busy; closed form (p-1)/m = 0.5), makespan 9\n");
}

TEST(PlanSchedule, WritesAndChecksTorchCsv) {
  const std::string dir = std::getenv("TEST_TMPDIR") ? std::getenv("TEST_TMPDIR") : "/tmp";
  PlanScheduleOptions o;
  o.pp = 4;
  o.schedule = "interleaved_1f1b";
  o.microbatches = 8;
  o.write_csv = dir + "/interleaved.csv";
  Result r = RunIt(o);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("bubble 0.1875 (idle / busy; closed form (p-1)/(v*m) = 0.1875)"),
            std::string::npos)
      << r.out;
  // The written file checks as a custom schedule with the same bubble.
  PlanScheduleOptions check;
  check.pp = 4;
  check.stages_per_rank = 2;
  check.microbatches = 8;
  check.csv = o.write_csv;
  r = RunIt(check);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("bubble 0.1875 (idle / busy; a custom schedule)"), std::string::npos)
      << r.out;
  // A deadlocking CSV is named, with the exit code of bad input.
  { std::ofstream(dir + "/deadlock.csv") << "0F0,0B0,0F1,0B1\n1F1,1F0,1B0,1B1\n"; }
  check.pp = 2;
  check.stages_per_rank = 1;
  check.microbatches = 2;
  check.csv = dir + "/deadlock.csv";
  r = RunIt(check);
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err.rfind("weft plan schedule: pipeline schedule custom deadlocks at time 1: rank 0 "
                        "waits to run 0B0 for 1B0 (or 1I0) of rank 1; rank 1 waits to run 1F1 "
                        "for 0F1 of rank 0",
                        0),
            0u)
      << r.err;
}

TEST(PlanSchedule, BadShapesAreOneLine) {
  PlanScheduleOptions o;
  o.pp = 4;
  o.microbatches = 2;
  Result r = RunIt(o);
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err,
            "weft plan schedule: pipeline schedule 1F1B with 4 ranks needs at least 4 "
            "micro-batches, not 2 (expected pp_microbatches >= pp; fewer would leave ranks waiting "
            "for each other forever)\n");
}

}  // namespace
}  // namespace weft
