#include "cli/plan_explain.h"

#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

namespace weft {

int RunPlanExplain(const ExplainOptions& options, std::ostream& out, std::ostream& err) {
  return RunCommand("plan explain", err, [&] { return ExplainPlan(options, out); });
}

Subcommand AddPlanExplain(CLI::App& app) {
  auto options = std::make_shared<ExplainOptions>();
  CLI::App* plan = app.add_subcommand("plan", "Tensor-parallel plans.");
  plan->require_subcommand(1);
  CLI::App* cmd = plan->add_subcommand(
      "explain",
      "Dry run: per parameter the style, shapes, bytes per rank and collectives; with --pp the "
      "stages, activation memory and the schedule.");
  cmd->add_option("--model", options->model,
                  "checkpoint directory, or a config.json alone (no checkpoint needed)")
      ->required();
  cmd->add_option("--tp-plan,--plan", options->plan,
                  "a plan file, or auto (as forward's --tp-plan)");
  cmd->add_option("--tp", options->tp, "tensor-parallel size")->capture_default_str();
  cmd->add_option("--dp", options->dp, "data-parallel size");
  cmd->add_option("--pp", options->pp, "pipeline-parallel size (ranks)")->capture_default_str();
  cmd->add_option("--pp-plan", options->pp_plan, "a plan file with a pp_plan, or auto")
      ->capture_default_str();
  cmd->add_option("--pp-schedule", options->pp_schedule, "gpipe, 1f1b, interleaved_1f1b or zb1p")
      ->capture_default_str();
  cmd->add_option("--pp-microbatches", options->pp_microbatches, "micro-batches per step (0: pp)");
  cmd->add_option("--stages-per-rank", options->stages_per_rank,
                  "stages per pp rank (0: 2 for interleaved_1f1b, else 1)");
  cmd->add_option("--micro-batch", options->micro_batch,
                  "sequences per micro-batch, for the activation estimate")
      ->capture_default_str();
  cmd->add_option("--seq-len", options->seq_len, "tokens per sequence, for the activation estimate")
      ->capture_default_str();
  cmd->add_option("--dp-shard", options->dp_shard,
                  "sharded data parallelism (FSDP): ranks sharing one replica's parameters")
      ->capture_default_str();
  cmd->add_flag("--activation-checkpointing", options->activation_checkpointing,
                "estimate activations with per-layer recomputation");
  return {cmd, [options] { return RunPlanExplain(*options, std::cout, std::cerr); }};
}

}  // namespace weft
