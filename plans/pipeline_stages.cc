#include "plans/pipeline_stages.h"

#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"
#include "models/config.h"
#include "plans/shipped_plans.h"

namespace weft {
namespace {

// True when `name` is `unit` or lies under it.
bool Under(const std::string& name, const std::string& unit) {
  return name == unit || (name.size() > unit.size() && name.compare(0, unit.size(), unit) == 0 &&
                          name[unit.size()] == '.');
}

std::string Count(int64_t n, const char* what) {
  return absl::StrCat(n, " ", what, n == 1 ? "" : "s");
}

}  // namespace

int PipelineStages::StageOf(const std::string& name) const {
  for (int s = 0; s < num_stages(); ++s) {
    for (const std::string& unit : stages[s]) {
      if (Under(name, unit)) return s;
    }
  }
  return -1;
}

absl::StatusOr<std::vector<std::vector<std::string>>> CutStages(
    const std::vector<std::string>& before, const std::vector<std::string>& layers,
    const std::vector<std::string>& after, const PpSplit& split, int num_stages) {
  std::vector<std::string> units = before;
  units.insert(units.end(), layers.begin(), layers.end());
  units.insert(units.end(), after.begin(), after.end());
  const int64_t n_layers = static_cast<int64_t>(layers.size());
  if (num_stages < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline: ", num_stages, " stages (expected at least 1)"));
  }
  std::vector<std::vector<std::string>> stages(num_stages);
  auto index_of = [&](const std::string& unit) -> int64_t {
    auto it = std::find(units.begin(), units.end(), unit);
    return it == units.end() ? -1 : it - units.begin();
  };
  auto units_text = [&] {
    return absl::StrCat(units.front(), " .. ", units.back(), " (", units.size(), " modules)");
  };
  if (!split.stages.empty()) {
    if (static_cast<int>(split.stages.size()) != num_stages) {
      return absl::InvalidArgumentError(absl::StrCat("pp_split.stages lists ", split.stages.size(),
                                                     " stages, but the pipeline has ", num_stages,
                                                     " (pp x stages_per_rank)"));
    }
    int64_t next = 0;  // every unit once, in forward order
    for (int s = 0; s < num_stages; ++s) {
      if (split.stages[s].empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("pp_split.stages: stage ", s, " has no module (expected at least one)"));
      }
      for (const std::string& unit : split.stages[s]) {
        const int64_t at = index_of(unit);
        if (at < 0) {
          return absl::InvalidArgumentError(absl::StrCat("pp_split.stages: stage ", s, " names '",
                                                         unit, "', which is no pipeline module (",
                                                         units_text(), ")"));
        }
        if (at < next) {
          return absl::InvalidArgumentError(
              absl::StrCat("pp_split.stages: '", unit, "' in stage ", s,
                           " is named twice or out of forward order (expected ", units[next], ")"));
        }
        if (at > next) {
          return absl::InvalidArgumentError(absl::StrCat("pp_split.stages: '", units[next],
                                                         "' is in no stage (expected every module "
                                                         "once, in forward order)"));
        }
        stages[s].push_back(unit);
        ++next;
      }
    }
    if (next < static_cast<int64_t>(units.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("pp_split.stages: '", units[next],
                       "' is in no stage (expected every module once, in forward order)"));
    }
    return stages;
  }
  std::vector<int64_t> starts;  // index of each stage's first unit
  if (!split.split_points.empty()) {
    if (static_cast<int>(split.split_points.size()) != num_stages - 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("pp_split.split_points has ", split.split_points.size(), " points for ",
                       num_stages, " stages (expected ", num_stages - 1, ")"));
    }
    starts.push_back(0);
    for (const std::string& point : split.split_points) {
      const int64_t at = index_of(point);
      if (at < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "pp_split.split_points: '", point, "' is no pipeline module (", units_text(), ")"));
      }
      if (at <= starts.back()) {
        return absl::InvalidArgumentError(
            absl::StrCat("pp_split.split_points: '", point,
                         "' does not come after the previous point (expected modules in forward "
                         "order, each stage non-empty)"));
      }
      starts.push_back(at);
    }
  } else {
    std::vector<int64_t> per_stage;  // decoder layers per stage
    if (!split.layers_per_stage.empty()) {
      per_stage = split.layers_per_stage;
      int64_t sum = 0;
      for (int64_t n : per_stage) sum += n;
      if (static_cast<int>(per_stage.size()) != num_stages || sum != n_layers) {
        return absl::InvalidArgumentError(
            absl::StrCat("pp_split.layers_per_stage [", absl::StrJoin(per_stage, ", "), "] has ",
                         per_stage.size(), " entries summing to ", sum, " (expected ", num_stages,
                         " stages summing to the model's ", n_layers, " layers)"));
      }
    } else {
      // torchtitan's even split: the embedding and the head count as layers.
      const int64_t first = split.first_stage_less_layers, last = split.last_stage_less_layers;
      const int64_t effective = n_layers + first + last;
      if (num_stages > effective) {
        return absl::InvalidArgumentError(absl::StrCat(
            "pipeline: ", num_stages, " stages for a model of ", Count(n_layers, "layer"),
            " (expected at most ", effective, ": the layers plus first_stage_less_layers ", first,
            " and last_stage_less_layers ", last, ")"));
      }
      const int64_t base = effective / num_stages, extra = effective % num_stages;
      for (int s = 0; s < num_stages; ++s) {
        int64_t n = base + (s < extra ? 1 : 0);
        if (s == 0) n -= first;
        if (s == num_stages - 1) n -= last;
        per_stage.push_back(std::max<int64_t>(0, n));
      }
      // Rounding may leave a layer over or short: the middle stages absorb it.
      int64_t sum = 0;
      for (int64_t n : per_stage) sum += n;
      for (int s = num_stages - 1; sum < n_layers; s = (s + num_stages - 1) % num_stages) {
        ++per_stage[s], ++sum;
      }
      for (int s = 0; sum > n_layers; s = (s + 1) % num_stages) {
        if (per_stage[s] > 0) --per_stage[s], --sum;
      }
    }
    int64_t at = static_cast<int64_t>(before.size());
    starts.push_back(0);
    for (int s = 0; s + 1 < num_stages; ++s) {
      at += per_stage[s];
      starts.push_back(at);
    }
  }
  starts.push_back(static_cast<int64_t>(units.size()));
  for (int s = 0; s < num_stages; ++s) {
    for (int64_t i = starts[s]; i < starts[s + 1]; ++i) stages[s].push_back(units[i]);
    if (stages[s].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("pipeline: stage ", s, " of ", num_stages,
                                                     " gets no module (", units_text(),
                                                     "; expected fewer stages or another split)"));
    }
  }
  return stages;
}

absl::StatusOr<PipelineStages> PartitionModel(CausalLM& model, const Plan& plan, int num_stages) {
  if (plan.pp.empty()) {
    return absl::InvalidArgumentError(
        "the plan has no pp_plan (expected pp_plan: {module: [[inputs], [outputs]]}, in forward "
        "order)");
  }
  std::map<std::string, std::shared_ptr<torch::nn::Module>> modules;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    modules[item.key()] = item.value();
  }
  PipelineStages out;
  std::vector<std::string> before, layers, after;
  for (const PpPlanEntry& entry : plan.pp) {
    std::string name = entry.module;
    if (!modules.count(name) && modules.count("model." + name)) name = "model." + name;
    if (!modules.count(name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "pp_plan key '", entry.module, "' matches no module of ", model.config.architecture,
          " (expected a piece of the model in forward order, e.g. model.layers)"));
    }
    PpPlanEntry resolved = entry;
    resolved.module = name;
    out.plan.push_back(resolved);
    std::vector<std::string> children;
    for (const auto& child : modules[name]->named_children()) {
      int64_t index = 0;
      if (!absl::SimpleAtoi(child.key(), &index)) {
        children.clear();
        break;
      }
      children.push_back(name + "." + child.key());
    }
    if (!children.empty()) {
      if (!layers.empty()) {
        return absl::InvalidArgumentError(absl::StrCat("pp_plan has two layer lists ('",
                                                       layers.front(), "' and '", name,
                                                       "'; expected one, the decoder layers)"));
      }
      layers = children;
    } else {
      (layers.empty() ? before : after).push_back(name);
    }
  }
  if (layers.empty()) {
    return absl::InvalidArgumentError(
        "pp_plan names no layer list (expected the decoder layers, e.g. model.layers)");
  }
  for (const std::string& unit : before) {
    if (!dynamic_cast<Module*>(modules[unit].get())) {
      return absl::InvalidArgumentError(absl::StrCat("pp_plan key '", unit, "' is not a module"));
    }
  }
  ASSIGN_OR_RETURN(out.stages, CutStages(before, layers, after, plan.pp_split, num_stages));
  for (const auto& item : model.named_parameters()) {
    if (out.StageOf(item.key()) < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "parameter '", item.key(), "' of ", model.config.architecture,
          " lies in no pp_plan module (expected the pp_plan to cover the whole model)"));
    }
  }
  return out;
}

std::shared_ptr<StageGate> GatePipelineStages(CausalLM& model, const PipelineStages& stages) {
  auto gate = std::make_shared<StageGate>();
  std::map<std::string, Module*> modules;
  for (auto& [name, module] : NamedWeftModules(model)) modules[name] = module;
  bool model_first = true;
  for (int s = 0; s < stages.num_stages(); ++s) {
    const std::vector<std::string>& units = stages.stages[s];
    for (size_t i = 0; i < units.size(); ++i) {
      auto it = modules.find(units[i]);
      if (it == modules.end()) continue;  // PartitionModel checked they exist
      const bool first = i == 0, last = i + 1 == units.size(), takes_ids = model_first;
      model_first = false;
      it->second->SetInterceptor([gate, s, first, last, takes_ids](const Module::Tensors& inputs,
                                                                   const Module::Body& run) {
        if (gate->current < 0) return run(inputs);
        if (gate->current != s) {
          // Not this stage: pass the activation through untouched (the unit
          // that takes the token ids gives the received activation instead).
          return takes_ids ? gate->input : inputs.at(0);
        }
        at::Tensor out;
        if (first && s > 0) {
          Module::Tensors in = inputs;
          in.at(0) = gate->input;
          out = run(in);
        } else {
          out = run(inputs);
        }
        if (last) gate->output = out;
        return out;
      });
    }
  }
  return gate;
}

std::vector<std::string> StageParameterNames(CausalLM& model, const PipelineStages& stages,
                                             int stage) {
  std::vector<std::string> out;
  for (const auto& item : model.named_parameters()) {
    if (stages.StageOf(item.key()) == stage) out.push_back(item.key());
  }
  return out;
}

namespace {

class Pipelined : public CausalLM {
 public:
  Pipelined(std::shared_ptr<CausalLM> model, std::shared_ptr<StageGate> gate,
            std::vector<int> rank_of, std::shared_ptr<const ProcessGroup> pp)
      : CausalLM(model->name(), model->config, model->options),
        model_(std::move(model)),
        gate_(std::move(gate)),
        rank_of_(std::move(rank_of)),
        pp_(std::move(pp)) {}

  CausalLMOutput Forward(const CausalLMInputs& inputs) override {
    TORCH_CHECK(!inputs.output_hidden_states,
                "output_hidden_states is not available through pipeline stages");
    const int me = pp_->rank(), last = static_cast<int>(rank_of_.size()) - 1;
    const int64_t b = inputs.input_ids.size(0), t = inputs.input_ids.size(1);
    const at::TensorOptions options =
        at::TensorOptions().dtype(model_->options.dtype).device(inputs.input_ids.device());
    // Every stage of this rank sees the cache as it was before this call
    // (the model's forward advances it once per stage).
    const int64_t past = inputs.cache ? inputs.cache->length : 0;
    at::Tensor activation;  // handed to this rank's next stage
    CausalLMOutput out;
    for (int s = 0; s <= last; ++s) {
      if (rank_of_[s] != me) continue;
      at::Tensor input;
      if (s > 0 && rank_of_[s - 1] == me) {
        input = activation;
      } else if (s > 0) {
        input = at::empty({b, t, config.hidden_size}, options);
        pp_->Recv(input, rank_of_[s - 1], s);
      }
      gate_->current = s;
      gate_->input = input;
      CausalLMInputs stage_inputs = inputs;
      if (s != last) stage_inputs.labels = at::Tensor();
      if (inputs.cache) inputs.cache->length = past;
      try {
        out = model_->Forward(stage_inputs);
      } catch (...) {
        gate_->current = -1;
        throw;
      }
      activation = gate_->output;
      gate_->current = -1;
      gate_->input = gate_->output = at::Tensor();
      if (s < last && rank_of_[s + 1] != me)
        pp_->Send(activation.contiguous(), rank_of_[s + 1], s + 1);
    }
    if (inputs.cache) inputs.cache->length = past + t;
    // Every rank gets the last stage's logits (and loss).
    const int holder = rank_of_[last];
    at::Tensor shape = at::zeros({3}, at::kLong);
    if (me == holder) {
      for (int i = 0; i < 3; ++i) shape[i] = out.logits.size(i);
    }
    pp_->Broadcast(shape, holder);
    CausalLMOutput result;
    result.logits = me == holder ? out.logits.contiguous()
                                 : at::empty({shape[0].item<int64_t>(), shape[1].item<int64_t>(),
                                              shape[2].item<int64_t>()},
                                             options);
    pp_->Broadcast(result.logits, holder);
    if (inputs.labels.defined()) {
      result.loss = me == holder ? out.loss.detach().to(at::kFloat).contiguous()
                                 : at::empty({}, options.dtype(at::kFloat));
      pp_->Broadcast(result.loss, holder);
    }
    return result;
  }

 private:
  std::shared_ptr<CausalLM> model_;
  std::shared_ptr<StageGate> gate_;
  std::vector<int> rank_of_;
  std::shared_ptr<const ProcessGroup> pp_;
};

}  // namespace

std::shared_ptr<CausalLM> PipelinedCausalLM(std::shared_ptr<CausalLM> model,
                                            const PipelineStages& stages,
                                            std::shared_ptr<const ProcessGroup> pp) {
  auto gate = GatePipelineStages(*model, stages);
  std::vector<int> rank_of;
  for (int s = 0; s < stages.num_stages(); ++s) rank_of.push_back(s);
  TORCH_CHECK(stages.num_stages() == pp->size(), "PipelinedCausalLM: ", stages.num_stages(),
              " stages on ", pp->size(), " pp ranks (expected one each)");
  return std::make_shared<Pipelined>(std::move(model), std::move(gate), std::move(rank_of),
                                     std::move(pp));
}

std::shared_ptr<CausalLM> PipelinedCausalLM(std::shared_ptr<CausalLM> model,
                                            std::shared_ptr<StageGate> gate,
                                            std::vector<int> rank_of,
                                            std::shared_ptr<const ProcessGroup> pp) {
  return std::make_shared<Pipelined>(std::move(model), std::move(gate), std::move(rank_of),
                                     std::move(pp));
}

absl::StatusOr<Plan> ResolvePpPlanForConfig(const std::string& argument,
                                            const std::string& config_json) {
  if (argument != "auto") {
    ASSIGN_OR_RETURN(Plan plan, LoadPlanFile(argument));
    if (plan.pp.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(argument,
                       ": no pp_plan (expected pp_plan: {module: [[inputs], [outputs]]}, in "
                       "forward order)"));
    }
    return plan;
  }
  auto from_config = PpPlanFromConfigJson(config_json);
  if (from_config.ok() || from_config.status().code() != absl::StatusCode::kNotFound) {
    return from_config;
  }
  auto shipped = ShippedPlanFor(config_json, /*pipeline=*/true);
  if (absl::IsNotFound(shipped.status())) {
    return absl::NotFoundError(absl::StrCat(
        "--pp-plan auto: config.json has no base_model_pp_plan and ", shipped.status().message()));
  }
  return shipped;
}

}  // namespace weft
