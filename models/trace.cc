#include "models/trace.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/json.h"

namespace weft {

std::string Tracer::Summary(const at::Tensor& t) {
  if (!t.defined()) return "null";
  at::Tensor d = t.detach().to(at::kCPU).to(at::kDouble);
  std::string s = absl::StrCat("{\"shape\": [", absl::StrJoin(t.sizes(), ", "), "], \"dtype\": \"",
                               c10::toString(t.scalar_type()), "\"");
  if (d.numel() > 0) {
    at::Tensor flat = d.flatten();
    std::vector<std::string> first;
    for (int64_t i = 0; i < std::min<int64_t>(4, flat.numel()); ++i) {
      first.push_back(absl::StrFormat("%.6g", flat[i].item<double>()));
    }
    absl::StrAppend(
        &s,
        absl::StrFormat(", \"mean\": %.6g, \"std\": %.6g, \"min\": %.6g, \"max\": %.6g",
                        d.mean().item<double>(), d.numel() > 1 ? d.std().item<double>() : 0.0,
                        d.min().item<double>(), d.max().item<double>()),
        ", \"first\": [", absl::StrJoin(first, ", "), "]");
  }
  return s + "}";
}

Tracer::Tracer(torch::nn::Module& root) {
  for (auto& [name, module] : NamedWeftModules(root)) {
    modules_.push_back(module);
    std::string label = name.empty() ? "<root>" : name;
    std::string type = module->name();
    module->AddPreHook([this, label, type](Module&, Module::Tensors& inputs) {
      auto call = std::make_unique<Call>();
      call->module = label;
      call->type = type;
      for (const at::Tensor& t : inputs) call->inputs.push_back(Summary(t));
      Call* raw = call.get();
      if (stack_.empty()) {
        roots_.push_back(std::move(call));
      } else {
        stack_.back()->calls.push_back(std::move(call));
      }
      stack_.push_back(raw);
    });
    module->AddPostHook([this](Module&, const Module::Tensors&, at::Tensor& output) {
      if (stack_.empty()) return;
      stack_.back()->output = Summary(output);
      stack_.pop_back();
    });
  }
}

Tracer::~Tracer() { Detach(); }

void Tracer::Detach() {
  for (Module* m : modules_) m->ClearHooks();
  modules_.clear();
}

void Tracer::Write(const Call& call, int indent, std::string& out) {
  std::string pad(indent, ' ');
  absl::StrAppend(&out, pad, "{\"module\": ", JsonQuote(call.module),
                  ", \"type\": ", JsonQuote(call.type), ",\n", pad, " \"inputs\": [",
                  absl::StrJoin(call.inputs, ", "), "],\n", pad,
                  " \"output\": ", call.output.empty() ? "null" : call.output);
  if (!call.calls.empty()) {
    absl::StrAppend(&out, ",\n", pad, " \"calls\": [\n");
    for (size_t i = 0; i < call.calls.size(); ++i) {
      Write(*call.calls[i], indent + 2, out);
      absl::StrAppend(&out, i + 1 < call.calls.size() ? ",\n" : "\n");
    }
    absl::StrAppend(&out, pad, " ]");
  }
  absl::StrAppend(&out, "}");
}

std::string Tracer::Json() const {
  std::string out = "{\"calls\": [\n";
  for (size_t i = 0; i < roots_.size(); ++i) {
    Write(*roots_[i], 2, out);
    out += i + 1 < roots_.size() ? ",\n" : "\n";
  }
  return out + "]}\n";
}

}  // namespace weft
