#include "trainer/plot.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/atomic_file.h"
#include "base/status.h"

namespace weft {
namespace {

constexpr double kWidth = 800, kHeight = 450;
constexpr double kLeft = 72, kRight = 776, kTop = 48, kBottom = 396;  // the plot area
constexpr size_t kSmoothAbove = 50;
constexpr size_t kMarkersUpTo = 30;

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        // Control characters are not allowed in XML 1.0.
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t') {
          out += ' ';
        } else {
          out += c;
        }
    }
  }
  return out;
}

std::string Num(double v) { return absl::StrFormat("%.1f", v); }

// A "nice" tick spacing (1, 2 or 5 times a power of ten) giving about
// `target` intervals over `span`.
double NiceStep(double span, int target) {
  double raw = span / target;
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double f = raw / mag;
  double nice = f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10;
  return nice * mag;
}

std::string LossLabel(double v, double step) {
  int decimals = std::max(0, static_cast<int>(std::ceil(-std::log10(step) - 1e-9)));
  return absl::StrFormat("%.*f", std::min(decimals, 8), v);
}

std::string StepLabel(double v) {
  double a = std::fabs(v);
  if (a >= 1e6 && std::fmod(a, 1e5) == 0) return absl::StrFormat("%gM", v / 1e6);
  if (a >= 1e4 && std::fmod(a, 1e3) == 0) return absl::StrFormat("%gk", v / 1e3);
  return absl::StrFormat("%.0f", v);
}

}  // namespace

std::vector<double> SmoothedLosses(const std::vector<double>& losses) {
  const double span = std::max<double>(5, static_cast<double>(losses.size()) / 25);
  const double beta = 1 - 2 / (span + 1);
  std::vector<double> out;
  out.reserve(losses.size());
  double avg = 0, weight = 0;
  for (double v : losses) {
    avg = beta * avg + (1 - beta) * v;
    weight = beta * weight + (1 - beta);
    out.push_back(avg / weight);
  }
  return out;
}

namespace {

using Points = std::vector<std::pair<int64_t, double>>;

// The plotted ranges (x exactly the steps, y widened to whole ticks) and
// the data -> pixel mapping.
struct Frame {
  double xmin = 0, xmax = 1, ymin = 0, ymax = 1, xstep = 1, ystep = 1;
  double X(double step) const { return kLeft + (step - xmin) / (xmax - xmin) * (kRight - kLeft); }
  double Y(double loss) const { return kBottom - (loss - ymin) / (ymax - ymin) * (kBottom - kTop); }
};

Frame FrameOf(const Points& finite) {
  Frame f;
  if (!finite.empty()) {
    f.xmin = f.xmax = static_cast<double>(finite.front().first);
    f.xmax = static_cast<double>(finite.back().first);
    f.ymin = f.ymax = finite.front().second;
    for (const auto& p : finite) {
      f.ymin = std::min(f.ymin, p.second);
      f.ymax = std::max(f.ymax, p.second);
    }
  }
  if (f.xmax - f.xmin < 1) {
    f.xmin -= 1;
    f.xmax += 1;
  }
  if (f.ymax - f.ymin < 1e-9 * std::max(1.0, std::fabs(f.ymax))) {
    double pad = std::max(0.5, std::fabs(f.ymax) * 0.1);
    f.ymin -= pad;
    f.ymax += pad;
  }
  f.ystep = NiceStep(f.ymax - f.ymin, 6);
  f.ymin = std::floor(f.ymin / f.ystep + 1e-9) * f.ystep;
  f.ymax = std::ceil(f.ymax / f.ystep - 1e-9) * f.ystep;
  f.xstep = std::max(1.0, NiceStep(f.xmax - f.xmin, 8));
  return f;
}

void AppendHeader(std::string& s, const std::string& title) {
  absl::StrAppend(&s, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"", kWidth, "\" height=\"",
                  kHeight, "\" viewBox=\"0 0 ", kWidth, " ", kHeight,
                  "\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n");
  absl::StrAppend(&s, "<title>", Escape(title), "</title>\n");
  absl::StrAppend(&s, "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n");
  absl::StrAppend(&s, "<text x=\"", Num((kLeft + kRight) / 2), "\" y=\"28\" font-size=\"17\" ",
                  "font-weight=\"bold\" text-anchor=\"middle\" fill=\"#222\">", Escape(title),
                  "</text>\n");
}

// Grid lines, tick labels, the plot's border and the axis titles.
void AppendAxes(std::string& s, const Frame& f) {
  absl::StrAppend(&s, "<g class=\"grid\" stroke=\"#e3e3e3\" stroke-width=\"1\">\n");
  std::string labels;
  for (double v = f.ymin; v <= f.ymax + f.ystep * 1e-6; v += f.ystep) {
    const double y = f.Y(v);
    absl::StrAppend(&s, "<line x1=\"", Num(kLeft), "\" y1=\"", Num(y), "\" x2=\"", Num(kRight),
                    "\" y2=\"", Num(y), "\"/>\n");
    absl::StrAppend(&labels, "<text x=\"", Num(kLeft - 8), "\" y=\"", Num(y + 4),
                    "\" text-anchor=\"end\">",
                    LossLabel(std::fabs(v) < f.ystep * 1e-6 ? 0 : v, f.ystep), "</text>\n");
  }
  for (double v = std::ceil(f.xmin / f.xstep) * f.xstep; v <= f.xmax + f.xstep * 1e-6;
       v += f.xstep) {
    const double x = f.X(v);
    absl::StrAppend(&s, "<line x1=\"", Num(x), "\" y1=\"", Num(kTop), "\" x2=\"", Num(x),
                    "\" y2=\"", Num(kBottom), "\"/>\n");
    absl::StrAppend(&labels, "<text x=\"", Num(x), "\" y=\"", Num(kBottom + 18),
                    "\" text-anchor=\"middle\">", StepLabel(v), "</text>\n");
  }
  absl::StrAppend(&s, "</g>\n");
  absl::StrAppend(&s, "<g class=\"ticks\" font-size=\"12\" fill=\"#444\">\n", labels, "</g>\n");
  absl::StrAppend(&s, "<rect x=\"", Num(kLeft), "\" y=\"", Num(kTop), "\" width=\"",
                  Num(kRight - kLeft), "\" height=\"", Num(kBottom - kTop),
                  "\" fill=\"none\" stroke=\"#888\" stroke-width=\"1\"/>\n");
  absl::StrAppend(&s, "<text x=\"", Num((kLeft + kRight) / 2), "\" y=\"", Num(kHeight - 14),
                  "\" font-size=\"13\" text-anchor=\"middle\" fill=\"#333\">step</text>\n");
  absl::StrAppend(&s, "<text x=\"18\" y=\"", Num((kTop + kBottom) / 2),
                  "\" font-size=\"13\" text-anchor=\"middle\" fill=\"#333\" ",
                  "transform=\"rotate(-90 18 ", Num((kTop + kBottom) / 2), ")\">loss</text>\n");
}

// The loss per step, its EMA when there are many points (returned), and
// markers when there are few.
std::vector<double> AppendCurves(std::string& s, const Frame& f, const Points& finite) {
  const bool smooth = finite.size() > kSmoothAbove;
  std::vector<std::string> coords;
  coords.reserve(finite.size());
  for (const auto& p : finite) {
    coords.push_back(absl::StrCat(Num(f.X(static_cast<double>(p.first))), ",", Num(f.Y(p.second))));
  }
  if (!finite.empty()) {
    absl::StrAppend(&s, "<polyline class=\"loss\" fill=\"none\" stroke=\"",
                    smooth ? "#a6c8e6" : "#1f77b4", "\" stroke-width=\"", smooth ? "1" : "1.8",
                    "\" stroke-linejoin=\"round\" points=\"", absl::StrJoin(coords, " "), "\"/>\n");
  }
  std::vector<double> ema;
  if (smooth) {
    std::vector<double> losses;
    for (const auto& p : finite) losses.push_back(p.second);
    ema = SmoothedLosses(losses);
    std::vector<std::string> ema_coords;
    for (size_t i = 0; i < finite.size(); ++i) {
      ema_coords.push_back(
          absl::StrCat(Num(f.X(static_cast<double>(finite[i].first))), ",", Num(f.Y(ema[i]))));
    }
    absl::StrAppend(&s,
                    "<polyline class=\"ema\" fill=\"none\" stroke=\"#0b4f8a\" "
                    "stroke-width=\"2.2\" stroke-linejoin=\"round\" points=\"",
                    absl::StrJoin(ema_coords, " "), "\"/>\n");
  }
  if (!finite.empty() && finite.size() <= kMarkersUpTo) {
    absl::StrAppend(&s, "<g class=\"markers\" fill=\"#1f77b4\">\n");
    for (const auto& p : finite) {
      absl::StrAppend(&s, "<circle cx=\"", Num(f.X(static_cast<double>(p.first))), "\" cy=\"",
                      Num(f.Y(p.second)), "\" r=\"3\"/>\n");
    }
    absl::StrAppend(&s, "</g>\n");
  }
  return ema;
}

// The validation losses: an orange line with markers.
void AppendEvalCurve(std::string& s, const Frame& f, const Points& eval) {
  if (eval.empty()) return;
  std::vector<std::string> coords;
  for (const auto& p : eval) {
    coords.push_back(absl::StrCat(Num(f.X(static_cast<double>(p.first))), ",", Num(f.Y(p.second))));
  }
  absl::StrAppend(&s,
                  "<polyline class=\"eval\" fill=\"none\" stroke=\"#e8710a\" "
                  "stroke-width=\"2\" stroke-linejoin=\"round\" points=\"",
                  absl::StrJoin(coords, " "), "\"/>\n");
  absl::StrAppend(&s, "<g class=\"eval-markers\" fill=\"#e8710a\">\n");
  for (const auto& p : eval) {
    absl::StrAppend(&s, "<circle cx=\"", Num(f.X(static_cast<double>(p.first))), "\" cy=\"",
                    Num(f.Y(p.second)), "\" r=\"3.5\"/>\n");
  }
  absl::StrAppend(&s, "</g>\n");
}

// Labels in the top-right corner: final loss, legend, skipped points.
void AppendNotes(std::string& s, const Points& finite, const std::vector<int64_t>& skipped,
                 const std::vector<double>& ema, const Points& eval) {
  const bool smooth = !ema.empty();
  std::vector<std::pair<std::string, std::string>> notes;  // (text, color)
  if (finite.empty()) {
    absl::StrAppend(&s, "<text x=\"", Num((kLeft + kRight) / 2), "\" y=\"",
                    Num((kTop + kBottom) / 2), "\" font-size=\"15\" text-anchor=\"middle\" ",
                    "fill=\"#888\">no finite losses to plot</text>\n");
  } else {
    const auto& last = finite.back();
    std::string final_text = absl::StrFormat("final loss %.4f at step %d", last.second, last.first);
    if (smooth) absl::StrAppend(&final_text, absl::StrFormat(" (EMA %.4f)", ema.back()));
    notes.push_back({final_text, "#222"});
    if (smooth) {
      notes.push_back({absl::StrFormat("light: loss per step, dark: EMA over %d steps",
                                       static_cast<int>(std::max<double>(
                                           5, static_cast<double>(finite.size()) / 25))),
                       "#555"});
    }
  }
  if (!eval.empty()) {
    notes.push_back({absl::StrFormat("orange: validation loss (last %.4f at step %d)",
                                     eval.back().second, eval.back().first),
                     "#e8710a"});
  }
  if (!skipped.empty()) {
    std::vector<std::string> first;
    for (size_t i = 0; i < skipped.size() && i < 5; ++i) first.push_back(absl::StrCat(skipped[i]));
    notes.push_back(
        {absl::StrCat(skipped.size(), " non-finite loss", skipped.size() == 1 ? "" : "es",
                      " skipped (step", skipped.size() == 1 ? " " : "s ",
                      absl::StrJoin(first, ", "), skipped.size() > 5 ? ", ..." : "", ")"),
         "#c0392b"});
  }
  if (notes.empty()) return;
  size_t longest = 0;
  for (const auto& n : notes) longest = std::max(longest, n.first.size());
  const double w = 7.0 * static_cast<double>(longest) + 16;
  const double h = 18.0 * static_cast<double>(notes.size()) + 8;
  absl::StrAppend(&s, "<g class=\"notes\" font-size=\"12.5\">\n");
  absl::StrAppend(&s, "<rect x=\"", Num(kRight - 8 - w), "\" y=\"", Num(kTop + 8), "\" width=\"",
                  Num(w), "\" height=\"", Num(h),
                  "\" fill=\"#ffffff\" fill-opacity=\"0.85\" stroke=\"#ccc\" rx=\"3\"/>\n");
  for (size_t i = 0; i < notes.size(); ++i) {
    absl::StrAppend(&s, "<text x=\"", Num(kRight - 16), "\" y=\"",
                    Num(kTop + 25 + 18.0 * static_cast<double>(i)),
                    "\" text-anchor=\"end\" fill=\"", notes[i].second, "\"",
                    i == 0 && !finite.empty() ? " font-weight=\"bold\"" : "", ">",
                    Escape(notes[i].first), "</text>\n");
  }
  absl::StrAppend(&s, "</g>\n");
}

}  // namespace

std::string LossCurveSvg(const std::vector<std::pair<int64_t, double>>& points,
                         const std::string& title,
                         const std::vector<std::pair<int64_t, double>>& eval_points) {
  Points finite;
  std::vector<int64_t> skipped;
  for (const auto& p : points) {
    if (std::isfinite(p.second)) {
      finite.push_back(p);
    } else {
      skipped.push_back(p.first);
    }
  }
  std::stable_sort(finite.begin(), finite.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  Points eval;
  for (const auto& p : eval_points)
    if (std::isfinite(p.second)) eval.push_back(p);
  std::stable_sort(eval.begin(), eval.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  // The frame holds both curves.
  Points both = finite;
  both.insert(both.end(), eval.begin(), eval.end());
  std::stable_sort(both.begin(), both.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  const Frame frame = FrameOf(both);
  std::string s;
  AppendHeader(s, title);
  AppendAxes(s, frame);
  const std::vector<double> ema = AppendCurves(s, frame, finite);
  AppendEvalCurve(s, frame, eval);
  AppendNotes(s, finite, skipped, ema, eval);
  absl::StrAppend(&s, "</svg>\n");
  return s;
}

absl::Status WriteLossCurveSvg(const std::string& path,
                               const std::vector<std::pair<int64_t, double>>& points,
                               const std::string& title,
                               const std::vector<std::pair<int64_t, double>>& eval_points) {
  const std::string svg = LossCurveSvg(points, title, eval_points);
  ASSIGN_OR_RETURN(AtomicFile out, AtomicFile::Create(path));
  RETURN_IF_ERROR(out.Write(svg.data(), svg.size()));
  return out.Commit();
}

}  // namespace weft
