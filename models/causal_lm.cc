#include "models/causal_lm.h"

#include <ATen/ATen.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"

namespace weft {
namespace {

std::map<std::string, CausalLMFactory>& Architectures() {
  static auto* registry = new std::map<std::string, CausalLMFactory>;
  return *registry;
}

}  // namespace

at::Tensor CausalLMLoss(const at::Tensor& logits, const at::Tensor& labels) {
  const int64_t t = logits.size(1);
  at::Tensor shift_logits = logits.narrow(1, 0, t - 1).to(at::kFloat).reshape({-1, logits.size(2)});
  at::Tensor shift_labels = labels.narrow(1, 1, t - 1).reshape({-1}).to(logits.device());
  return at::cross_entropy_loss(shift_logits, shift_labels, /*weight=*/{}, at::Reduction::Mean,
                                /*ignore_index=*/-100);
}

std::pair<at::Tensor, at::Tensor> KVCache::Update(size_t layer, const at::Tensor& k,
                                                  const at::Tensor& v) {
  if (keys.size() <= layer) {
    keys.resize(layer + 1);
    values.resize(layer + 1);
  }
  keys[layer] = keys[layer].defined() ? at::cat({keys[layer], k}, 2) : k;
  values[layer] = values[layer].defined() ? at::cat({values[layer], v}, 2) : v;
  return {keys[layer], values[layer]};
}

at::Tensor DefaultPositionIds(const CausalLMInputs& inputs, int64_t past) {
  if (inputs.position_ids.defined()) return inputs.position_ids;
  const int64_t b = inputs.input_ids.size(0), t = inputs.input_ids.size(1);
  return at::arange(past, past + t, inputs.input_ids.options().dtype(at::kLong))
      .unsqueeze(0)
      .expand({b, t});
}

bool RegisterArchitecture(const std::string& architecture, CausalLMFactory factory) {
  Architectures()[architecture] = std::move(factory);
  return true;
}

absl::StatusOr<std::shared_ptr<CausalLM>> CreateCausalLM(const ModelConfig& config,
                                                         const ModelOptions& options) {
  auto it = Architectures().find(config.architecture);
  if (it == Architectures().end()) {
    std::vector<std::string> known;
    for (const auto& [name, f] : Architectures()) known.push_back(name);
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: architectures[0] is \"", config.architecture,
                     "\" (expected one of: ", absl::StrJoin(known, ", "), ")"));
  }
  try {
    return it->second(config, options);
  } catch (const std::exception& e) {  // a model file rejecting an option
    return absl::InvalidArgumentError(FirstLine(e.what()));
  }
}

const StackedExperts* LayoutFor(const std::vector<StackedExperts>& layouts, const std::string& name,
                                std::string* prefix) {
  for (const StackedExperts& layout : layouts) {
    const std::string suffix = "." + layout.fused;
    if (name.size() > suffix.size() &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      if (prefix != nullptr) *prefix = name.substr(0, name.size() - suffix.size());
      return &layout;
    }
  }
  return nullptr;
}

}  // namespace weft
