#include "models/pretrained.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"
#include "checkpoint/loader.h"
#include "models/attention.h"
#include "models/layers.h"

namespace weft {

absl::StatusOr<std::shared_ptr<CausalLM>> FromPretrained(const std::string& dir,
                                                         const PretrainedOptions& options) {
  return FromPretrained(dir, options, LoadHooks{});
}

absl::StatusOr<std::shared_ptr<CausalLM>> FromPretrained(const std::string& dir,
                                                         const PretrainedOptions& options,
                                                         const LoadHooks& hooks) {
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  ModelOptions model_options;
  model_options.attn_implementation = options.attn_implementation;
  try {
    GetAttention(options.attn_implementation);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(FirstLine(e.what()));
  }
  if (options.dtype.has_value()) {
    model_options.dtype = *options.dtype;
  } else {
    ASSIGN_OR_RETURN(model_options.dtype, ModelDtype(config));
  }
  ASSIGN_OR_RETURN(std::shared_ptr<CausalLM> model, CreateCausalLM(config, model_options));
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(dir));
  if (hooks.before_load) RETURN_IF_ERROR(hooks.before_load(*model));

  struct Slot {
    Module* module;
    std::string local;
  };
  std::vector<std::pair<std::string, Slot>> slots;
  std::vector<LoadRequest> requests;
  bool tie = false;
  const std::string kEmbed = "model.embed_tokens.weight";
  auto kept = [&hooks](const std::string& name) { return !hooks.keep || hooks.keep(name); };
  for (auto& [prefix, module] : NamedWeftModules(*model)) {
    for (const auto& item : module->named_parameters(/*recurse=*/false)) {
      std::string name = prefix.empty() ? item.key() : absl::StrCat(prefix, ".", item.key());
      const Checkpoint::Located* at = ckpt->Find(name);
      if (at == nullptr) {
        if (name == "lm_head.weight" && config.tie_word_embeddings) {
          tie = true;
          continue;
        }
        return absl::NotFoundError(absl::StrCat(dir, ": the checkpoint has no tensor '", name,
                                                "' (a parameter of ", config.architecture, ")"));
      }
      if (!c10::isFloatingType(at->entry->dtype)) {
        return absl::InvalidArgumentError(
            absl::StrCat(dir, ": tensor '", name, "' is ", at->entry->dtype_name,
                         " in the checkpoint (expected a floating-point dtype for a parameter of ",
                         config.architecture, ")"));
      }
      std::vector<int64_t> shape = item.value().sizes().vec();
      if (at->entry->shape != shape) {
        return absl::InvalidArgumentError(absl::StrCat(
            dir, ": tensor '", name, "' has shape [", absl::StrJoin(at->entry->shape, ", "),
            "] in the checkpoint but the model expects [", absl::StrJoin(shape, ", "),
            "] (check config.json)"));
      }
      if (!kept(name)) continue;
      slots.push_back({name, {module, item.key()}});
      requests.push_back({name, model_options.dtype, options.device,
                          hooks.slice_of ? hooks.slice_of(name) : Slice{}});
    }
  }
  // A tied head on a stage without the embedding reads the embedding's tensor.
  const bool head_needs_embed = tie && kept("lm_head.weight") && !kept(kEmbed);
  if (head_needs_embed) {
    if (ckpt->Find(kEmbed) == nullptr) {
      return absl::NotFoundError(absl::StrCat(dir, ": the checkpoint has no tensor '", kEmbed,
                                              "' (a parameter of ", config.architecture,
                                              ", tied to lm_head.weight)"));
    }
    requests.push_back({kEmbed, model_options.dtype, options.device,
                        hooks.slice_of ? hooks.slice_of("lm_head.weight") : Slice{}});
  }
  LoadOptions load_options;
  load_options.device_memory = options.device_memory;
  ASSIGN_OR_RETURN(LoadResult loaded, LoadCheckpoint(*ckpt, requests, load_options));
  for (auto& [name, slot] : slots)
    slot.module->ReplaceParameter(slot.local, loaded.tensors.at(name), /*allow_new_shape=*/true);
  if (tie && loaded.tensors.count(kEmbed)) {
    at::Tensor embed = loaded.tensors.at(kEmbed);
    for (auto& [prefix, module] : NamedWeftModules(*model)) {
      if (prefix == "lm_head") module->ReplaceParameter("weight", embed, /*allow_new_shape=*/true);
    }
  }
  return model;
}

}  // namespace weft
