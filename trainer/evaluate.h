// -----------------------------------------------------------------------------
// File: trainer/evaluate.h
// -----------------------------------------------------------------------------
//
// Evaluate: the validation loss of a model over a token file, as
// transformers computes it: the mean cross-entropy over every counted label
// (labels -100 skipped: masked prompts, packed documents' first tokens,
// padding) of the batches evaluated, summed over the data-parallel ranks, and
// its perplexity exp(loss). Deterministic (the samples in order, no
// shuffle); every rank runs the same number of forwards (the last global
// batch is padded), so tensor-parallel and sharded models never wait on a
// rank that ran out of data. The trainer's `eval` section and `weft eval`
// both run it.
//
//   DataLoaderOptions o;  o.seq_len = 256;  o.global_batch = 8;  o.shuffle = false;
//   o.allow_partial = true;
//   ASSIGN_OR_RETURN(auto loader, DataLoader::Create(file, o));
//   EvalResult r = Evaluate(*model, *loader, EvalOptions());
//   // r.loss, r.perplexity, r.tokens
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "models/causal_lm.h"
#include "parallel/process_group.h"
#include "trainer/data_loader.h"

namespace weft {

struct EvalOptions {
  /// Global batches to evaluate from the start; 0: all of the loader's.
  int64_t batches = 0;
  /// Rows per forward (0: the rank's whole batch).
  int64_t micro_batch = 0;
  /// The groups whose ranks hold other data (dp, dp_shard): totals are summed
  /// over them, so every rank returns the global figures.
  std::vector<ProcessGroup*> data_groups;
  at::Device device = at::kCPU;
};

struct EvalResult {
  double loss = 0;        // mean over the counted labels (NaN when there are none)
  double perplexity = 0;  // exp(loss)
  int64_t tokens = 0;     // counted labels, over all ranks
  int64_t batches = 0;    // global batches evaluated
};

/// Runs the model forward (no gradients) over the loader's eval batches.
EvalResult Evaluate(CausalLM& model, DataLoader& loader, const EvalOptions& options);

}  // namespace weft
