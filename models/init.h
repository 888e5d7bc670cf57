// Weight initialisation for training from scratch, as transformers'
// PreTrainedModel._init_weights does for the decoder models in models/:
// Linear and Embedding weights ~ N(0, initializer_range), biases 0, RMSNorm
// weights 1; tied embeddings share one tensor.
//
// Each parameter draws from its own generator, seeded by (seed, the
// parameter's Hugging Face name), over the parameter's full shape; a rank
// then keeps only its slice (`slice_of`). So every tensor-parallel degree
// holds slices of the same weights, and a parameter's values do not depend
// on the order of construction.
//
//   ASSIGN_OR_RETURN(auto model, CreateCausalLM(config, ModelOptions()));  // meta
//   RETURN_IF_ERROR(InitializeWeights(*model, InitOptions(/*seed=*/1234)));
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "checkpoint/loader.h"
#include "models/causal_lm.h"

namespace weft {

struct InitOptions {
  explicit InitOptions(uint64_t seed_value = 0) : seed(seed_value) {}
  /// Every parameter's values are a function of (seed, name).
  uint64_t seed = 0;
  c10::Device device = c10::Device(c10::kCPU);
  /// The part of each parameter (by name) this rank keeps; empty: all of it.
  std::function<Slice(const std::string& name)> slice_of;
  /// The parameters this rank holds (a pipeline stage's); the others stay on
  /// the meta device. Unset: all. A tied lm_head kept without the embedding
  /// gets the embedding's values.
  std::function<bool(const std::string& name)> keep;
};

/// `full` restricted to `slice` (per dim, the ranges concatenated in order;
/// an empty list keeps the dim whole): what the loader reads for `slice`.
at::Tensor SliceTensor(const at::Tensor& full, const Slice& slice);

/// Replaces every parameter of `model` (built on the meta device by
/// CreateCausalLM) with its initial values in the model's dtype. A module
/// type it does not know is an error naming it.
absl::Status InitializeWeights(CausalLM& model, const InitOptions& options);

}  // namespace weft
