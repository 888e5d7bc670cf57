#include "parallel/pipeline_schedule.h"

#include <algorithm>
#include <cctype>
#include <climits>
#include <map>
#include <optional>
#include <tuple>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/status.h"

namespace weft {
namespace {

using Kind = PipelineAction::Kind;

char KindChar(Kind kind) {
  switch (kind) {
    case Kind::kForward:
      return 'F';
    case Kind::kBackward:
      return 'B';
    case Kind::kBackwardInput:
      return 'I';
    case Kind::kBackwardWeight:
      return 'W';
  }
  return '?';
}

absl::Status Invalid(absl::string_view message) {
  return absl::InvalidArgumentError(std::string(message));
}

// "interleaved_1f1b" and "Interleaved1F1B" alike.
std::string Canonical(absl::string_view name) {
  std::string out;
  for (char c : name) {
    if (c != '_' && c != '-') out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

PipelineAction Act(int stage, Kind kind, int mb) { return PipelineAction{stage, kind, mb}; }

// Rank r: every forward, then every backward (fill, drain).
void GPipe(PipelineSchedule& s) {
  const int m = s.shape.microbatches;
  for (int r = 0; r < s.shape.ranks; ++r) {
    for (int j = 0; j < m; ++j) s.actions[r].push_back(Act(r, Kind::kForward, j));
    for (int j = 0; j < m; ++j) s.actions[r].push_back(Act(r, Kind::kBackward, j));
  }
}

// Rank r: p - r forwards, then one backward and one forward in turn, then
// the remaining backwards (torch's Schedule1F1B, Megatron's
// forward_backward_pipelining_without_interleaving).
void OneFOneB(PipelineSchedule& s) {
  const int p = s.shape.ranks, m = s.shape.microbatches;
  for (int r = 0; r < p; ++r) {
    auto& list = s.actions[r];
    int f = 0, b = 0;
    for (; f < std::min(m, p - r); ++f) list.push_back(Act(r, Kind::kForward, f));
    while (f < m) {
      list.push_back(Act(r, Kind::kBackward, b++));
      list.push_back(Act(r, Kind::kForward, f++));
    }
    while (b < m) list.push_back(Act(r, Kind::kBackward, b++));
  }
}

// Megatron's interleaved 1F1B with torch's rounds: the m micro-batches go
// in rounds of m / rounds; within a round each of the rank's v stages runs
// the round's micro-batches in turn (depth first). Rank r warms up with
// (v - 1) * per_round + 2 * (p - 1 - r) forwards, then alternates one forward
// and one backward, then drains the backwards (its stages in reverse order).
void Interleaved(PipelineSchedule& s) {
  const int p = s.shape.ranks, v = s.shape.stages_per_rank, m = s.shape.microbatches;
  const int rounds = std::max(1, m / p), per_round = m / rounds;
  const int total = m * v;
  auto forward = [&](int r, int k) {
    const int chunk = (k / per_round) % v;
    const int mb = (k / (per_round * v)) * per_round + k % per_round;
    return Act(chunk * p + r, Kind::kForward, mb);
  };
  auto backward = [&](int r, int k) {
    const int chunk = v - 1 - (k / per_round) % v;
    const int mb = (k / (per_round * v)) * per_round + k % per_round;
    return Act(chunk * p + r, Kind::kBackward, mb);
  };
  for (int r = 0; r < p; ++r) {
    auto& list = s.actions[r];
    const int warmup = std::min(total, (v - 1) * per_round + 2 * (p - 1 - r));
    int f = 0, b = 0;
    for (; f < warmup; ++f) list.push_back(forward(r, f));
    while (f < total) {
      list.push_back(forward(r, f++));
      list.push_back(backward(r, b++));
    }
    while (b < total) list.push_back(backward(r, b++));
  }
}

// Readiness of actions, by the time their inputs exist.
class Dependencies {
 public:
  explicit Dependencies(int num_stages) : num_stages_(num_stages) {}
  // When `a` finishes (INT_MAX while it has not run).
  void Finish(const PipelineAction& a, int time) {
    const Kind key = a.kind == Kind::kBackward ? Kind::kBackwardInput : a.kind;
    done_[{a.stage, key, a.microbatch}] = time;
    if (a.kind == Kind::kBackward) done_[{a.stage, Kind::kBackwardWeight, a.microbatch}] = time;
  }
  // The action `a` waits for, if any has not finished by `time`.
  std::optional<PipelineAction> Missing(const PipelineAction& a, int time) const {
    std::vector<PipelineAction> needs;
    switch (a.kind) {
      case Kind::kForward:
        if (a.stage > 0) needs.push_back(Act(a.stage - 1, Kind::kForward, a.microbatch));
        break;
      case Kind::kBackward:
      case Kind::kBackwardInput:
        needs.push_back(Act(a.stage, Kind::kForward, a.microbatch));
        if (a.stage + 1 < num_stages_) {
          needs.push_back(Act(a.stage + 1, Kind::kBackwardInput, a.microbatch));
        }
        break;
      case Kind::kBackwardWeight:
        needs.push_back(Act(a.stage, Kind::kBackwardInput, a.microbatch));
        break;
    }
    for (const PipelineAction& n : needs) {
      auto it = done_.find({n.stage, n.kind, n.microbatch});
      if (it == done_.end() || it->second > time) return n;
    }
    return std::nullopt;
  }

 private:
  int num_stages_;
  std::map<std::tuple<int, Kind, int>, int> done_;
};

int Cost(const ActionCosts& c, Kind kind) {
  switch (kind) {
    case Kind::kForward:
      return c.forward;
    case Kind::kBackward:
      return c.backward;
    case Kind::kBackwardInput:
      return c.backward_input;
    case Kind::kBackwardWeight:
      return c.backward_weight;
  }
  return 1;
}

// ZB1P after ZB-H1 (Qi et al., arXiv 2401.10241), built by list scheduling
// on the unit-time model: whenever rank r is free it runs, in this order of
// preference, the next input gradient (I) that is ready; the next forward
// while fewer than p - r micro-batches await their I (1F1B's rhythm) and
// fewer than p hold activations (1F1B's peak, that of its first rank); else
// the oldest pending weight gradient (W), which thus fills the bubbles.
void ZeroBubble(PipelineSchedule& s) {
  const int p = s.shape.ranks, m = s.shape.microbatches;
  const ActionCosts costs;
  Dependencies deps(p);
  std::vector<int> next_f(p, 0), next_i(p, 0), next_w(p, 0), free_at(p, 0);
  for (int t = 0;;) {
    bool left = false;
    int next_event = INT_MAX;
    for (int r = 0; r < p; ++r) {
      if (next_w[r] < m) left = true;
      if (free_at[r] > t) {
        next_event = std::min(next_event, free_at[r]);
        continue;
      }
      std::optional<PipelineAction> pick;
      if (next_i[r] < m && !deps.Missing(Act(r, Kind::kBackwardInput, next_i[r]), t)) {
        pick = Act(r, Kind::kBackwardInput, next_i[r]++);
      } else if (next_f[r] < m && next_f[r] - next_i[r] < p - r && next_f[r] - next_w[r] < p &&
                 !deps.Missing(Act(r, Kind::kForward, next_f[r]), t)) {
        pick = Act(r, Kind::kForward, next_f[r]++);
      } else if (next_w[r] < next_i[r]) {
        pick = Act(r, Kind::kBackwardWeight, next_w[r]++);
      }
      if (!pick) continue;
      free_at[r] = t + Cost(costs, pick->kind);
      deps.Finish(*pick, free_at[r]);
      s.actions[r].push_back(*pick);
      next_event = std::min(next_event, free_at[r]);
    }
    if (!left) break;
    t = next_event == INT_MAX ? t + 1 : next_event;
  }
}

}  // namespace

std::string PipelineAction::ToString() const {
  return absl::StrCat(stage, std::string(1, KindChar(kind)), microbatch);
}

absl::StatusOr<PipelineAction> PipelineAction::Parse(absl::string_view text) {
  absl::string_view t = absl::StripAsciiWhitespace(text);
  size_t at = t.find_first_of("FBIW");
  PipelineAction a;
  if (at == absl::string_view::npos || !absl::SimpleAtoi(t.substr(0, at), &a.stage) ||
      !absl::SimpleAtoi(t.substr(at + 1), &a.microbatch) || a.stage < 0 || a.microbatch < 0 ||
      !std::isdigit(static_cast<unsigned char>(t[0])) ||
      !std::isdigit(static_cast<unsigned char>(t.back()))) {
    return Invalid(absl::StrCat("pipeline action '", text,
                                "' is not {stage}{F|B|I|W}{microbatch} (expected e.g. 0F0, 3B1)"));
  }
  switch (t[at]) {
    case 'F':
      a.kind = Kind::kForward;
      break;
    case 'B':
      a.kind = Kind::kBackward;
      break;
    case 'I':
      a.kind = Kind::kBackwardInput;
      break;
    default:
      a.kind = Kind::kBackwardWeight;
  }
  return a;
}

int PipelineSchedule::RankOf(int stage) const {
  const int p = shape.ranks;
  if (mapping == StageMapping::kV) return stage < p ? stage : 2 * p - 1 - stage;
  return stage % p;
}

std::vector<std::string> ScheduleNames() { return {"GPipe", "1F1B", "Interleaved1F1B", "ZB1P"}; }

absl::StatusOr<PipelineSchedule> MakeSchedule(const PipelineShape& shape) {
  const std::string name = Canonical(shape.schedule);
  const int p = shape.ranks, v = shape.stages_per_rank, m = shape.microbatches;
  if (p < 1 || v < 1 || m < 1) {
    return Invalid(absl::StrCat("pipeline of ", p, " ranks x ", v, " stages x ", m,
                                " micro-batches (expected each >= 1)"));
  }
  PipelineSchedule s;
  s.shape = shape;
  s.actions.resize(p);
  const bool interleaved = name == "interleaved1f1b";
  if (name != "gpipe" && name != "1f1b" && !interleaved && name != "zb1p") {
    return Invalid(absl::StrCat("pipeline schedule '", shape.schedule, "' is not known (expected ",
                                absl::StrJoin(ScheduleNames(), ", "), ")"));
  }
  if (!interleaved && v != 1) {
    return Invalid(absl::StrCat("pipeline schedule ", shape.schedule,
                                " runs one stage per rank, not ", v,
                                " (expected stages_per_rank 1, or Interleaved1F1B)"));
  }
  if (interleaved && v < 2) {
    return Invalid(absl::StrCat("pipeline schedule ", shape.schedule,
                                " needs at least 2 stages per rank, not ", v,
                                " (expected stages_per_rank >= 2, or 1F1B)"));
  }
  if (name != "gpipe" && m < p) {
    return Invalid(absl::StrCat("pipeline schedule ", shape.schedule, " with ", p,
                                " ranks needs at least ", p, " micro-batches, not ", m,
                                " (expected pp_microbatches >= pp; fewer would leave ranks waiting "
                                "for each other forever)"));
  }
  if (interleaved) {
    const int rounds = std::max(1, m / p);
    if (m % rounds != 0) {
      return Invalid(absl::StrCat("pipeline schedule ", shape.schedule, ": ", m,
                                  " micro-batches do not split into ", rounds, " rounds of ", p,
                                  " or more (expected a multiple of ", rounds, ", e.g. ",
                                  m - m % rounds, ")"));
    }
  }
  if (name == "gpipe") GPipe(s);
  if (name == "1f1b") OneFOneB(s);
  if (interleaved) Interleaved(s);
  if (name == "zb1p") ZeroBubble(s);
  RETURN_IF_ERROR(ValidateSchedule(s));
  return s;
}

absl::Status ValidateSchedule(const PipelineSchedule& s) {
  const int stages = s.num_stages(), m = s.shape.microbatches;
  if (static_cast<int>(s.actions.size()) != s.shape.ranks) {
    return Invalid(absl::StrCat("pipeline schedule has ", s.actions.size(), " ranks (expected ",
                                s.shape.ranks, ")"));
  }
  // Position of each action in its rank's list, by (stage, kind, mb).
  std::map<std::tuple<int, Kind, int>, int> seen;
  for (int r = 0; r < s.shape.ranks; ++r) {
    for (size_t i = 0; i < s.actions[r].size(); ++i) {
      const PipelineAction& a = s.actions[r][i];
      if (a.stage >= stages || a.microbatch >= m) {
        return Invalid(absl::StrCat("rank ", r, " runs ", a.ToString(), ", outside ", stages,
                                    " stages x ", m, " micro-batches"));
      }
      if (s.RankOf(a.stage) != r) {
        return Invalid(absl::StrCat("rank ", r, " runs ", a.ToString(), " but stage ", a.stage,
                                    " is on rank ", s.RankOf(a.stage)));
      }
      if (!seen.emplace(std::make_tuple(a.stage, a.kind, a.microbatch), static_cast<int>(i))
               .second) {
        return Invalid(absl::StrCat("rank ", r, " runs ", a.ToString(), " twice"));
      }
    }
  }
  auto at = [&](int stage, Kind kind, int mb) {
    auto it = seen.find({stage, kind, mb});
    return it == seen.end() ? -1 : it->second;
  };
  for (int stage = 0; stage < stages; ++stage) {
    for (int j = 0; j < m; ++j) {
      const std::string name = absl::StrCat("stage ", stage, ", micro-batch ", j);
      const int f = at(stage, Kind::kForward, j), b = at(stage, Kind::kBackward, j);
      const int in = at(stage, Kind::kBackwardInput, j), w = at(stage, Kind::kBackwardWeight, j);
      if (f < 0) return Invalid(absl::StrCat(name, " has no forward (F)"));
      if ((b >= 0) == (in >= 0 || w >= 0) || ((in >= 0) != (w >= 0))) {
        return Invalid(absl::StrCat(name, " needs one backward: B, or I and W"));
      }
      const int first_backward = b >= 0 ? b : in;
      if (first_backward < f)
        return Invalid(absl::StrCat(name, " runs its backward before its forward"));
      if (w >= 0 && w < in) return Invalid(absl::StrCat(name, " runs W before I"));
    }
  }
  return absl::OkStatus();
}

std::string ScheduleToCsv(const PipelineSchedule& s) {
  std::string csv;
  for (const auto& list : s.actions) {
    absl::StrAppend(&csv,
                    absl::StrJoin(list, ",",
                                  [](std::string* out, const PipelineAction& a) {
                                    absl::StrAppend(out, a.ToString());
                                  }),
                    "\n");
  }
  return csv;
}

absl::StatusOr<PipelineSchedule> ScheduleFromCsv(absl::string_view csv, const PipelineShape& shape,
                                                 StageMapping mapping) {
  PipelineSchedule s;
  s.shape = shape;
  s.mapping = mapping;
  for (absl::string_view row : absl::StrSplit(csv, '\n', absl::SkipWhitespace())) {
    auto& list = s.actions.emplace_back();
    for (absl::string_view cell : absl::StrSplit(row, ',')) {
      if (absl::StripAsciiWhitespace(cell).empty()) continue;  // idle
      ASSIGN_OR_RETURN(PipelineAction a, PipelineAction::Parse(cell));
      list.push_back(a);
    }
  }
  RETURN_IF_ERROR(ValidateSchedule(s));
  return s;
}

absl::StatusOr<SimulatedPipeline> Simulate(const PipelineSchedule& s, const ActionCosts& costs) {
  const int p = s.shape.ranks;
  Dependencies deps(s.num_stages());
  SimulatedPipeline out;
  out.busy.assign(p, 0);
  out.grid.resize(p);
  std::vector<size_t> next(p, 0);
  std::vector<int> free_at(p, 0);
  out.peak_activations.assign(p, 0);
  std::vector<int> held(p, 0);
  std::vector<std::optional<PipelineAction>> running_action(p);
  for (int t = 0;;) {
    // Actions that end now release their activations.
    for (int r = 0; r < p; ++r) {
      if (running_action[r] && free_at[r] <= t) {
        const Kind k = running_action[r]->kind;
        if (k == Kind::kBackward || k == Kind::kBackwardWeight) --held[r];
        running_action[r].reset();
      }
    }
    bool left = false, running = false;
    int next_event = INT_MAX;
    for (int r = 0; r < p; ++r) {
      if (free_at[r] > t) {
        running = true;
        next_event = std::min(next_event, free_at[r]);
        continue;
      }
      if (next[r] >= s.actions[r].size()) continue;
      left = true;
      const PipelineAction& a = s.actions[r][next[r]];
      if (deps.Missing(a, t)) continue;
      const int cost = Cost(costs, a.kind);
      free_at[r] = t + cost;
      deps.Finish(a, free_at[r]);
      running_action[r] = a;
      if (a.kind == Kind::kForward) {
        out.peak_activations[r] = std::max(out.peak_activations[r], ++held[r]);
      }
      out.busy[r] += cost;
      out.grid[r].resize(t, "");
      for (int k = 0; k < cost; ++k) out.grid[r].push_back(a.ToString());
      ++next[r];
      running = true;
      next_event = std::min(next_event, free_at[r]);
    }
    if (!left && !running) break;
    if (!running) {
      std::vector<std::string> blocked;
      for (int r = 0; r < p; ++r) {
        if (next[r] >= s.actions[r].size()) continue;
        const PipelineAction& a = s.actions[r][next[r]];
        const PipelineAction need = *deps.Missing(a, t);
        std::string what = need.ToString();
        if (need.kind == Kind::kBackwardInput) {  // B or I make the input gradient
          what = absl::StrCat(Act(need.stage, Kind::kBackward, need.microbatch).ToString(), " (or ",
                              what, ")");
        }
        blocked.push_back(absl::StrCat("rank ", r, " waits to run ", a.ToString(), " for ", what,
                                       " of rank ", s.RankOf(need.stage)));
      }
      for (auto& row : out.grid) row.resize(t, "");
      return absl::FailedPreconditionError(
          absl::StrCat("pipeline schedule ", s.shape.schedule, " deadlocks at time ", t, ": ",
                       absl::StrJoin(blocked, "; "), "\n", FormatGrid(out.grid)));
    }
    t = next_event;
  }
  for (int r = 0; r < p; ++r) out.makespan = std::max(out.makespan, free_at[r]);
  long busy = 0, idle = 0;
  for (int r = 0; r < p; ++r) {
    out.idle.push_back(out.makespan - out.busy[r]);
    out.grid[r].resize(out.makespan, "");
    busy += out.busy[r];
    idle += out.idle[r];
  }
  out.bubble = busy == 0 ? 0 : static_cast<double>(idle) / static_cast<double>(busy);
  return out;
}

std::string FormatGrid(const std::vector<std::vector<std::string>>& grid) {
  std::string text;
  for (size_t r = 0; r < grid.size(); ++r) {
    absl::StrAppend(&text, "rank ", r, ":");
    std::string row;
    for (const std::string& cell : grid[r]) {
      absl::StrAppendFormat(&row, " %-4s", cell.empty() ? "." : cell);
    }
    absl::StrAppend(&text, absl::StripTrailingAsciiWhitespace(row), "\n");
  }
  return text;
}

}  // namespace weft
