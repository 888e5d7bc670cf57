// Loss curves as self-contained SVG: no LibTorch, no fonts or scripts to
// fetch, readable at 800x450 in a browser or an image viewer.
//
// The chart has step on x and loss on y with tick labels and a light grid,
// the losses as a polyline (one point per finite loss, ordered by step), the
// title, and the final loss (and step) in a label. With more than 50 points
// it also draws an exponential moving average (bias-corrected, span
// max(5, n / 25) points) over a lighter raw line. Non-finite losses (NaN,
// inf) are skipped and the count and first steps are noted in the chart.
//
//   std::vector<std::pair<int64_t, double>> points = {{1, 5.5}, {2, 4.9}, {3, 4.1}};
//   RETURN_IF_ERROR(WriteLossCurveSvg("run/loss.svg", points, "tiny llama, TP=2"));
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace weft {

/// The chart as SVG text (what WriteLossCurveSvg writes). `eval_points`
/// (step, validation loss), when given, are a second curve (orange, with
/// markers, class "eval") on the same axes, their last value in the notes.
std::string LossCurveSvg(const std::vector<std::pair<int64_t, double>>& points,
                         const std::string& title,
                         const std::vector<std::pair<int64_t, double>>& eval_points = {});

/// Writes LossCurveSvg(points, title) to `path` atomically (temporary file,
/// fsync, rename); errors name the call, the file and errno.
absl::Status WriteLossCurveSvg(
    const std::string& path,
    const std::vector<std::pair<int64_t, double>>& points /* (step, loss) */,
    const std::string& title, const std::vector<std::pair<int64_t, double>>& eval_points = {});

/// The EMA line drawn for long curves: bias-corrected exponential moving
/// average with smoothing 1 - 2 / (span + 1), span = max(5, n / 25).
std::vector<double> SmoothedLosses(const std::vector<double>& losses);

}  // namespace weft
