#include "parallel/pipeline_schedule.h"

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

namespace weft {
namespace {

PipelineSchedule Make(const std::string& name, int p, int v, int m) {
  auto s = MakeSchedule({name, p, v, m});
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : PipelineSchedule{};
}

std::string Row(const PipelineSchedule& s, int rank) {
  std::string out;
  for (const PipelineAction& a : s.actions[rank])
    absl::StrAppend(&out, out.empty() ? "" : " ", a.ToString());
  return out;
}

TEST(PipelineAction, ParsesTorchNotation) {
  for (const char* text : {"0F0", "3B1", "12I7", "2W0"}) {
    auto a = PipelineAction::Parse(text);
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(a->ToString(), text);
  }
  EXPECT_EQ(PipelineAction::Parse("0X0").status().message(),
            "pipeline action '0X0' is not {stage}{F|B|I|W}{microbatch} (expected e.g. 0F0, 3B1)");
  EXPECT_FALSE(PipelineAction::Parse("F0").ok());
  EXPECT_FALSE(PipelineAction::Parse("0F").ok());
  EXPECT_FALSE(PipelineAction::Parse("-1F0").ok());
}

TEST(PipelineSchedule, OneFOneBIsTorchsOrder) {
  PipelineSchedule s = Make("1F1B", 4, 1, 8);
  EXPECT_EQ(Row(s, 0), "0F0 0F1 0F2 0F3 0B0 0F4 0B1 0F5 0B2 0F6 0B3 0F7 0B4 0B5 0B6 0B7");
  EXPECT_EQ(Row(s, 3), "3F0 3B0 3F1 3B1 3F2 3B2 3F3 3B3 3F4 3B4 3F5 3B5 3F6 3B6 3F7 3B7");
}

TEST(PipelineSchedule, InterleavedRunsItsStagesDepthFirst) {
  PipelineSchedule s = Make("interleaved_1f1b", 2, 2, 4);
  // Rank 0 holds stages 0 and 2; warmup (v-1)*p + 2*(p-1) = 4 forwards.
  EXPECT_EQ(Row(s, 0), "0F0 0F1 2F0 2F1 0F2 2B0 0F3 2B1 2F2 0B0 2F3 0B1 2B2 2B3 0B2 0B3");
}

// Every schedule over the grid is deadlock-free, and its idle time equals
// the closed form: (p-1)/m for GPipe and 1F1B, (p-1)/(v*m) interleaved;
// ZB1P (F = I = W) lies between ZB-H1's (p-1)/(3m) and 2/3 of 1F1B's, with
// no rank holding more activations than 1F1B's first. Peak activations:
// m for GPipe, p - r on rank r for 1F1B.
TEST(PipelineSchedule, GridIsDeadlockFreeWithTheClosedFormBubble) {
  for (int p = 2; p <= 8; ++p) {
    for (int m = p; m <= 4 * p; ++m) {
      for (const char* name : {"GPipe", "1F1B", "ZB1P"}) {
        PipelineSchedule s = Make(name, p, 1, m);
        auto sim = Simulate(s);
        ASSERT_TRUE(sim.ok()) << name << " p=" << p << " m=" << m << ": " << sim.status();
        const double one_f_one_b = (p - 1.0) / m;
        for (int r = 0; r < p; ++r) {
          if (std::string(name) == "GPipe") {
            EXPECT_EQ(sim->peak_activations[r], m) << name << " p=" << p << " m=" << m;
          } else if (std::string(name) == "1F1B") {
            EXPECT_EQ(sim->peak_activations[r], p - r) << name << " p=" << p << " m=" << m;
          } else {  // ZB1P: no rank holds more than 1F1B's first rank
            EXPECT_LE(sim->peak_activations[r], p) << name << " p=" << p << " m=" << m;
          }
        }
        if (std::string(name) != "ZB1P") {
          EXPECT_NEAR(sim->bubble, one_f_one_b, 1e-12) << name << " p=" << p << " m=" << m << "\n"
                                                       << FormatGrid(sim->grid);
        } else {
          // Between ZB-H1's (p-1)/(3m) and two thirds of 1F1B's.
          EXPECT_GE(sim->bubble, one_f_one_b / 3 - 1e-12) << "p=" << p << " m=" << m;
          EXPECT_LE(sim->bubble, 2 * one_f_one_b / 3 + 1e-12)
              << "ZB1P p=" << p << " m=" << m << "\n"
              << FormatGrid(sim->grid);
        }
      }
      for (int v : {2, 4}) {
        auto s = MakeSchedule({"Interleaved1F1B", p, v, m});
        if (!s.ok()) {
          const int rounds = std::max(1, m / p);
          EXPECT_NE(m % rounds, 0) << s.status();
          continue;
        }
        auto sim = Simulate(*s);
        ASSERT_TRUE(sim.ok()) << "interleaved p=" << p << " v=" << v << " m=" << m << ": "
                              << sim.status();
        EXPECT_NEAR(sim->bubble, (p - 1.0) / (v * m), 1e-12)
            << "interleaved p=" << p << " v=" << v << " m=" << m << "\n"
            << FormatGrid(sim->grid);
      }
    }
  }
}

TEST(PipelineSchedule, CsvRoundTripsInTorchsFormat) {
  for (const char* name : {"GPipe", "1F1B", "ZB1P"}) {
    PipelineSchedule s = Make(name, 3, 1, 5);
    auto back = ScheduleFromCsv(ScheduleToCsv(s), s.shape);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->actions, s.actions) << name;
  }
  PipelineSchedule s = Make("Interleaved1F1B", 2, 2, 4);
  EXPECT_EQ(ScheduleToCsv(s).substr(0, 20), "0F0,0F1,2F0,2F1,0F2,");
  // Empty cells are idle steps, as torch writes them.
  auto idle = ScheduleFromCsv("0F0,,0B0\n,1F0,1B0\n", {"custom", 2, 1, 1});
  ASSERT_TRUE(idle.ok()) << idle.status();
  EXPECT_EQ(Row(*idle, 1), "1F0 1B0");
}

TEST(PipelineSchedule, BadSchedulesAreNamed) {
  const PipelineShape two{"custom", 2, 1, 2};
  EXPECT_EQ(ScheduleFromCsv("0F0,0F1,0B0,0B1\n1F0,1B0,1F1\n", two).status().message(),
            "stage 1, micro-batch 1 needs one backward: B, or I and W");
  EXPECT_EQ(ScheduleFromCsv("0F0,0F1,1B0,0B1\n1F0,1B0,1F1,1B1\n", two).status().message(),
            "rank 0 runs 1B0 but stage 1 is on rank 1");
  EXPECT_EQ(ScheduleFromCsv("0F0,0F1,0B0,0B1\n1B0,1F0,1F1,1B1\n", two).status().message(),
            "stage 1, micro-batch 0 runs its backward before its forward");
  EXPECT_EQ(ScheduleFromCsv("0F0,0F1,0I0,0W0,0W1,0I1\n1F0,1B0,1F1,1B1\n", two).status().message(),
            "stage 0, micro-batch 1 runs W before I");
  EXPECT_EQ(ScheduleFromCsv("0F0,0X1\n", two).status().message(),
            "pipeline action '0X1' is not {stage}{F|B|I|W}{microbatch} (expected e.g. 0F0, 3B1)");
}

// A schedule in which two ranks wait for each other is reported with what
// each waits for and the grid up to that point (torch's
// _simulate_comms_compute finds such orders; runtimes hang on them).
TEST(PipelineSchedule, SimulatorNamesADeadlock) {
  // Rank 0 wants 0B0 before it has sent 0F1; rank 1 waits for 0F1 first.
  auto s = ScheduleFromCsv("0F0,0B0,0F1,0B1\n1F1,1F0,1B0,1B1\n", {"custom", 2, 1, 2});
  ASSERT_TRUE(s.ok()) << s.status();
  auto sim = Simulate(*s);
  ASSERT_FALSE(sim.ok());
  EXPECT_EQ(std::string(sim.status().message()),
            "pipeline schedule custom deadlocks at time 1: rank 0 waits to run 0B0 for 1B0 (or "
            "1I0) of rank 1; rank 1 waits to run 1F1 for 0F1 of rank 0\n"
            "rank 0: 0F0\n"
            "rank 1: .\n");
}

TEST(PipelineSchedule, ShapesAreValidated) {
  EXPECT_EQ(MakeSchedule({"1F1B", 4, 1, 3}).status().message(),
            "pipeline schedule 1F1B with 4 ranks needs at least 4 micro-batches, not 3 (expected "
            "pp_microbatches >= pp; fewer would leave ranks waiting for each other forever)");
  EXPECT_EQ(MakeSchedule({"Interleaved1F1B", 4, 2, 9}).status().message(),
            "pipeline schedule Interleaved1F1B: 9 micro-batches do not split into 2 rounds of 4 "
            "or more (expected a multiple of 2, e.g. 8)");
  EXPECT_EQ(MakeSchedule({"interleaved_1f1b", 4, 1, 8}).status().message(),
            "pipeline schedule interleaved_1f1b needs at least 2 stages per rank, not 1 (expected "
            "stages_per_rank >= 2, or 1F1B)");
  EXPECT_EQ(MakeSchedule({"1F1B", 4, 2, 8}).status().message(),
            "pipeline schedule 1F1B runs one stage per rank, not 2 (expected stages_per_rank 1, or "
            "Interleaved1F1B)");
  EXPECT_EQ(MakeSchedule({"DualPipe", 4, 1, 8}).status().message(),
            "pipeline schedule 'DualPipe' is not known (expected GPipe, 1F1B, Interleaved1F1B, "
            "ZB1P)");
  EXPECT_EQ(MakeSchedule({"1F1B", 0, 1, 8}).status().message(),
            "pipeline of 0 ranks x 1 stages x 8 micro-batches (expected each >= 1)");
  EXPECT_EQ(ScheduleFromCsv("0F0,0B0\n", {"custom", 2, 1, 1}).status().message(),
            "pipeline schedule has 1 ranks (expected 2)");
  EXPECT_TRUE(MakeSchedule({"gpipe", 4, 1, 2}).ok());  // GPipe needs no minimum
}

}  // namespace
}  // namespace weft
