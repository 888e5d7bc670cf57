// from_pretrained: a Hugging Face checkpoint directory -> a ready model.
//
// Builds the module tree with parameters on the meta device (no memory),
// checks every parameter against the checkpoint (present, same shape) before
// allocating, then fills them through the streaming loader
// (checkpoint/loader.h), which reserves all weights in one block.
//
//   PretrainedOptions options;
//   options.dtype = at::kBFloat16;
//   ASSIGN_OR_RETURN(auto model, FromPretrained("/models/llama", options));
//   CausalLMInputs inputs;
//   inputs.input_ids = ids;
//   CausalLMOutput out = model->Forward(inputs);
#pragma once

#include <c10/core/Device.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "checkpoint/loader.h"
#include "models/causal_lm.h"

namespace weft {

struct PretrainedOptions {
  /// Compute and parameter dtype; nullopt: config.json's torch_dtype.
  c10::optional<at::ScalarType> dtype;
  c10::Device device = c10::Device(c10::kCPU);
  /// Memory for a device other than the CPU (parallel/cuda_plugin.h's
  /// CudaDeviceMemory() for CUDA); unset: CPU only.
  DeviceMemory device_memory;
  /// "eager", "sdpa" or any registered name (attention.h).
  std::string attn_implementation = "sdpa";
  /// Nothing will write the weights (forward, generate, eval, a frozen LoRA
  /// base): on the CPU those whose bytes in the file already fit (dtype,
  /// alignment, a contiguous slice) are views of the mapped file, not copies
  /// (checkpoint/loader.h LoadRequest::zero_copy).
  bool zero_copy = false;
};

absl::StatusOr<std::shared_ptr<CausalLM>> FromPretrained(const std::string& dir,
                                                         const PretrainedOptions& options = {});

/// For the plan engine (plans/engine.h): `before_load` sees the model built
/// on the meta device and may reject it; `slice_of` gives the part of each
/// parameter (by name) this rank loads (an empty Slice: all of it).
struct LoadHooks {
  std::function<absl::Status(CausalLM& model)> before_load;
  std::function<Slice(const std::string& name)> slice_of;
  /// The parameters this rank holds (a pipeline stage's); the others stay on
  /// the meta device and are not read. Unset: all of them. A tied lm_head
  /// kept without the embedding gets the embedding's tensor.
  std::function<bool(const std::string& name)> keep;
};
absl::StatusOr<std::shared_ptr<CausalLM>> FromPretrained(const std::string& dir,
                                                         const PretrainedOptions& options,
                                                         const LoadHooks& hooks);

}  // namespace weft
