#include "plans/explain.h"

#include <c10/core/ScalarType.h>

#include <algorithm>
#include <iomanip>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/slice.h"
#include "base/status.h"
#include "base/text_file.h"
#include "checkpoint/checkpoint_dir.h"
#include "models/layers.h"
#include "parallel/pipeline_schedule.h"
#include "plans/engine.h"
#include "plans/pipeline_stages.h"
#include "plans/shipped_plans.h"
#include "plans/styles.h"

namespace weft {
namespace {

struct Collectives {
  const char* forward;
  const char* backward;
};

// The collectives a parameter's module runs, as its style's record says;
// inside a region (gather, moe_tp_experts, grouped_gemm, ep_router) the
// region's module communicates, once, and only partial gradients are summed.
Collectives Of(const ShardSpec& s) {
  const StyleRule& rule = RuleOf(s.style);
  if (!s.region.empty()) return {"-", rule.grad_allreduce ? "all-reduce(param grad)" : "-"};
  return {rule.forward, rule.backward};
}

std::string Shape(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string Human(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (bytes >= 1024 && u < 3) bytes /= 1024, ++u;
  return absl::StrFormat("%.1f %s", bytes, units[u]);
}

}  // namespace

namespace {

// What the dry run reads: config.json, the checkpoint's headers, the plan,
// and rank 0's shards of a model built on the meta device (no memory).
struct Inputs {
  ModelConfig config;
  at::ScalarType dtype = at::kFloat;
  std::shared_ptr<CausalLM> model;
  std::unique_ptr<Checkpoint> checkpoint;  // null for a config.json alone
  std::map<std::string, ShardSpec> shards;
  std::string config_json;
};

// One pp rank's share, for the memory estimate.
struct RankShare {
  int64_t tp_local = 0;  // parameter elements after tp (before dp_shard)
  int64_t pieces = 0;    // after dp_shard too (rank 0's pieces)
  int64_t layers = 0;
  int64_t in_flight = 1;
  std::vector<std::pair<std::string, int64_t>> by_name;  // tp-local elements per parameter
};

absl::StatusOr<Inputs> Read(const ExplainOptions& c) {
  if (c.tp < 1 || c.dp < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tp ", c.tp, " --dp ", c.dp, " (expected both >= 1)"));
  }
  if (c.dp_shard < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--dp-shard ", c.dp_shard, " (expected >= 1)"));
  }
  Inputs in;
  // A checkpoint directory, or a config.json alone (nothing to check against).
  const bool config_only = c.model.size() > 5 && c.model.substr(c.model.size() - 5) == ".json";
  const std::string config_path = config_only ? c.model : c.model + "/config.json";
  ASSIGN_OR_RETURN(std::string config_json, ReadTextFile(config_path));
  ASSIGN_OR_RETURN(in.config, ParseModelConfig(config_json));
  in.config_json = config_json;
  ASSIGN_OR_RETURN(in.dtype, ModelDtype(in.config));
  ModelOptions options;
  options.dtype = in.dtype;
  ASSIGN_OR_RETURN(in.model, CreateCausalLM(in.config, options));
  if (!config_only) {
    ASSIGN_OR_RETURN(in.checkpoint, Checkpoint::Open(c.model));  // maps; reads the headers only
  }
  ASSIGN_OR_RETURN(Plan plan, ResolvePlanForConfig(c.plan, config_json));
  ASSIGN_OR_RETURN(in.shards, PlanShards(*in.model, plan, c.tp, /*rank=*/0));
  return in;
}

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// One row per sharded parameter, and the totals per rank.
struct Table {
  std::vector<std::vector<std::string>> rows = {
      {"parameter", "style", "global", "local", "bytes/rank", "forward", "backward", "placement"}};
  double full_bytes = 0, local_bytes = 0;
  int forward_collectives = 0, backward_collectives = 0;
};

absl::StatusOr<Table> Tabulate(const ExplainOptions& c, const Inputs& in) {
  Table t;
  std::map<std::string, bool> module_counted;
  const size_t element = c10::elementSize(in.dtype);
  for (const auto& item : in.model->named_parameters()) {
    const std::string& name = item.key();
    // A fused parameter the checkpoint keeps per expert (or renamed) loads
    // through the model's checkpoint_layouts.
    const bool laid_out = LayoutFor(in.model->checkpoint_layouts, name, nullptr) != nullptr;
    if (in.checkpoint != nullptr && in.checkpoint->Find(name) == nullptr && !laid_out &&
        !(name == "lm_head.weight" && in.config.tie_word_embeddings)) {
      return absl::InvalidArgumentError(
          absl::StrCat(c.model, ": the checkpoint has no tensor '", name, "'"));
    }
    std::vector<int64_t> global = item.value().sizes().vec();
    t.full_bytes += static_cast<double>(Numel(global)) * element;
    auto it = in.shards.find(name);
    std::vector<int64_t> local = it == in.shards.end() ? global : it->second.local_shape;
    const int64_t local_numel = Numel(local);
    t.local_bytes += static_cast<double>(local_numel) * element;
    if (it == in.shards.end()) continue;
    const ShardSpec& shard = it->second;
    Collectives coll = Of(shard);
    std::string backward = coll.backward;
    if (shard.kv_head >= 0) backward += " + all-reduce(param grad, shared KV head)";
    std::string module = name.substr(0, name.rfind('.'));
    const std::string& region = shard.region;
    if (!region.empty() && !module_counted["region " + region]) {
      module_counted["region " + region] = true;  // all-reduce out, input grad in
      ++t.forward_collectives;
      ++t.backward_collectives;
    }
    if (!module_counted[module]) {
      module_counted[module] = true;
      t.forward_collectives += std::string(coll.forward) != "-";
      t.backward_collectives += std::string(coll.backward) != "-";
    }
    if (shard.kv_head >= 0) ++t.backward_collectives;
    std::string forward = coll.forward;
    if (!region.empty()) forward = absl::StrCat("(", region, ": all-reduce(output))");
    std::string placement =
        shard.dtensor.placements.empty() ? "Replicate()" : shard.dtensor.placements[0].ToString();
    if (shard.dtensor.expert >= 0) {
      absl::StrAppend(&placement, " expert ", shard.dtensor.expert, " on rank ",
                      shard.dtensor.owner);
    }
    t.rows.push_back({name, StyleName(shard.style), Shape(global), Shape(local),
                      absl::StrCat(local_numel * element), forward, backward, placement});
  }
  return t;
}

void Print(const ExplainOptions& c, const Inputs& in, const Table& t, std::ostream& out) {
  if (c.tp == 1 && c.pp > 1) {  // nothing is sharded: the stage table says it all
    out << in.config.architecture << ", " << c10::toString(in.dtype) << ", parameters "
        << Human(t.full_bytes) << "\n";
    return;
  }
  std::vector<size_t> width(t.rows[0].size(), 0);
  for (const auto& row : t.rows) {
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  for (const auto& row : t.rows) {
    for (size_t i = 0; i < row.size(); ++i) {
      out << std::left << std::setw(i + 1 < row.size() ? width[i] : 0) << row[i]
          << (i + 1 < row.size() ? "  " : "\n");
    }
  }
  out << "mesh: " << (c.pp > 1 ? absl::StrCat("pp(", c.pp, ") * ") : std::string()) << "dp(" << c.dp
      << ") * tp(" << c.tp << ") = " << c.pp * c.dp * c.tp << " ranks; " << in.config.architecture
      << ", " << c10::toString(in.dtype) << "\n";
  out << "per rank: parameters " << Human(t.local_bytes) << " of " << Human(t.full_bytes) << " ("
      << absl::StrFormat("%.1f", 100.0 * t.local_bytes / t.full_bytes) << "%); "
      << t.forward_collectives << " collectives per forward, " << t.backward_collectives
      << " per backward";
  if (c.dp > 1) out << ", plus the dp gradient all-reduce of " << Human(t.local_bytes);
  out << "\n";
}

}  // namespace

int64_t GatheredElements(const std::vector<std::pair<std::string, int64_t>>& tp_local,
                         bool reshard_after_forward) {
  std::map<std::string, int64_t> layers;  // "model.layers.3" -> elements
  int64_t others = 0, all = 0;
  for (const auto& [name, n] : tp_local) {
    all += n;
    const size_t at = name.find(".layers.");
    if (at == std::string::npos) {
      others += n;
      continue;
    }
    const size_t end = name.find('.', at + 8);
    layers[name.substr(0, end)] += n;
  }
  int64_t largest = 0;
  for (const auto& [layer, n] : layers) largest = std::max(largest, n);
  return reshard_after_forward ? others + largest : all;
}

MemoryEstimate EstimateMemory(const ModelConfig& config, const MemoryShape& shape) {
  MemoryEstimate m;
  const double element = static_cast<double>(c10::elementSize(shape.dtype));
  const double n = static_cast<double>(shape.local_parameters);
  m.parameters = (n + static_cast<double>(shape.frozen_parameters)) * element;
  m.gradients = n * element;
  m.optimizer = n * (8.0 + (shape.dtype == at::kFloat ? 0.0 : 4.0));  // moments (+ master)
  m.gathered = static_cast<double>(shape.gathered_parameters) * element;
  const double h = static_cast<double>(config.hidden_size);
  const double a = static_cast<double>(config.num_attention_heads);
  const double s = static_cast<double>(shape.seq_len), b = static_cast<double>(shape.micro_batch);
  const double t = static_cast<double>(shape.tp);
  const double layer = s * b * h * (10.0 + 24.0 / t + 5.0 * a * s / (h * t)) *
                       (c10::elementSize(shape.dtype) >= 4 ? 2.0 : 1.0);
  const double layers = static_cast<double>(shape.layers);
  const double in_flight = static_cast<double>(std::max<int64_t>(1, shape.microbatches_in_flight));
  m.activations = shape.activation_checkpointing
                      ? in_flight * layers * s * b * h * element + (layers > 0 ? layer : 0.0)
                      : in_flight * layers * layer;
  return m;
}

std::string MemoryEstimate::ToString() const {
  return absl::StrCat("parameters ", Human(parameters), ", gradients ", Human(gradients),
                      ", optimizer ", Human(optimizer), ", activations ~", Human(activations),
                      gathered > 0 ? absl::StrCat(", gathered for compute ", Human(gathered)) : "",
                      ", total ~", Human(total()));
}

namespace {

// Megatron's estimate of one decoder layer's activations kept for backward
// (Korthikanti et al. 2022, tensor parallel without sequence parallelism):
// s*b*h*(10 + 24/t + 5*a*s/(h*t)) bytes in 16-bit, twice that in fp32.
double LayerActivationBytes(const ModelConfig& config, int64_t b, int64_t s, int t,
                            at::ScalarType dtype) {
  const double h = static_cast<double>(config.hidden_size);
  const double a = static_cast<double>(config.num_attention_heads);
  const double sixteen_bit =
      static_cast<double>(s) * b * h * (10.0 + 24.0 / t + 5.0 * a * s / (h * t));
  return sixteen_bit * (c10::elementSize(dtype) >= 4 ? 2.0 : 1.0);
}

// Elements of parameter `name` on tp rank 0, and of its dp_shard piece 0.
std::pair<int64_t, int64_t> LocalElements(const ExplainOptions& c, const Inputs& in,
                                          const std::string& name, const at::Tensor& value) {
  auto it = in.shards.find(name);
  const std::vector<int64_t> local =
      it == in.shards.end() ? value.sizes().vec() : it->second.local_shape;
  const int64_t numel = Numel(local);
  if (local.empty() || local[0] == 0) return {numel, numel};
  const int64_t row = numel / local[0];
  return {numel, ChunkOf(local[0], c.dp_shard, 0).length * row};
}

absl::StatusOr<std::vector<RankShare>> ExplainPipeline(const ExplainOptions& c, const Inputs& in,
                                                       std::ostream& out) {
  if (c.micro_batch < 1 || c.seq_len < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--micro-batch ", c.micro_batch, " --seq-len ",
                                                   c.seq_len, " (expected both >= 1)"));
  }
  PipelineShape shape;
  shape.schedule = c.pp_schedule;
  shape.ranks = c.pp;
  shape.microbatches = c.pp_microbatches > 0 ? c.pp_microbatches : c.pp;
  const std::string lower = absl::AsciiStrToLower(c.pp_schedule);
  const bool interleaved = lower.find("interleaved") == 0;
  ASSIGN_OR_RETURN(Plan plan, ResolvePpPlanForConfig(c.pp_plan, in.config_json));
  shape.stages_per_rank = c.stages_per_rank > 0               ? c.stages_per_rank
                          : plan.pp_split.stages_per_rank > 0 ? plan.pp_split.stages_per_rank
                          : interleaved                       ? 2
                                                              : 1;
  ASSIGN_OR_RETURN(PipelineSchedule schedule, MakeSchedule(shape));
  ASSIGN_OR_RETURN(SimulatedPipeline sim, Simulate(schedule));
  ASSIGN_OR_RETURN(PipelineStages stages, PartitionModel(*in.model, plan, schedule.num_stages()));
  const size_t element = c10::elementSize(in.dtype);
  std::vector<std::vector<std::string>> rows = {
      {"stage", "pp rank", "modules", "layers", "parameters", "bytes/rank"}};
  std::vector<double> rank_bytes(c.pp, 0.0);
  std::vector<int64_t> rank_layers(c.pp, 0);  // the most layers of a stage on the rank
  std::vector<RankShare> shares(c.pp);
  for (int s = 0; s < stages.num_stages(); ++s) {
    int64_t params = 0;
    double bytes = 0;
    for (const auto& item : in.model->named_parameters()) {
      if (stages.StageOf(item.key()) != s) continue;
      if (!(item.key() == "lm_head.weight" && in.config.tie_word_embeddings &&
            schedule.RankOf(0) == schedule.RankOf(s))) {
        auto [tp_local, piece] = LocalElements(c, in, item.key(), item.value());
        shares[schedule.RankOf(s)].tp_local += tp_local;
        shares[schedule.RankOf(s)].pieces += piece;
        shares[schedule.RankOf(s)].by_name.emplace_back(item.key(), tp_local);
      }
      const std::vector<int64_t> global = item.value().sizes().vec();
      auto it = in.shards.find(item.key());
      params += Numel(global);
      bytes += static_cast<double>(Numel(it == in.shards.end() ? global : it->second.local_shape)) *
               element;
    }
    int64_t layers = 0;
    for (const std::string& unit : stages.stages[s]) {
      layers += unit.rfind("model.layers.", 0) == 0 || unit.find(".layers.") != std::string::npos;
    }
    const int rank = schedule.RankOf(s);
    rank_bytes[rank] += bytes;
    rank_layers[rank] = std::max(rank_layers[rank], layers);
    shares[rank].layers += layers;
    const auto& units = stages.stages[s];
    rows.push_back(
        {absl::StrCat(s), absl::StrCat(rank),
         units.size() == 1 ? units[0] : absl::StrCat(units.front(), " .. ", units.back()),
         absl::StrCat(layers), absl::StrCat(params), Human(bytes)});
  }
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  out << "\npipeline: pp " << c.pp << " x " << shape.stages_per_rank
      << " stage(s) per rank = " << schedule.num_stages() << " stages; schedule " << c.pp_schedule
      << ", " << shape.microbatches << " micro-batches of " << c.micro_batch << " x " << c.seq_len
      << " tokens\n";
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) {
      out << std::left << std::setw(i + 1 < row.size() ? width[i] : 0) << row[i]
          << (i + 1 < row.size() ? "  " : "\n");
    }
  }
  const double per_layer =
      LayerActivationBytes(in.config, c.micro_batch, c.seq_len, c.tp, in.dtype);
  for (int r = 0; r < c.pp; ++r) {
    out << "pp rank " << r << ": parameters " << Human(rank_bytes[r]) << " per rank; activations "
        << Human(per_layer * rank_layers[r] * sim.peak_activations[r]) << " at peak ("
        << sim.peak_activations[r] << " micro-batches in flight x " << rank_layers[r]
        << " layers x " << Human(per_layer) << ")\n";
  }
  out << "activations per layer and micro-batch: Megatron's s*b*h*(10 + 24/tp + 5*a*s/(h*tp)) "
         "bytes in 16-bit (x2 in fp32); without activation checkpointing\n";
  out << "schedule (rank x time, unit-time model: F 1, B 2, I 1, W 1):\n" << FormatGrid(sim.grid);
  out << absl::StrFormat("bubble %.4g (idle / busy), makespan %d\n", sim.bubble, sim.makespan);
  for (int r = 0; r < c.pp; ++r) shares[r].in_flight = sim.peak_activations[r];
  return shares;
}

}  // namespace

absl::Status ExplainPlan(const ExplainOptions& options, std::ostream& out) {
  if (options.pp < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--pp ", options.pp, " (expected >= 1)"));
  }
  ASSIGN_OR_RETURN(Inputs inputs, Read(options));
  ASSIGN_OR_RETURN(Table table, Tabulate(options, inputs));
  Print(options, inputs, table, out);
  std::vector<RankShare> shares(1);
  if (options.pp > 1) {
    ASSIGN_OR_RETURN(shares, ExplainPipeline(options, inputs, out));
  } else {
    for (const auto& item : inputs.model->named_parameters()) {
      if (item.key() == "lm_head.weight" && inputs.config.tie_word_embeddings) continue;
      auto [tp_local, piece] = LocalElements(options, inputs, item.key(), item.value());
      shares[0].tp_local += tp_local;
      shares[0].pieces += piece;
      shares[0].by_name.emplace_back(item.key(), tp_local);
    }
    shares[0].layers = inputs.config.num_hidden_layers;
  }
  out << "\ntraining memory per rank (estimate; micro-batch " << options.micro_batch << " x "
      << options.seq_len << " tokens"
      << (options.activation_checkpointing ? ", activation checkpointing" : "")
      << (options.dp_shard > 1 ? absl::StrCat(", dp_shard ", options.dp_shard) : "") << "):\n";
  for (size_t r = 0; r < shares.size(); ++r) {
    MemoryShape shape;
    shape.dtype = inputs.dtype;
    shape.local_parameters = shares[r].pieces;
    shape.gathered_parameters =
        options.dp_shard > 1 ? GatheredElements(shares[r].by_name, /*reshard_after_forward=*/true)
                             : 0;
    shape.layers = shares[r].layers;
    shape.tp = options.tp;
    shape.micro_batch = options.micro_batch;
    shape.seq_len = options.seq_len;
    shape.microbatches_in_flight = shares[r].in_flight;
    shape.activation_checkpointing = options.activation_checkpointing;
    out << (options.pp > 1 ? absl::StrCat("pp rank ", r, ": ") : std::string())
        << EstimateMemory(inputs.config, shape).ToString() << "\n";
  }
  return absl::OkStatus();
}

}  // namespace weft
