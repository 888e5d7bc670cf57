// weft: the command line. One subcommand per job; each lives in its package.
//
//   weft smoke [--device cpu|cuda|auto]   the runtime's 2-rank smoke job
//   weft inspect PATH                     tensors of a safetensors file or checkpoint
//   weft forward --model DIR --input IN --output OUT [...]   logits (and hidden states)
//   weft generate --model DIR --prompt-ids 1,2,3 [...]       KV-cached generation
//   weft plan explain --model DIR --plan FILE|auto --tp N [--dp M]   TP dry run
//   weft train --config FILE.yaml [--set key=value ...] [--resume]   training
#include <CLI/CLI.hpp>
#include <iostream>

#include "checkpoint/inspect.h"
#include "launcher/smoke.h"
#include "models/commands.h"
#include "plans/explain.h"
#include "trainer/trainer.h"

int main(int argc, char** argv) {
  CLI::App app{"weft: train and fine-tune Hugging Face transformer models on many GPUs.", "weft"};
  app.require_subcommand(1);

  weft::SmokeOptions smoke;
  CLI::App* smoke_cmd = app.add_subcommand(
      "smoke", "Run every collective on every rank and print what each computed.");
  smoke_cmd->add_option("--device", smoke.device, "cpu, cuda or auto")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));

  std::string inspect_path;
  CLI::App* inspect_cmd = app.add_subcommand(
      "inspect", "List the tensors of a .safetensors file or a checkpoint directory.");
  inspect_cmd->add_option("PATH", inspect_path, "a .safetensors file or checkpoint directory")
      ->required();

  weft::ForwardCommand forward;
  CLI::App* forward_cmd = app.add_subcommand(
      "forward", "Run a Hugging Face checkpoint on input_ids; write logits (and hidden states).");
  forward_cmd->add_option("--model", forward.model, "checkpoint directory")->required();
  forward_cmd
      ->add_option("--input", forward.input,
                   "safetensors with input_ids [B, T] (int64) "
                   "and optionally attention_mask")
      ->required();
  forward_cmd->add_option("--output", forward.output, "safetensors to write logits to")->required();
  forward_cmd->add_flag("--hidden-states", forward.hidden_states,
                        "also write hidden_states_0..N (transformers' order)");
  forward_cmd->add_option("--dtype", forward.dtype, "float32 or bfloat16");
  forward_cmd->add_option("--attn", forward.attn, "attention implementation: eager or sdpa");
  forward_cmd->add_option("--trace", forward.trace, "write every module call as JSON here");
  forward_cmd->add_option("--tp-plan", forward.tp_plan,
                          "tensor parallelism over the world: a plan file, or auto");

  weft::GenerateCommand generate;
  CLI::App* generate_cmd =
      app.add_subcommand("generate", "Generate token ids from a prompt of token ids.");
  generate_cmd->add_option("--model", generate.model, "checkpoint directory")->required();
  generate_cmd->add_option("--prompt-ids", generate.prompt_ids, "comma-separated ids")->required();
  generate_cmd->add_option("--max-new-tokens", generate.max_new_tokens, "new tokens at most");
  bool greedy_flag = false;
  generate_cmd->add_flag("--greedy", greedy_flag, "argmax decoding (the default)");
  auto* temperature =
      generate_cmd->add_option("--temperature", generate.temperature, "sampling temperature");
  auto* top_k =
      generate_cmd->add_option("--top-k", generate.top_k, "keep the k most likely tokens");
  auto* top_p = generate_cmd->add_option("--top-p", generate.top_p, "nucleus sampling mass");
  auto* seed = generate_cmd->add_option("--seed", generate.seed, "sampling seed");
  generate_cmd->add_option("--dtype", generate.dtype, "float32 or bfloat16");
  generate_cmd->add_option("--attn", generate.attn, "attention implementation: eager or sdpa");
  generate_cmd->add_option("--tp-plan", generate.tp_plan,
                           "tensor parallelism over the world: a plan file, or auto");

  weft::ExplainCommand explain;
  CLI::App* plan_cmd = app.add_subcommand("plan", "Tensor-parallel plans.");
  plan_cmd->require_subcommand(1);
  CLI::App* explain_cmd = plan_cmd->add_subcommand(
      "explain", "Dry run: per parameter the style, shapes, bytes per rank and collectives.");
  explain_cmd->add_option("--model", explain.model, "checkpoint directory")->required();
  explain_cmd->add_option("--plan", explain.plan, "a plan file, or auto");
  explain_cmd->add_option("--tp", explain.tp, "tensor-parallel size")->required();
  explain_cmd->add_option("--dp", explain.dp, "data-parallel size");

  weft::TrainCommand train;
  CLI::App* train_cmd = app.add_subcommand(
      "train",
      "Train or fine-tune a model as configured by a YAML file (under weftrun, mpirun "
      "or srun for several ranks).");
  train_cmd->add_option("--config", train.config, "the training configuration (YAML)")->required();
  train_cmd->add_option("--set", train.overrides,
                        "override a key of the configuration: --set optimizer.lr=3e-4 "
                        "(repeatable)");
  train_cmd->add_flag("--resume", train.resume,
                      "continue from the latest checkpoint in output_dir");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (smoke_cmd->parsed()) return weft::RunSmoke(smoke);
  if (inspect_cmd->parsed()) return weft::RunInspect(inspect_path, std::cout, std::cerr);
  if (forward_cmd->parsed()) return weft::RunForward(forward, std::cerr);
  if (train_cmd->parsed()) return weft::RunTrain(train, std::cout, std::cerr);
  if (explain_cmd->parsed()) return weft::RunPlanExplain(explain, std::cout, std::cerr);
  if (generate_cmd->parsed()) {
    bool sampling = temperature->count() + top_k->count() + top_p->count() + seed->count() > 0;
    if (sampling && greedy_flag) {
      std::cerr << "weft generate: --greedy cannot be combined with --temperature, --top-k, "
                   "--top-p or --seed"
                << std::endl;
      return 2;
    }
    generate.greedy = !sampling;
    return weft::RunGenerate(generate, std::cout, std::cerr);
  }
  return 2;
}
