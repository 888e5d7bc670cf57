#include "models/pretrained.h"

#include <ATen/ATen.h>

#include <optional>

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

namespace {

// A fused parameter found per expert in the checkpoint (StackedExperts).
struct Stacked {
  std::string name;  // the parameter
  Module* module;
  std::string local;
  std::vector<std::vector<std::string>> sources;  // [expert][part]
  std::vector<int64_t> part_rows;                 // each part's dim 0
  bool per_expert = true;  // false: a 2-D parameter concatenated (or renamed) from its parts
};

// Whether `name` (shape [E, R, C], absent from the checkpoint) is stored
// per expert by one of the model's layouts; validates every source.
absl::StatusOr<std::optional<Stacked>> FindStacked(const Checkpoint& ckpt, const CausalLM& model,
                                                   const std::string& dir, const std::string& name,
                                                   const std::vector<int64_t>& shape) {
  std::string prefix;
  const StackedExperts* found = LayoutFor(model.checkpoint_layouts, name, &prefix);
  if (found != nullptr) {
    const StackedExperts& layout = *found;
    // Parts without "{e}": a 2-D parameter stored as its parts (a rename when
    // there is one), read as a single "expert".
    const bool per_expert = layout.parts[0].find("{e}") != std::string::npos;
    if (!per_expert && shape.size() == 2) {
      Stacked renamed;
      renamed.name = name;
      renamed.per_expert = false;
      std::vector<std::string> sources;
      int64_t rows = 0;
      for (const std::string& part : layout.parts) {
        const std::string source = prefix + "." + part;
        const Checkpoint::Located* at = ckpt.Find(source);
        if (at == nullptr) {
          return absl::NotFoundError(
              absl::StrCat(dir, ": the checkpoint has neither '", name, "' nor '", source, "'"));
        }
        const std::vector<int64_t>& got = at->entry->shape;
        if (got.size() != 2 || got[1] != shape[1]) {
          return absl::InvalidArgumentError(
              absl::StrCat(dir, ": tensor '", source, "' has shape [", absl::StrJoin(got, ", "),
                           "] (expected [rows, ", shape[1], "], part of ", name, ")"));
        }
        renamed.part_rows.push_back(got[0]);
        rows += got[0];
        sources.push_back(source);
      }
      if (rows != shape[0]) {
        return absl::InvalidArgumentError(absl::StrCat(dir, ": the parts of '", name, "' have ",
                                                       rows, " rows in all (expected ", shape[0],
                                                       ")"));
      }
      renamed.sources.push_back(std::move(sources));
      return std::optional<Stacked>(std::move(renamed));
    }
    if (shape.size() != 3) {
      return absl::InvalidArgumentError(absl::StrCat("parameter '", name, "' has shape [",
                                                     absl::StrJoin(shape, ", "),
                                                     "] (expected [experts, rows, columns])"));
    }
    Stacked out;
    out.name = name;
    int64_t rows = 0;
    for (int64_t e = 0; e < shape[0]; ++e) {
      std::vector<std::string> parts;
      for (size_t p = 0; p < layout.parts.size(); ++p) {
        std::string part = layout.parts[p];
        part.replace(part.find("{e}"), 3, std::to_string(e));
        const std::string source = prefix + "." + part;
        const Checkpoint::Located* at = ckpt.Find(source);
        if (at == nullptr) {
          return absl::NotFoundError(absl::StrCat(dir, ": the checkpoint has neither '", name,
                                                  "' nor '", source, "' (expert ", e,
                                                  " of its per-expert layout)"));
        }
        const std::vector<int64_t>& got = at->entry->shape;
        const int64_t want_rows = e == 0 ? -1 : out.part_rows[p];
        if (got.size() != 2 || got[1] != shape[2] || (want_rows >= 0 && got[0] != want_rows)) {
          return absl::InvalidArgumentError(
              absl::StrCat(dir, ": tensor '", source, "' has shape [", absl::StrJoin(got, ", "),
                           "] (expected [rows, ", shape[2], "], one part of ", name, " [",
                           absl::StrJoin(shape, ", "), "])"));
        }
        if (e == 0) {
          out.part_rows.push_back(got[0]);
          rows += got[0];
        }
        parts.push_back(source);
      }
      out.sources.push_back(std::move(parts));
    }
    if (rows != shape[1]) {
      return absl::InvalidArgumentError(absl::StrCat(dir, ": the parts of '", name, "' have ", rows,
                                                     " rows in all (expected ", shape[1], ")"));
    }
    return std::optional<Stacked>(std::move(out));
  }
  return std::optional<Stacked>();
}

// Reads this rank's slice of a fused parameter from its per-expert parts
// (only the rows and columns the slice needs) and stacks it.
absl::StatusOr<at::Tensor> LoadStacked(const Checkpoint& ckpt, const Stacked& stacked,
                                       const Slice& given, at::ScalarType dtype, c10::Device device,
                                       const LoadOptions& load_options) {
  // A 2-D parameter is read as the one expert of a [1, rows, columns] stack.
  Slice slice = given;
  if (!stacked.per_expert && !slice.empty()) slice.insert(slice.begin(), std::vector<Range>{});
  const int64_t experts = static_cast<int64_t>(stacked.sources.size());
  std::vector<int64_t> expert_ids;
  if (slice.empty() || slice[0].empty()) {
    for (int64_t e = 0; e < experts; ++e) expert_ids.push_back(e);
  } else {
    for (const Range& r : slice[0]) {
      for (int64_t e = r.start; e < r.end; ++e) expert_ids.push_back(e);
    }
  }
  // The slice's rows split at the parts' boundaries, in order.
  int64_t total = 0;
  for (int64_t r : stacked.part_rows) total += r;
  const std::vector<Range> rows =
      slice.size() < 2 || slice[1].empty() ? std::vector<Range>{{0, total}} : slice[1];
  std::vector<std::vector<Range>> per_part(stacked.part_rows.size());
  int64_t last_part = 0;
  for (const Range& r : rows) {
    int64_t begin = 0;
    for (size_t p = 0; p < stacked.part_rows.size(); ++p) {
      const int64_t end = begin + stacked.part_rows[p];
      const int64_t lo = std::max(r.start, begin), hi = std::min(r.end, end);
      if (lo < hi) {
        if (static_cast<int64_t>(p) < last_part) {
          return absl::InvalidArgumentError(
              absl::StrCat("the slice of '", stacked.name,
                           "' takes its parts out of order (expected rows "
                           "ascending, as packed and column-parallel shards are)"));
        }
        last_part = static_cast<int64_t>(p);
        per_part[p].push_back({lo - begin, hi - begin});
      }
      begin = end;
    }
  }
  const std::vector<Range> columns = slice.size() < 3 ? std::vector<Range>{} : slice[2];
  std::vector<LoadRequest> requests;
  for (int64_t e : expert_ids) {
    for (size_t p = 0; p < per_part.size(); ++p) {
      if (per_part[p].empty()) continue;
      requests.push_back({stacked.sources[e][p], dtype, device, {per_part[p], columns}});
    }
  }
  ASSIGN_OR_RETURN(LoadResult loaded, LoadCheckpoint(ckpt, requests, load_options));
  std::vector<at::Tensor> stack;
  for (int64_t e : expert_ids) {
    std::vector<at::Tensor> parts;
    for (size_t p = 0; p < per_part.size(); ++p) {
      if (!per_part[p].empty()) parts.push_back(loaded.tensors.at(stacked.sources[e][p]));
    }
    stack.push_back(at::cat(parts, 0));
  }
  at::Tensor out = at::stack(stack, 0);  // a fresh tensor: the parts' memory goes with `loaded`
  return stacked.per_expert ? out : out[0];
}

}  // namespace

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
  std::vector<Stacked> stacked;  // fused parameters stored per expert
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
        ASSIGN_OR_RETURN(std::optional<Stacked> found,
                         FindStacked(*ckpt, *model, dir, name, item.value().sizes().vec()));
        if (found.has_value()) {
          found->module = module;
          found->local = item.key();
          if (kept(name)) stacked.push_back(std::move(*found));
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
                          hooks.slice_of ? hooks.slice_of(name) : Slice{}, options.zero_copy});
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
                        hooks.slice_of ? hooks.slice_of("lm_head.weight") : Slice{},
                        options.zero_copy});
  }
  LoadOptions load_options;
  load_options.device_memory = options.device_memory;
  ASSIGN_OR_RETURN(LoadResult loaded, LoadCheckpoint(*ckpt, requests, load_options));
  for (auto& [name, slot] : slots)
    slot.module->ReplaceParameter(slot.local, loaded.tensors.at(name), /*allow_new_shape=*/true);
  // One fused parameter at a time: its parts' memory is freed before the next.
  for (const Stacked& s : stacked) {
    ASSIGN_OR_RETURN(at::Tensor t,
                     LoadStacked(*ckpt, s, hooks.slice_of ? hooks.slice_of(s.name) : Slice{},
                                 model_options.dtype, options.device, load_options));
    s.module->ReplaceParameter(s.local, t, /*allow_new_shape=*/true);
  }
  if (tie && loaded.tensors.count(kEmbed)) {
    at::Tensor embed = loaded.tensors.at(kEmbed);
    for (auto& [prefix, module] : NamedWeftModules(*model)) {
      if (prefix == "lm_head") module->ReplaceParameter("weight", embed, /*allow_new_shape=*/true);
    }
  }
  return model;
}

}  // namespace weft
