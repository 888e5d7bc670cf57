#include "models/init.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <map>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace weft {
namespace {

// FNV-1a: a portable hash of the parameter name for its generator's seed.
uint64_t Fnv1a(const std::string& text, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ (seed * 0x9E3779B97F4A7C15ull);
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

at::Tensor SliceTensor(const at::Tensor& full, const Slice& slice) {
  at::Tensor out = full;
  for (size_t d = 0; d < slice.size(); ++d) {
    if (slice[d].empty()) continue;
    std::vector<at::Tensor> parts;
    for (const Range& r : slice[d]) parts.push_back(out.narrow(d, r.start, r.end - r.start));
    out = parts.size() == 1 ? parts[0] : at::cat(parts, d);
  }
  return out;
}

absl::Status InitializeWeights(CausalLM& model, const InitOptions& options) {
  const double std = model.config.initializer_range;
  const at::ScalarType dtype = model.options.dtype;
  std::map<std::string, at::Tensor> done;  // by name, for tying
  for (auto& [prefix, module] : NamedWeftModules(model)) {
    for (const auto& item : module->named_parameters(/*recurse=*/false)) {
      const std::string name = prefix.empty() ? item.key() : absl::StrCat(prefix, ".", item.key());
      if (name == "lm_head.weight" && model.config.tie_word_embeddings) continue;
      const bool tied_head_needs_it = name == "model.embed_tokens.weight" &&
                                      model.config.tie_word_embeddings && options.keep &&
                                      options.keep("lm_head.weight");
      if (options.keep && !options.keep(name) && !tied_head_needs_it) continue;
      const std::string& type = module->name();
      enum { kNormal, kZeros, kOnes } kind;
      if (item.key() == "bias" || (type == "MoeExperts" && absl::EndsWith(item.key(), "_bias"))) {
        kind = kZeros;  // biases, gpt-oss's experts' too (as transformers)
      } else if (item.key() == "sinks") {
        kind = kNormal;  // gpt-oss's attention sinks, as transformers
      } else if (type == "Linear" || type == "Embedding" || type == "MoeExperts") {
        kind = kNormal;
      } else if (type == "RMSNorm") {
        kind = kOnes;
      } else if (type == "GemmaRMSNorm") {
        kind = kZeros;  // an offset: x * (1 + w)
      } else {
        return absl::UnimplementedError(
            absl::StrCat("cannot initialise parameter '", name, "' of a module of type ", type,
                         " (expected Linear, Embedding, MoeExperts, RMSNorm or GemmaRMSNorm)"));
      }
      const std::vector<int64_t> shape = item.value().sizes().vec();
      at::Tensor full;
      if (kind == kNormal) {
        at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(Fnv1a(name, options.seed));
        full = at::empty(shape, at::kFloat).normal_(0.0, std, gen);
      } else {
        full = kind == kZeros ? at::zeros(shape, at::kFloat) : at::ones(shape, at::kFloat);
      }
      Slice slice = options.slice_of ? options.slice_of(name) : Slice{};
      at::Tensor value = SliceTensor(full, slice).to(options.device, dtype).contiguous();
      if (value.data_ptr() == full.data_ptr()) value = value.clone();
      if (!options.keep || options.keep(name)) {
        module->ReplaceParameter(item.key(), value, /*allow_new_shape=*/true);
      }
      done[name] = value;
    }
  }
  if (model.config.tie_word_embeddings && done.count("model.embed_tokens.weight")) {
    for (auto& [prefix, module] : NamedWeftModules(model)) {
      if (prefix == "lm_head")
        module->ReplaceParameter("weight", done.at("model.embed_tokens.weight"),
                                 /*allow_new_shape=*/true);
    }
  }
  return absl::OkStatus();
}

}  // namespace weft
