#include "models/module.h"

#include <c10/util/Exception.h>

namespace weft {

void Module::ReplaceParameter(const std::string& param, at::Tensor value, bool allow_new_shape) {
  at::Tensor* slot = parameters_.find(param);
  TORCH_CHECK(slot != nullptr, name(), " has no parameter '", param, "'");
  TORCH_CHECK(allow_new_shape || value.sizes() == slot->sizes(), "parameter '", param,
              "' has shape ", slot->sizes(), " but the replacement has ", value.sizes());
  *slot = value.requires_grad() == slot->requires_grad()
              ? value
              : value.set_requires_grad(slot->requires_grad());
  OnParametersReplaced();
}

std::vector<std::pair<std::string, Module*>> NamedWeftModules(torch::nn::Module& root) {
  std::vector<std::pair<std::string, Module*>> out;
  for (const auto& item : root.named_modules(/*name_prefix=*/"", /*include_self=*/true)) {
    if (auto* m = dynamic_cast<Module*>(item.value().get())) out.emplace_back(item.key(), m);
  }
  return out;
}

}  // namespace weft
