// `weft forward`, `weft generate` and `weft eval`.
//
//   weft forward --model DIR (--input IN.safetensors | --prompt-ids 1,2,3) --output OUT.safetensors
//                [--hidden-states] [--dtype float32|bfloat16] [--attn eager|sdpa]
//                [--trace TRACE.json] [--tp-plan FILE|auto]
//   weft generate --model DIR --prompt-ids 1,2,3 --max-new-tokens N
//                 [--greedy | --temperature T --top-k K --top-p P --seed S] [--tp-plan FILE|auto]
//   weft eval --model DIR --data PREFIX [--seq-len N] [--batch B] [--batches K] [--packing]
//             [--dtype float32|bfloat16] [--attn eager|sdpa] [--tp-plan FILE|auto]
//
// `weft eval` prints the mean cross-entropy over the counted labels of the
// token file's samples (windows of seq_len, or packed documents; labels -100
// where its loss mask is 0) and its perplexity, as transformers computes
// them on the same tokens:
//   eval: loss 2.3456, perplexity 10.44 over 12345 tokens (50 samples of 256)
//
// Each takes --adapter DIR: a PEFT LoRA adapter (weft's <output_dir>/adapter
// or one PEFT saved) applied on top of the checkpoint.
//
// With --tp-plan the command is one rank of a tensor-parallel job (start it
// under weftrun, mpirun or srun; the mesh is the whole world); rank 0 writes.
//
// Both return the exit code (cli/command.h).
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "cli/command.h"

namespace weft {

/// The flags every model command takes (AddModelFlags registers them).
struct ModelFlags {
  std::string model;
  std::string dtype = "float32";
  std::string device = "cpu";  // cpu, cuda or cuda:N
  std::string attn = "sdpa";
  std::string tp_plan;
  std::string adapter;    // a PEFT LoRA adapter directory, or empty
  bool zero_copy = true;  // CPU weights as views of the mapped files where they fit
};

struct ForwardCommand : ModelFlags {
  /// The input: a safetensors file with input_ids [B, T] (and optionally
  /// attention_mask), or comma-separated ids (one sequence); exactly one.
  std::string input;
  std::string prompt_ids;
  std::string output;
  bool hidden_states = false;
  std::string trace;
  std::string pp_plan;  // pipeline stages over the world (or --pp ranks of it)
  int pp = 0;           // pipeline ranks; 0: the world (without --tp-plan)
};

struct GenerateCommand : ModelFlags {
  std::string prompt_ids;
  int64_t max_new_tokens = 16;
  bool greedy = true;
  double temperature = 1.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 0;
  std::string pp_plan;  // pipeline stages over the world (or --pp ranks of it)
  int pp = 0;           // pipeline ranks; 0: the world (without --tp-plan)
};

struct EvalCommand : ModelFlags {
  std::string data;      // a token file prefix (trainer/token_file.h)
  int64_t seq_len = 0;   // 0: min(max_position_embeddings, 1024)
  int64_t batch = 8;     // sequences per forward
  int64_t batches = 0;   // batches at most; 0: the whole file
  bool packing = false;  // whole documents packed per row (as data.packing)
};

int RunForward(const ForwardCommand& command, std::ostream& err);
int RunGenerate(const GenerateCommand& command, std::ostream& out, std::ostream& err);
int RunEval(const EvalCommand& command, std::ostream& out, std::ostream& err);

/// Register `forward` and `generate` on `app`.
Subcommand AddForward(CLI::App& app);
Subcommand AddGenerate(CLI::App& app);
Subcommand AddEval(CLI::App& app);

}  // namespace weft
