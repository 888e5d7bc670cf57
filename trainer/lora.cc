#include "trainer/lora.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <optional>
#include <regex>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/json.h"
#include "base/status.h"
#include "base/text_file.h"
#include "checkpoint/safetensors.h"
#include "models/layers.h"
#include "plans/engine.h"
#include "plans/plan.h"

namespace weft {
namespace {

constexpr char kPeftPrefix[] = "base_model.model.";

std::string LastName(const std::string& name) {
  const size_t dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

// PEFT's rule (a name equal to the target or ending with "." + target),
// weft's globs, "all-linear" (not the output layer), or the regex.
bool Targeted(const LoraOptions& o, const std::string& name, const std::string& target) {
  if (target == "all-linear") return name != "lm_head";
  if (target.find('*') != std::string::npos) return MatchPattern(target, name);
  return name == target || absl::EndsWith(name, "." + target);
}

// A's initialisation: torch.nn.Linear's (kaiming-uniform with a = sqrt(5):
// bound 1 / sqrt(fan_in)), from a generator seeded by (seed, module), so
// every rank draws the same whole tensor before taking its slice.
at::Tensor InitialA(const std::string& module, int64_t r, int64_t in, uint64_t seed) {
  const uint64_t stream = std::hash<std::string>{}(module);
  at::Generator gen =
      at::make_generator<at::CPUGeneratorImpl>(seed * 0x9E3779B97F4A7C15ull ^ stream);
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  return at::empty({r, in}, at::kFloat).uniform_(-bound, bound, gen);
}

// `t` restricted to `ranges` along `dim` (empty: all).
at::Tensor Take(const at::Tensor& t, int64_t dim, const std::vector<Range>& ranges) {
  if (ranges.empty()) return t;
  std::vector<at::Tensor> parts;
  for (const Range& r : ranges) parts.push_back(t.narrow(dim, r.start, r.end - r.start));
  return parts.size() == 1 ? parts[0].contiguous() : at::cat(parts, dim);
}

std::shared_ptr<Linear> Factor(int64_t in, int64_t out, const at::Tensor& value) {
  auto factor =
      std::make_shared<Linear>(LinearOptions(in, out).bias(false).dtype(value.scalar_type()));
  factor->ReplaceParameter("weight", value.requires_grad_(true), /*allow_new_shape=*/true);
  return factor;
}

}  // namespace

double LoraOptions::scale() const {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

bool IsLoraParameter(const std::string& name) {
  return absl::EndsWith(name, ".lora_A.weight") || absl::EndsWith(name, ".lora_B.weight");
}

absl::StatusOr<LoraSummary> ApplyLora(CausalLM& model, const LoraOptions& o,
                                      std::shared_ptr<const ProcessGroup> tp) {
  if (o.r < 1) return absl::InvalidArgumentError(absl::StrCat("lora.r ", o.r, " (expected >= 1)"));
  if (!(o.dropout >= 0 && o.dropout < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("lora.dropout ", o.dropout, " (expected in [0, 1))"));
  }
  if (o.target_modules.empty() && o.target_regex.empty()) {
    return absl::InvalidArgumentError(
        "lora.target_modules is empty (expected PEFT names like [q_proj, v_proj], weft patterns "
        "or all-linear)");
  }
  std::optional<std::regex> regex;
  if (!o.target_regex.empty()) {
    try {
      regex.emplace(o.target_regex);
    } catch (const std::regex_error& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("lora target_modules regex '", o.target_regex, "' is invalid: ", e.what()));
    }
  }
  const bool sharded = tp != nullptr && tp->size() > 1;
  std::vector<std::pair<std::string, Linear*>> targets;
  std::map<std::string, int> matched;  // target -> modules
  for (const auto& [name, module] : NamedWeftModules(model)) {
    auto* linear = dynamic_cast<Linear*>(module);
    if (linear == nullptr || absl::EndsWith(name, ".lora_A") || absl::EndsWith(name, ".lora_B")) {
      continue;
    }
    bool hit = false;
    if (regex) {
      hit = std::regex_match(name, *regex);
      if (hit) ++matched[o.target_regex];
    }
    for (const std::string& t : o.target_modules) {
      if (!regex && Targeted(o, name, t)) {
        hit = true;
        ++matched[t];
      }
    }
    if (hit) targets.emplace_back(name, linear);
  }
  for (const std::string& t : regex ? std::vector<std::string>{o.target_regex} : o.target_modules) {
    if (matched[t] == 0) {
      std::set<std::string> names;
      for (const auto& [name, module] : NamedWeftModules(model)) {
        if (dynamic_cast<Linear*>(module) != nullptr) names.insert(LastName(name));
      }
      return absl::InvalidArgumentError(absl::StrCat(
          "lora target_modules '", t, "' matches no Linear module of ", model.config.architecture,
          " (expected one of: ", absl::StrJoin(names, ", "), ", all-linear, or a pattern)"));
    }
  }
  LoraSummary summary;
  for (auto& item : model.named_parameters()) item.value().requires_grad_(false);
  for (const auto& [name, linear] : targets) {
    if (linear->lora_A) {
      return absl::InvalidArgumentError(absl::StrCat("module ", name, " already has an adapter"));
    }
    const std::string weight = name + ".weight";
    const DTensorSpec* spec = ParameterPlacement(model, weight);
    const at::Tensor& w = linear->weight;
    std::vector<int64_t> full = spec != nullptr ? spec->global_shape : w.sizes().vec();
    if (full.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat("module ", name, " has a weight of ",
                                                     full.size(), " dims (expected a Linear's 2)"));
    }
    const int64_t out = full[0], in = full[1];
    // The layout: whole, column-parallel (Shard(0)) or row-parallel (Shard(1)).
    int shard_dim = -1;
    if (sharded && spec != nullptr && !spec->placements.empty()) {
      const Placement& p = spec->placements[0];
      if (p.kind == Placement::Kind::kShard) {
        shard_dim = static_cast<int>(p.dim);
      } else if (spec->grad.kind == Placement::Kind::kPartial) {
        return absl::InvalidArgumentError(
            absl::StrCat("module ", name,
                         ": its weight is replicated with a partial gradient (inside a "
                         "region or a sequence-parallel block), which has no LoRA layout "
                         "(expected a colwise, rowwise or packed base, or no tp style)"));
      }
      if (spec->expert >= 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("module ", name, ": LoRA on experts is not supported"));
      }
    }
    at::Tensor a = InitialA(name, o.r, in, o.seed);
    at::Tensor b = at::zeros({out, o.r}, at::kFloat);
    at::TensorOptions like = w.options().requires_grad(false);
    if (w.is_meta() && o.device && (!o.keep || o.keep(weight))) like = like.device(*o.device);
    if (shard_dim == 0) b = Take(b, 0, spec->ranges[0]);
    if (shard_dim == 1) a = Take(a, 1, spec->ranges[1]);
    a = a.to(like);
    b = b.to(like);
    linear->lora_A = linear->register_module("lora_A", Factor(a.size(1), a.size(0), a));
    linear->lora_B = linear->register_module("lora_B", Factor(b.size(1), b.size(0), b));
    linear->lora_scale = o.scale();
    linear->lora_dropout = o.dropout;
    summary.modules.push_back(name);
    if (!a.is_meta()) summary.trainable += a.numel() + b.numel();  // another stage's: not here
    if (!sharded || shard_dim < 0) continue;
    // Placements (checkpoints, export) and the replicated factor's sum over tp.
    DTensorSpec replicated;
    replicated.mesh_axis = spec->mesh_axis;
    replicated.mesh_size = spec->mesh_size;
    replicated.mesh_rank = spec->mesh_rank;
    replicated.placements = {Placement::Replicate()};
    replicated.grad = Placement::Partial();
    replicated.replicas = spec->mesh_size;
    DTensorSpec split = *spec;
    const std::string a_name = name + ".lora_A.weight", b_name = name + ".lora_B.weight";
    const std::string replicated_name = shard_dim == 0 ? a_name : b_name;
    at::Tensor replicated_param = shard_dim == 0 ? linear->lora_A->weight : linear->lora_B->weight;
    replicated.global_shape = replicated_param.sizes().vec();
    replicated.local_shape = replicated.global_shape;
    replicated.offsets.assign(2, 0);
    replicated.ranges = Slice(2);
    if (shard_dim == 0) {  // B [out, r]: the weight's rows
      split.global_shape = {out, o.r};
      split.local_shape = linear->lora_B->weight.sizes().vec();
      split.ranges = {spec->ranges[0], {}};
      split.offsets = {spec->offsets[0], 0};
      model.placements[b_name] = split;
      // Replicated KV heads: B's rows sum over the ranks sharing them, as the weight's.
      auto hook = model.gradient_hooks.find(weight);
      if (hook != model.gradient_hooks.end()) {
        auto fn = hook->second;
        linear->lora_B->weight.register_hook([fn](at::Tensor g) { return fn(g, 0); });
        model.gradient_hooks[b_name] = fn;
      }
    } else {  // A [r, in]: the weight's columns
      split.global_shape = {o.r, in};
      split.local_shape = linear->lora_A->weight.sizes().vec();
      split.ranges = {{}, spec->ranges[1]};
      split.offsets = {0, spec->offsets[1]};
      split.replicated_rows.clear();
      model.placements[a_name] = split;
    }
    model.placements[replicated_name] = replicated;
    if (!o.sum_over_tp) continue;
    std::shared_ptr<const ProcessGroup> group = tp;
    auto sum = [group](const at::Tensor& g, int64_t) {
      at::Tensor total = g.clone();
      group->AllReduce(total);
      return total;
    };
    replicated_param.register_hook([sum](at::Tensor g) { return sum(g, 0); });
    model.gradient_hooks[replicated_name] = sum;
  }
  for (const auto& item : model.named_parameters()) {
    if (!IsLoraParameter(item.key()) && !item.value().is_meta()) {
      summary.frozen += item.value().numel();
    }
  }
  return summary;
}

std::string PeftAdapterConfig(const LoraOptions& o, const std::string& base_model,
                              const LoraSummary& summary) {
  // PEFT names as given; weft patterns become a regex of the adapted modules.
  bool plain = o.target_regex.empty();
  for (const std::string& t : o.target_modules) plain = plain && t.find('*') == std::string::npos;
  std::string targets;
  if (plain) {
    std::vector<std::string> quoted;
    for (const std::string& t : o.target_modules) quoted.push_back(JsonQuote(t));
    targets = absl::StrCat("[", absl::StrJoin(quoted, ", "), "]");
    if (o.target_modules.size() == 1 && o.target_modules[0] == "all-linear") {
      targets = JsonQuote("all-linear");
    }
  } else if (!o.target_regex.empty()) {
    targets = JsonQuote(o.target_regex);
  } else {
    std::vector<std::string> escaped;
    for (const std::string& m : summary.modules) {
      std::string e;
      for (char ch : m) {
        if (ch == '.')
          e += "\\.";
        else
          e += ch;
      }
      escaped.push_back(e);
    }
    targets = JsonQuote(absl::StrCat("^(", absl::StrJoin(escaped, "|"), ")$"));
  }
  return absl::StrFormat(
      "{\n  \"peft_type\": \"LORA\",\n  \"task_type\": \"CAUSAL_LM\",\n"
      "  \"base_model_name_or_path\": %s,\n  \"revision\": null,\n  \"inference_mode\": true,\n"
      "  \"r\": %d,\n  \"lora_alpha\": %.17g,\n  \"lora_dropout\": %.17g,\n"
      "  \"target_modules\": %s,\n  \"exclude_modules\": null,\n  \"bias\": \"none\",\n"
      "  \"use_rslora\": %s,\n  \"use_dora\": false,\n  \"fan_in_fan_out\": false,\n"
      "  \"init_lora_weights\": true,\n  \"modules_to_save\": null,\n"
      "  \"layers_to_transform\": null,\n  \"layers_pattern\": null,\n  \"rank_pattern\": {},\n"
      "  \"alpha_pattern\": {}\n}\n",
      JsonQuote(base_model), o.r, o.alpha, o.dropout, targets, o.use_rslora ? "true" : "false");
}

absl::Status WritePeftAdapter(const std::string& dir, const LoraOptions& options,
                              const std::string& base_model, const LoraSummary& summary,
                              const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& [name, t] : tensors) {
    named.emplace_back(kPeftPrefix + name, t.detach().to(at::kCPU).contiguous());
  }
  RETURN_IF_ERROR(WriteSafetensors(dir + "/adapter_model.safetensors", named, {{"format", "pt"}}));
  return WriteTextFileAtomically(dir + "/adapter_config.json",
                                 PeftAdapterConfig(options, base_model, summary));
}

absl::StatusOr<LoraOptions> ReadPeftAdapterConfig(const std::string& dir) {
  const std::string path = dir + "/adapter_config.json";
  ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
  ASSIGN_OR_RETURN(JsonValue c, ParseJson(text));
  auto bad = [&](const std::string& key, const std::string& found, const std::string& expected) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", key, " is ", found, " (expected ", expected, ")"));
  };
  auto text_of = [](const JsonValue* v) {
    return v == nullptr     ? std::string("missing")
           : v->is_string() ? JsonQuote(v->text)
                            : DumpJson(*v);
  };
  const JsonValue* type = c.Find("peft_type");
  if (type == nullptr || !type->is_string() || type->text != "LORA") {
    return bad("peft_type", text_of(type), "\"LORA\"");
  }
  LoraOptions o;
  const JsonValue* r = c.Find("r");
  if (r == nullptr || !r->AsUint64() || *r->AsUint64() < 1)
    return bad("r", text_of(r), "an integer >= 1");
  o.r = static_cast<int64_t>(*r->AsUint64());
  const JsonValue* alpha = c.Find("lora_alpha");
  o.alpha = alpha != nullptr && alpha->AsDouble() ? *alpha->AsDouble() : 8.0;
  const JsonValue* dropout = c.Find("lora_dropout");
  o.dropout = dropout != nullptr && dropout->AsDouble() ? *dropout->AsDouble() : 0.0;
  const JsonValue* rslora = c.Find("use_rslora");
  o.use_rslora = rslora != nullptr && rslora->type == JsonValue::Type::kBool && rslora->boolean;
  const JsonValue* targets = c.Find("target_modules");
  if (targets != nullptr && targets->is_array()) {
    for (const JsonValue& t : targets->items) {
      if (!t.is_string())
        return bad("target_modules", text_of(targets), "a list of names or a regex");
      o.target_modules.push_back(t.text);
    }
  } else if (targets != nullptr && targets->is_string()) {
    if (targets->text == "all-linear") {
      o.target_modules = {"all-linear"};
    } else {
      o.target_regex = targets->text;
    }
  } else {
    return bad("target_modules", text_of(targets), "a list of names or a regex");
  }
  // What weft does not implement is refused, never ignored.
  auto refuse_true = [&](const char* key) -> absl::Status {
    const JsonValue* v = c.Find(key);
    if (v != nullptr && v->type == JsonValue::Type::kBool && v->boolean) {
      return bad(key, "true", "false: not supported by weft");
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(refuse_true("use_dora"));
  RETURN_IF_ERROR(refuse_true("fan_in_fan_out"));
  RETURN_IF_ERROR(refuse_true("lora_bias"));
  const JsonValue* bias = c.Find("bias");
  if (bias != nullptr && !(bias->is_string() && bias->text == "none")) {
    return bad("bias", text_of(bias), "\"none\": weft trains no biases");
  }
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    const JsonValue* v = c.Find(key);
    if (v != nullptr && v->is_object() && !v->members.empty()) {
      return bad(key, text_of(v), "{}: per-module ranks are not supported");
    }
  }
  for (const char* key : {"modules_to_save", "layers_to_transform", "exclude_modules"}) {
    const JsonValue* v = c.Find(key);
    if (v != nullptr && v->type != JsonValue::Type::kNull && !(v->is_array() && v->items.empty())) {
      return bad(key, text_of(v), "null: not supported by weft");
    }
  }
  return o;
}

absl::Status LoadPeftAdapterWeights(CausalLM& model, const std::string& dir) {
  const std::string path = dir + "/adapter_model.safetensors";
  if (!std::filesystem::exists(path) && std::filesystem::exists(dir + "/adapter_model.bin")) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir,
        " holds adapter_model.bin (a pickle; expected adapter_model.safetensors: save with "
        "safe_serialization=True)"));
  }
  ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  std::set<std::string> used;
  at::NoGradGuard no_grad;
  for (auto& item : model.named_parameters()) {
    const std::string& name = item.key();
    if (!IsLoraParameter(name)) continue;
    // PEFT writes "<module>.lora_A.weight" (the adapter name "default" removed).
    const std::string saved = kPeftPrefix + name;
    const TensorEntry* entry = file->Find(saved);
    if (entry == nullptr) {
      return absl::NotFoundError(
          absl::StrCat(path, ": no tensor '", saved, "' for the adapter of ", name));
    }
    used.insert(saved);
    const DTensorSpec* spec = ParameterPlacement(model, name);
    const std::vector<int64_t> full =
        spec != nullptr ? spec->global_shape : item.value().sizes().vec();
    if (entry->shape != full) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor '", saved, "' has shape [", absl::StrJoin(entry->shape, ", "),
          "] (expected [", absl::StrJoin(full, ", "), "])"));
    }
    at::Tensor t = file->Get(*entry);
    if (spec != nullptr) {
      for (size_t d = 0; d < spec->ranges.size(); ++d)
        t = Take(t, static_cast<int64_t>(d), spec->ranges[d]);
    }
    item.value().copy_(t.to(item.value().options()));
  }
  for (const TensorEntry& e : file->tensors()) {
    if (!used.count(e.name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor '", e.name,
          "' has no adapter in the model (expected target_modules to cover its module)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<LoraSummary> LoadPeftAdapter(CausalLM& model, const std::string& dir,
                                            std::shared_ptr<const ProcessGroup> tp) {
  ASSIGN_OR_RETURN(LoraOptions options, ReadPeftAdapterConfig(dir));
  ASSIGN_OR_RETURN(LoraSummary summary, ApplyLora(model, options, std::move(tp)));
  RETURN_IF_ERROR(LoadPeftAdapterWeights(model, dir));
  return summary;
}

}  // namespace weft
