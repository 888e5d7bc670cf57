// weft's module base: a torch::nn::Module whose forward can carry hooks.
//
// Hooks see and may replace a module's inputs (pre-hooks) and output
// (post-hooks), like torch's register_forward_pre_hook / register_forward_hook.
// The plan engine wires collectives through them and the debugger traces
// with them; model code never mentions them. A module without hooks pays one
// branch per call.
//
//   q_proj->AddPreHook([&](Module&, Module::Tensors& in) { in[0] = CopyToGroup(in[0], tp); });
//   o_proj->AddPostHook([&](Module&, const Module::Tensors&, at::Tensor& out) {
//     out = ReduceFromGroup(out, tp);
//   });
#pragma once

#include <torch/nn/module.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace weft {

class Module : public torch::nn::Module {
 public:
  using Tensors = std::vector<at::Tensor>;
  using PreHook = std::function<void(Module& module, Tensors& inputs)>;
  using PostHook = std::function<void(Module& module, const Tensors& inputs, at::Tensor& output)>;
  /// A module's body: its computation on its (pre-hooked) inputs.
  using Body = std::function<at::Tensor(const Tensors& inputs)>;
  /// Runs `body(inputs)` and returns its result; it may keep the body and
  /// call it again later (activation checkpointing recomputes a layer in
  /// backward), so bodies capture by value, never references to locals.
  using Wrapper = std::function<at::Tensor(const Tensors& inputs, const Body& body)>;
  /// Runs around a module's hooks and body: `run(inputs)` calls them; an
  /// interceptor may change the inputs, keep the output, or not call `run`
  /// at all (a pipeline stage that does not hold the module passes its input
  /// through). `run` is valid only during the call.
  using Interceptor = std::function<at::Tensor(const Tensors& inputs, const Body& run)>;

  explicit Module(std::string type_name) : torch::nn::Module(std::move(type_name)) {}

  void AddPreHook(PreHook hook) { pre_hooks_.push_back(std::move(hook)); }
  void AddPostHook(PostHook hook) { post_hooks_.push_back(std::move(hook)); }
  /// Calls the body through `wrapper` (between the pre- and post-hooks);
  /// an empty wrapper removes it.
  void SetWrapper(Wrapper wrapper) { wrapper_ = std::move(wrapper); }
  /// Sets the outermost layer of a call (see Interceptor); empty removes it.
  /// ClearHooks keeps it.
  void SetInterceptor(Interceptor interceptor) { interceptor_ = std::move(interceptor); }
  void ClearHooks() {
    pre_hooks_.clear();
    post_hooks_.clear();
    wrapper_ = nullptr;
  }
  bool has_hooks() const {
    return !pre_hooks_.empty() || !post_hooks_.empty() || wrapper_ || interceptor_;
  }

  /// Replaces this module's own parameter `name` (not a submodule's) with
  /// `value`, e.g. a meta placeholder with the loaded weight. The shape must
  /// match unless `allow_new_shape` (a tensor-parallel shard).
  void ReplaceParameter(const std::string& name, at::Tensor value, bool allow_new_shape = false);

 protected:
  /// Runs `body(inputs)` with this module's hooks around it.
  template <typename F>
  at::Tensor Hooked(Tensors inputs, F&& body) {
    if (pre_hooks_.empty() && post_hooks_.empty() && !wrapper_ && !interceptor_) {
      return body(inputs);
    }
    if (interceptor_) {
      return interceptor_(inputs, [this, &body](const Tensors& in) { return RunHooks(in, body); });
    }
    return RunHooks(std::move(inputs), body);
  }

  /// Called after ReplaceParameter, so members that cache parameters refresh.
  virtual void OnParametersReplaced() {}

 private:
  template <typename F>
  at::Tensor RunHooks(Tensors inputs, F& body) {
    if (pre_hooks_.empty() && post_hooks_.empty() && !wrapper_) return body(inputs);
    for (const PreHook& hook : pre_hooks_) hook(*this, inputs);
    at::Tensor output = wrapper_ ? wrapper_(inputs, Body(body)) : body(inputs);
    for (const PostHook& hook : post_hooks_) hook(*this, inputs, output);
    return output;
  }

  std::vector<PreHook> pre_hooks_;
  std::vector<PostHook> post_hooks_;
  Wrapper wrapper_;
  Interceptor interceptor_;
};

/// Every weft module of `root` by its Hugging Face name ("model.layers.0.mlp").
std::vector<std::pair<std::string, Module*>> NamedWeftModules(torch::nn::Module& root);

}  // namespace weft
