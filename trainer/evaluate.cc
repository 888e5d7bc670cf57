#include "trainer/evaluate.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace weft {

EvalResult Evaluate(CausalLM& model, DataLoader& loader, const EvalOptions& options) {
  at::NoGradGuard no_grad;
  EvalResult result;
  result.batches = options.batches > 0 ? std::min(options.batches, loader.eval_batches())
                                       : loader.eval_batches();
  double loss_sum = 0;  // this rank's summed cross-entropy over its counted labels
  double counted = 0;
  for (int64_t b = 0; b < result.batches; ++b) {
    Batch batch = loader.EvalBatch(b);
    const int64_t rows = batch.input_ids.size(0);
    const int64_t micro = options.micro_batch > 0 ? std::min(options.micro_batch, rows) : rows;
    for (int64_t first = 0; first < rows; first += micro) {
      const int64_t n_rows = std::min(micro, rows - first);
      CausalLMInputs inputs;
      inputs.input_ids = batch.input_ids.narrow(0, first, n_rows).to(options.device);
      inputs.labels = batch.labels.narrow(0, first, n_rows).to(options.device);
      if (batch.position_ids.defined()) {
        inputs.position_ids = batch.position_ids.narrow(0, first, n_rows).to(options.device);
      }
      // Padding rows run too: a sharded model's collectives need every rank.
      CausalLMOutput out = model.Forward(inputs);
      const at::Tensor labels = batch.labels.narrow(0, first, n_rows);  // the CPU copy
      const double n = (labels.narrow(1, 1, labels.size(1) - 1) != -100).sum().item<double>();
      if (n > 0) {
        loss_sum += out.loss.item<double>() * n;
        counted += n;
      }
    }
  }
  at::Tensor totals = at::tensor({loss_sum, counted}, at::kDouble);
  for (ProcessGroup* group : options.data_groups) {
    if (group != nullptr && group->size() > 1) group->AllReduce(totals);
  }
  const double total = totals[1].item<double>();
  result.tokens = static_cast<int64_t>(total);
  result.loss =
      total > 0 ? totals[0].item<double>() / total : std::numeric_limits<double>::quiet_NaN();
  result.perplexity = std::exp(result.loss);
  return result;
}

}  // namespace weft
