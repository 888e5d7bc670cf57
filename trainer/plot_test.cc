#include "trainer/plot.h"

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/text_file.h"
#include "gtest/gtest.h"

namespace weft {
namespace {

std::string TmpPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir ? dir : "/tmp") + "/" + name;
}

// The points="..." of the polyline whose class is `cls`, split; empty when absent.
std::vector<std::string> PolylinePoints(const std::string& svg, const std::string& cls) {
  const std::string open = "<polyline class=\"" + cls + "\"";
  size_t at = svg.find(open);
  if (at == std::string::npos) return {};
  size_t p = svg.find("points=\"", at);
  size_t end = svg.find('"', p + 8);
  return absl::StrSplit(svg.substr(p + 8, end - p - 8), ' ');
}

int Count(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

void ExpectWellFormed(const std::string& svg) {
  EXPECT_TRUE(absl::StartsWith(svg, "<svg ")) << svg.substr(0, 40);
  EXPECT_TRUE(absl::EndsWith(absl::StripTrailingAsciiWhitespace(svg), "</svg>"));
  EXPECT_TRUE(absl::StrContains(svg, "width=\"800\" height=\"450\""));
  // Every element that opens closes (or is self-closing).
  for (const char* tag : {"g", "text", "title"}) {
    EXPECT_EQ(Count(svg, std::string("<") + tag + " ") + Count(svg, std::string("<") + tag + ">"),
              Count(svg, std::string("</") + tag + ">"))
        << tag;
  }
  EXPECT_EQ(Count(svg, "<svg"), Count(svg, "</svg>"));
  EXPECT_FALSE(absl::StrContains(svg, "nan"));
  EXPECT_FALSE(absl::StrContains(svg, "inf"));
}

TEST(Plot, WritesAFileWithOnePointPerStep) {
  std::vector<std::pair<int64_t, double>> points;
  for (int64_t step = 1; step <= 40; ++step) points.push_back({step, 5.0 / std::sqrt(step)});
  const std::string path = TmpPath("loss.svg");
  ASSERT_TRUE(WriteLossCurveSvg(path, points, "tiny <llama> & friends").ok());
  const std::string svg = ReadTextFile(path).value_or("");
  ExpectWellFormed(svg);
  EXPECT_EQ(PolylinePoints(svg, "loss").size(), 40u);
  EXPECT_TRUE(PolylinePoints(svg, "ema").empty());  // 40 <= 50 points: no EMA
  EXPECT_TRUE(absl::StrContains(svg, ">tiny &lt;llama&gt; &amp; friends</text>"));
  EXPECT_TRUE(absl::StrContains(svg, "final loss 0.7906 at step 40"));
  EXPECT_TRUE(absl::StrContains(svg, ">step</text>"));
  EXPECT_TRUE(absl::StrContains(svg, ">loss</text>"));
}

TEST(Plot, SmoothsLongCurves) {
  std::vector<std::pair<int64_t, double>> points;
  for (int64_t step = 0; step < 500; ++step) {
    points.push_back({step * 10, 4.0 * std::exp(-step / 150.0) + 1.0 + 0.3 * std::sin(step * 1.7)});
  }
  const std::string svg = LossCurveSvg(points, "long run");
  ExpectWellFormed(svg);
  EXPECT_EQ(PolylinePoints(svg, "loss").size(), 500u);
  EXPECT_EQ(PolylinePoints(svg, "ema").size(), 500u);
  EXPECT_TRUE(absl::StrContains(svg, "final loss"));
  EXPECT_TRUE(absl::StrContains(svg, "(EMA "));
}

TEST(Plot, SmoothedLossesAreBiasCorrected) {
  std::vector<double> flat(100, 2.5);
  for (double v : SmoothedLosses(flat)) EXPECT_NEAR(v, 2.5, 1e-12);
  std::vector<double> s = SmoothedLosses({1, 3});
  EXPECT_DOUBLE_EQ(s[0], 1);
  EXPECT_GT(s[1], 1);
  EXPECT_LT(s[1], 3);
}

TEST(Plot, OnePoint) {
  const std::string svg = LossCurveSvg({{7, 3.25}}, "one");
  ExpectWellFormed(svg);
  EXPECT_EQ(PolylinePoints(svg, "loss").size(), 1u);
  EXPECT_EQ(Count(svg, "<circle"), 1);  // visible even though a 1-point line is not
  EXPECT_TRUE(absl::StrContains(svg, "final loss 3.2500 at step 7"));
}

TEST(Plot, SkipsNonFiniteLosses) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const std::string svg =
      LossCurveSvg({{1, 4.0}, {2, nan}, {3, 3.0}, {4, inf}, {5, 2.0}, {6, -inf}}, "diverged");
  ExpectWellFormed(svg);
  EXPECT_EQ(PolylinePoints(svg, "loss").size(), 3u);
  EXPECT_TRUE(absl::StrContains(svg, "3 non-finite losses skipped (steps 2, 4, 6)"));
  EXPECT_TRUE(absl::StrContains(svg, "final loss 2.0000 at step 5"));

  const std::string one = LossCurveSvg({{1, 4.0}, {2, nan}}, "t");
  EXPECT_TRUE(absl::StrContains(one, "1 non-finite loss skipped (step 2)"));
}

TEST(Plot, NothingToPlot) {
  for (const auto& points :
       {std::vector<std::pair<int64_t, double>>{},
        std::vector<std::pair<int64_t, double>>{{1, std::numeric_limits<double>::quiet_NaN()}}}) {
    const std::string svg = LossCurveSvg(points, "empty");
    ExpectWellFormed(svg);
    EXPECT_TRUE(PolylinePoints(svg, "loss").empty());
    EXPECT_TRUE(absl::StrContains(svg, "no finite losses to plot"));
  }
}

TEST(Plot, WriteErrorsNameTheFile) {
  absl::Status s = WriteLossCurveSvg("/nonexistent-dir/loss.svg", {{1, 1.0}}, "t");
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StartsWith(s.message(), "open(/nonexistent-dir/loss.svg.tmp.")) << s.message();
}

// Writes sample charts where Bazel keeps test outputs
// (bazel-testlogs/trainer/plot_test/test.outputs/) for a human to look at:
// rsvg-convert -o loss.png loss_long.svg
TEST(Plot, WritesExamplesForHumans) {
  const char* dir = std::getenv("TEST_UNDECLARED_OUTPUTS_DIR");
  if (dir == nullptr) GTEST_SKIP() << "TEST_UNDECLARED_OUTPUTS_DIR is not set";
  std::vector<std::pair<int64_t, double>> long_run, short_run;
  uint64_t state = 1;
  for (int64_t step = 1; step <= 600; ++step) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const double noise = static_cast<double>(state >> 11) / 9007199254740992.0 - 0.5;
    const double loss = 5.6 * std::exp(-step / 120.0) + 1.35 + 0.25 * noise;
    long_run.push_back({step, step == 300 ? std::numeric_limits<double>::quiet_NaN() : loss});
    if (step <= 12) short_run.push_back({step * 5, loss});
  }
  ASSERT_TRUE(
      WriteLossCurveSvg(std::string(dir) + "/loss_long.svg", long_run, "finetune_tiny: loss").ok());
  ASSERT_TRUE(WriteLossCurveSvg(std::string(dir) + "/loss_short.svg", short_run, "12 steps").ok());
  ASSERT_TRUE(WriteLossCurveSvg(std::string(dir) + "/loss_one.svg", {{1, 5.5}}, "one step").ok());
}

}  // namespace
}  // namespace weft
