#include "trainer/activation_checkpointing.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <regex>
#include <string>

namespace weft {
namespace {

using torch::autograd::variable_list;

// The backward of a checkpointed call: recompute, then backpropagate.
struct RecomputeBackward : torch::autograd::Node {
  RecomputeBackward(Module::Body body, Module::Tensors inputs)
      : body_(std::move(body)), inputs_(std::move(inputs)) {}

  variable_list apply(variable_list&& grads) override {
    Module::Tensors in = inputs_;
    std::vector<size_t> wanted;
    for (size_t i = 0; i < in.size(); ++i) {
      if (in[i].defined() && next_edge(i).is_valid()) {
        in[i] = in[i].detach().requires_grad_(true);
        wanted.push_back(i);
      }
    }
    at::Tensor out;
    {
      at::AutoGradMode enable(true);
      out = body_(in);
    }
    torch::autograd::backward({out}, {grads[0]});
    variable_list result(in.size());
    for (size_t i : wanted) result[i] = in[i].grad();
    return result;
  }

  void release_variables() override {
    inputs_.clear();
    body_ = nullptr;
  }

 private:
  Module::Body body_;
  Module::Tensors inputs_;
};

at::Tensor Checkpoint(const Module::Tensors& inputs, const Module::Body& body) {
  if (!at::GradMode::is_enabled()) return body(inputs);
  Module::Tensors saved;
  bool any_grad = false;
  for (const at::Tensor& t : inputs) {
    saved.push_back(t.defined() ? t.detach() : t);
    any_grad = any_grad || (t.defined() && t.requires_grad());
  }
  if (!any_grad) return body(inputs);
  at::Tensor out;
  {
    at::NoGradGuard no_grad;
    out = body(saved);
  }
  auto node = std::shared_ptr<RecomputeBackward>(new RecomputeBackward(body, std::move(saved)),
                                                 torch::autograd::deleteNode);
  torch::autograd::edge_list edges;
  for (const at::Tensor& t : inputs) {
    edges.push_back(t.defined() && t.requires_grad() ? torch::autograd::impl::gradient_edge(t)
                                                     : torch::autograd::Edge());
  }
  node->set_next_edges(std::move(edges));
  torch::autograd::set_history(out, node);
  return out;
}

}  // namespace

int EnableActivationCheckpointing(CausalLM& model) {
  static const std::regex kLayer(R"(model\.layers\.\d+)");
  int wrapped = 0;
  for (auto& [name, module] : NamedWeftModules(model)) {
    if (std::regex_match(name, kLayer)) {
      module->SetWrapper(Checkpoint);
      ++wrapped;
    }
  }
  return wrapped;
}

}  // namespace weft
