// -----------------------------------------------------------------------------
// File: plans/pipeline_stages.h
// -----------------------------------------------------------------------------
//
// Pipeline stages of an unmodified model, from a pp_plan (plans/plan.h).
//
// The pp_plan names the model's top-level pieces in forward order
// (transformers' format: `model.embed_tokens`, `model.layers`, `model.norm`,
// `lm_head`); a module list among them (`model.layers`) contributes each of
// its children, so the units of a stage are `model.embed_tokens`,
// `model.layers.0`, ..., `lm_head`, under their global names. The split
// (plan.pp_split) cuts the units into `num_stages` contiguous stages.
//
// A rank runs a stage through the whole model's own forward: every unit gets
// a gate (Module::SetInterceptor) that runs the unit when its stage is the
// current one and passes its input through otherwise, so rotary cos/sin,
// masks and position ids are recomputed from the micro-batch on every stage
// and only the activation crosses a stage boundary. The first unit of a
// stage takes the received activation; the last one's output is the stage's.
//
//   ASSIGN_OR_RETURN(PipelineStages stages, PartitionModel(*meta_model, plan, /*num_stages=*/4));
//   auto gate = GatePipelineStages(*model, stages);
//   gate->current = 2; gate->input = received;
//   model->Forward(inputs);           // runs model.layers.k..l only
//   at::Tensor out = gate->output;
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/causal_lm.h"
#include "parallel/process_group.h"
#include "plans/plan.h"

namespace weft {

struct PipelineStages {
  /// Every stage's units (module names), in forward order.
  std::vector<std::vector<std::string>> stages;
  /// The pp_plan as resolved against the model (full module names).
  std::vector<PpPlanEntry> plan;

  int num_stages() const { return static_cast<int>(stages.size()); }
  /// The stage holding parameter or module `name`; -1 when none does.
  int StageOf(const std::string& name) const;
};

/// Cuts `before` + `layers` + `after` (unit names in forward order; the
/// decoder layers in the middle) into `num_stages` stages by `split`. Errors
/// (one line each): more stages than the split can fill, a stage left empty,
/// layers_per_stage of another length or sum, a split point or stage module
/// that is no unit, out of order, or named twice, a unit in no stage.
absl::StatusOr<std::vector<std::vector<std::string>>> CutStages(
    const std::vector<std::string>& before, const std::vector<std::string>& layers,
    const std::vector<std::string>& after, const PpSplit& split, int num_stages);

/// Resolves `plan.pp` against `model` (keys relative to the base model are
/// prefixed with `model.`; a key that matches no module is an error naming
/// it), checks that every parameter lies in a unit, and cuts the stages.
absl::StatusOr<PipelineStages> PartitionModel(CausalLM& model, const Plan& plan, int num_stages);

/// What the gates share: the stage to run (-1: every unit runs, as without
/// pipelining), the activation it receives and, after Forward, its output.
struct StageGate {
  int current = -1;
  at::Tensor input;
  at::Tensor output;
};

/// Installs a gate on every unit of `model` (see the file comment).
std::shared_ptr<StageGate> GatePipelineStages(CausalLM& model, const PipelineStages& stages);

/// The names of the parameters of `stage`'s units, as model.named_parameters()
/// orders them (a tied lm_head's weight included under its own name).
std::vector<std::string> StageParameterNames(CausalLM& model, const PipelineStages& stages,
                                             int stage);

/// A causal LM that runs the stages of `model` (built with only pp rank r's
/// stage r, r = 0..pp-1, one stage per rank) across `pp`, for inference:
/// every pp rank calls Forward with the same inputs (a KV cache included);
/// each stage receives the activation, runs, and sends it on; every rank
/// returns the last stage's logits (and loss). output_hidden_states is not
/// available through stages (an exception says so).
///
///   auto pipelined = PipelinedCausalLM(stage_model, stages, mesh.group("pp"));
///   at::Tensor ids = Generate(*pipelined, prompt, options);  // the same on every rank
std::shared_ptr<CausalLM> PipelinedCausalLM(std::shared_ptr<CausalLM> model,
                                            const PipelineStages& stages,
                                            std::shared_ptr<const ProcessGroup> pp);

/// The same over gates already installed (the trainer's): stage s runs on
/// pp rank `rank_of[s]`; a rank may hold several (an interleaved mapping).
std::shared_ptr<CausalLM> PipelinedCausalLM(std::shared_ptr<CausalLM> model,
                                            std::shared_ptr<StageGate> gate,
                                            std::vector<int> rank_of,
                                            std::shared_ptr<const ProcessGroup> pp);

/// The plan `auto` (or a file) gives for pipelining: config.json's
/// base_model_pp_plan + the head, else the pp_plan shipped for the
/// architecture; a file must hold a pp_plan.
absl::StatusOr<Plan> ResolvePpPlanForConfig(const std::string& argument,
                                            const std::string& config_json);

}  // namespace weft
